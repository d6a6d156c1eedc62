"""The schema registry's client against the real registry: a schema, an unknown id, a URL that
is no registry's API, and nothing listening."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import pytest

from sqlstate.errors import SchemaRegistryError
from sqlstate.kafka.registry import RegistryClient, RegistryUnavailable
from tools.schema_registry import register

SCHEMA = json.dumps({"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]})


async def test_a_schema_by_id_or_none_for_an_id_it_does_not_know(schema_registry_url: str) -> None:
    subject = f"client-{uuid.uuid4().hex[:8]}-value"
    schema_id = await asyncio.to_thread(register, schema_registry_url, subject, SCHEMA)
    client = RegistryClient(schema_registry_url)
    found = await client.schema(schema_id)
    assert found is not None
    assert found.schema_type == "AVRO"
    assert json.loads(found.text) == json.loads(SCHEMA)
    assert await client.schema(987_654_321) is None


async def test_a_url_that_is_not_the_api_is_an_error_not_an_unknown_id(
    schema_registry_url: str,
) -> None:
    wrong = schema_registry_url.rsplit("/apis/", 1)[0] + "/apis/nothing"
    with pytest.raises(SchemaRegistryError, match="check --schema-registry-url"):
        await RegistryClient(wrong).schema(1)


async def test_nothing_listening_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RegistryUnavailable, match="refused"):
        await RegistryClient(f"http://127.0.0.1:{port}").schema(1)
