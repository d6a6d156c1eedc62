"""Avro payloads (fastavro) to JSON text.

A record is an object with its fields, an enum its symbol, an array a list, a map an object,
a union the value of the branch written (``null`` or the value itself, never wrapped in the
branch's name), ``bytes`` and ``fixed`` base64 text; logical types are read by fastavro and
written as ``json_text`` says (decimals as exact text, timestamps as ISO 8601 UTC). The
writer's schema reads the payload; the whole payload must be one datum.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from typing import Any

import fastavro

from sqlstate.kafka.formats.json_text import to_json


def compile_schema(
    schema_text: str, references: Sequence[tuple[str, str]] = ()
) -> Callable[[bytes], str]:
    """The decoder of payloads written with this Avro schema, given the named types it refers
    to (each after those it refers to itself); ``ValueError`` if it is none."""
    named: dict[str, Any] = {}
    try:
        for _name, text in references:
            fastavro.parse_schema(json.loads(text), named_schemas=named)
        parsed: Any = fastavro.parse_schema(json.loads(schema_text), named_schemas=named)
    except Exception as error:  # fastavro raises several types for a bad schema
        raise ValueError(f"not an Avro schema fastavro reads: {error}") from error

    def decode(payload: bytes) -> str:
        stream = io.BytesIO(payload)
        datum = fastavro.schemaless_reader(stream, parsed, None)
        left = len(payload) - stream.tell()
        if left:
            raise ValueError(f"{left} bytes are left after the datum")
        return to_json(datum)

    return decode
