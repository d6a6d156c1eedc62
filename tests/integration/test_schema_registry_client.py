"""The schema registry's client against the real registry: a schema, an unknown id, a URL that
is no registry's API, nothing listening; and schemas that refer to schemas of other subjects."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import pytest

from sqlstate.errors import SchemaRegistryError
from sqlstate.kafka.registry import RegistryClient, RegistryUnavailable
from sqlstate.kafka.schemas import Schemas
from sqlstate.observe.stats import Stats
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


CUSTOMER = json.dumps(
    {
        "type": "record",
        "name": "Customer",
        "namespace": "shop",
        "fields": [{"name": "id", "type": "string"}],
    }
)
ORDER = json.dumps(
    {
        "type": "record",
        "name": "Order",
        "namespace": "shop",
        "fields": [{"name": "customer", "type": "shop.Customer"}, {"name": "n", "type": "int"}],
    }
)
CUSTOMER_PROTO = 'syntax = "proto3";\npackage shop;\nmessage Customer { string id = 1; }\n'
ORDER_PROTO = (
    'syntax = "proto3";\npackage shop;\nimport "shop/customer.proto";\n'
    "message Order { shop.Customer customer = 1; int32 n = 2; }\n"
)


async def test_schemas_that_refer_to_other_subjects(schema_registry_url: str) -> None:
    url, run = schema_registry_url, uuid.uuid4().hex[:8]
    customer = f"customer-{run}"
    await asyncio.to_thread(register, url, customer, CUSTOMER)
    reference = {"name": "shop.Customer", "subject": customer, "version": 1}
    avro_id = await asyncio.to_thread(register, url, f"order-{run}", ORDER, "AVRO", [reference])
    proto_customer = f"proto-customer-{run}"
    await asyncio.to_thread(register, url, proto_customer, CUSTOMER_PROTO, "PROTOBUF")
    imported = {"name": "shop/customer.proto", "subject": proto_customer, "version": 1}
    proto_id = await asyncio.to_thread(
        register, url, f"proto-order-{run}", ORDER_PROTO, "PROTOBUF", [imported]
    )
    schemas = Schemas(RegistryClient(url), Stats())
    wanted = {("avro", avro_id), ("protobuf", proto_id)}
    assert await schemas.resolve(wanted, asyncio.Event())
    # Customer "c" and n 3: a string, then a zigzag varint.
    assert schemas.decoders[("avro", avro_id)](b"\x02c\x06") == '{"customer":{"id":"c"},"n":3}'
    proto = b"\x00\x0a\x03\x0a\x01c\x10\x03"
    assert schemas.decoders[("protobuf", proto_id)](proto) == '{"customer":{"id":"c"},"n":3}'
