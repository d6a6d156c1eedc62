"""The test schema registry (tools/schema_registry): registering schemas through its API, and
framing payloads in its wire format as a registry-aware producer does."""

from __future__ import annotations

import io
import json
import urllib.request
from typing import Any

import fastavro

from sqlstate.kafka.formats.wire import encode_message_indexes, frame

__all__ = ["avro_record", "encode_message_indexes", "frame", "register"]


def register(url: str, subject: str, schema: str, schema_type: str = "AVRO") -> int:
    """Register ``schema`` under ``subject``; its id."""
    body = {"schema": schema, "schemaType": schema_type}
    request = urllib.request.Request(
        f"{url}/subjects/{subject}/versions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        schema_id: int = json.load(answer)["id"]
    return schema_id


def avro_record(schema_id: int, schema: str, datum: dict[str, Any]) -> bytes:
    """``datum`` written with ``schema`` (fastavro), framed for ``schema_id``."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(schema)), datum)
    return frame(schema_id, out.getvalue())
