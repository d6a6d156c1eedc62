"""The test schema registry (tools/schema_registry): registering schemas through its API, and
framing payloads in its wire format as a registry-aware producer does."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro

from sqlstate.kafka.formats.wire import encode_message_indexes, frame
from tools.schema_registry import register

__all__ = ["ORDER", "avro_record", "encode_message_indexes", "frame", "register"]

#: An Avro order, as the registry tests register it.
ORDER = json.dumps(
    {
        "type": "record",
        "name": "Order",
        "fields": [
            {"name": "customer", "type": "string"},
            {"name": "amount_cents", "type": "long"},
        ],
    }
)


def avro_record(schema_id: int, schema: str, datum: dict[str, Any]) -> bytes:
    """``datum`` written with ``schema`` (fastavro), framed for ``schema_id``."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(schema)), datum)
    return frame(schema_id, out.getvalue())
