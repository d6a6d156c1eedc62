"""The JSON that avro, protobuf and json-schema payloads become, pinned: processors and users'
SQL depend on it (docs/schema-registry.md). And the registry's wire format."""

from __future__ import annotations

import datetime
import io
import json
import math
import uuid
from decimal import Decimal

import fastavro
import pytest

from sqlstate.kafka.formats import compile_decoder, wire
from sqlstate.kafka.formats.json_text import to_json

EVERY_AVRO_TYPE: dict[str, object] = {
    "type": "record",
    "name": "Everything",
    "fields": [
        {"name": "flag", "type": "boolean"},
        {"name": "count", "type": "int"},
        {"name": "big", "type": "long"},
        {"name": "ratio", "type": "double"},
        {"name": "blob", "type": "bytes"},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9,
                                    "scale": 2}},
        {"name": "at_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "at_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "local_ms", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "clock", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "BLUE"]}},
        {"name": "maybe", "type": ["null", "string"]},
        {"name": "either", "type": ["null", "long", "string"]},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "scores", "type": {"type": "map", "values": "float"}},
        {"name": "inner", "type": {"type": "record", "name": "Inner",
                                    "fields": [{"name": "name", "type": "string"}]}},
    ],
}  # fmt: skip
DATUM = {
    "flag": True,
    "count": -3,
    "big": 2**40,
    "ratio": 0.5,
    "blob": b"\x00\xffab",
    "digest": b"\x01\x02\x03\x04",
    "price": Decimal("1234.50"),
    "at_ms": datetime.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.UTC),
    "at_us": datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC),
    "local_ms": datetime.datetime(2026, 1, 2, 3, 4, 5, 678000),
    "day": datetime.date(2026, 1, 2),
    "clock": datetime.time(3, 4, 5, 678000),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "colour": "BLUE",
    "maybe": None,
    "either": "text",
    "tags": ["a", "é"],
    "scores": {"x": 1.5},
    "inner": {"name": "n"},
}
EXPECTED = (
    '{"flag":true,"count":-3,"big":1099511627776,"ratio":0.5,"blob":"AP9hYg==",'
    '"digest":"AQIDBA==","price":"1234.50","at_ms":"2026-01-02T03:04:05.678000Z",'
    '"at_us":"2026-01-02T03:04:05.678901Z","local_ms":"2026-01-02T03:04:05.678000",'
    '"day":"2026-01-02","clock":"03:04:05.678000",'
    '"id":"12345678-1234-5678-1234-567812345678","colour":"BLUE","maybe":null,'
    '"either":"text","tags":["a","é"],"scores":{"x":1.5},"inner":{"name":"n"}}'
)


def avro_payload(schema: dict[str, object], datum: dict[str, object]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
    return out.getvalue()


def test_every_avro_type_has_a_pinned_json_form() -> None:
    decode = compile_decoder("avro", "AVRO", json.dumps(EVERY_AVRO_TYPE))
    assert decode(avro_payload(EVERY_AVRO_TYPE, DATUM)) == EXPECTED


def test_an_avro_payload_must_be_exactly_one_datum() -> None:
    decode = compile_decoder("avro", "AVRO", json.dumps(EVERY_AVRO_TYPE))
    payload = avro_payload(EVERY_AVRO_TYPE, DATUM)
    with pytest.raises(ValueError, match="1 bytes are left"):
        decode(payload + b"\x00")
    with pytest.raises(Exception):  # noqa: B017, PT011 (fastavro's own error for a short read)
        decode(payload[:10])


def test_non_finite_floats_and_python_values_map_as_documented() -> None:
    assert to_json([math.nan, math.inf, -math.inf, 1.0]) == '["NaN","Infinity","-Infinity",1.0]'
    assert to_json({"d": Decimal("1E-7")}) == '{"d":"0.0000001"}'
    east = datetime.timezone(datetime.timedelta(hours=2))
    assert (
        to_json(datetime.datetime(2026, 1, 2, 5, 0, tzinfo=east)) == '"2026-01-02T03:00:00.000000Z"'
    )


def test_a_schema_of_another_type_or_not_a_schema_cannot_decode() -> None:
    with pytest.raises(ValueError, match="its schema is PROTOBUF, not AVRO"):
        compile_decoder("avro", "PROTOBUF", "syntax = 'proto3';")
    with pytest.raises(ValueError, match="not an Avro schema"):
        compile_decoder("avro", "AVRO", '{"type": "nothing"}')
    with pytest.raises(ValueError, match="not a JSON schema"):
        compile_decoder("json-schema", "JSON", '{"type": 12}')


def test_json_schema_payloads_pass_as_they_came_once_valid() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    decode = compile_decoder("json-schema", "JSON", json.dumps(schema))
    assert decode(b'{"n": 1, "extra": [1]}') == '{"n": 1, "extra": [1]}'
    with pytest.raises(ValueError, match=r"\['n'\]: 'x' is not of type 'integer'"):
        decode(b'{"n": "x"}')
    with pytest.raises(ValueError, match="NaN is not JSON"):
        decode(b'{"n": NaN}')


PROTO = """syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
enum Kind { KIND_UNKNOWN = 0; KIND_RETAIL = 1; }
message Order {
  string customer = 1;
  int64 amount_cents = 2;
  Kind kind = 3;
  bytes tag = 4;
  google.protobuf.Timestamp placed_at = 5;
  message Line { uint64 sku = 1; }
  repeated Line lines = 6;
}
message Refund { string customer = 1; }
"""


def test_protobuf_uses_its_json_mapping_with_proto_names_and_defaults() -> None:
    decode = compile_decoder("protobuf", "PROTOBUF", PROTO)
    # customer "c", amount 0 (default, not written), kind RETAIL, tag b"\x01", placed_at 1 s,
    # one line with sku 2**60 + 1 (more than a double holds exactly). Fields at their default
    # come after the others.
    message = (
        b"\x0a\x01c" + b"\x18\x01" + b"\x22\x01\x01" + b"\x2a\x02\x08\x01"
        + b"\x32\x0a\x08" + bytes([0x81] + [0x80] * 7 + [0x10])
    )  # fmt: skip
    assert decode(b"\x00" + message) == (
        '{"customer":"c","kind":"KIND_RETAIL","tag":"AQ==","placed_at":"1970-01-01T00:00:01Z",'
        '"lines":[{"sku":"1152921504606846977"}],"amount_cents":0}'
    )
    assert decode(wire.encode_message_indexes([1]) + b"\x0a\x01r") == '{"customer":"r"}'
    assert decode(wire.encode_message_indexes([0, 0]) + b"\x08\x05") == '{"sku":5}'
    with pytest.raises(ValueError, match="name no message"):
        decode(wire.encode_message_indexes([5]))


def test_the_wire_format() -> None:
    framed = wire.frame(258, b"payload")
    assert framed == b"\x00\x00\x00\x01\x02payload"
    assert wire.schema_id(framed) == 258
    assert wire.schema_id(b"\x01\x00\x00\x01\x02payload") is None
    assert wire.schema_id(b"\x00\x00") is None
    for indexes in ([0], [1], [2, 3], [0, 70]):
        prefix = wire.encode_message_indexes(indexes)
        assert wire.message_indexes(prefix + b"rest") == (indexes, len(prefix))
    with pytest.raises(ValueError, match="end early"):
        wire.message_indexes(b"\x04\x02")


def test_schemas_compile_with_the_schemas_they_refer_to() -> None:
    customer = {"type": "record", "name": "Customer", "namespace": "shop",
                "fields": [{"name": "id", "type": "string"}]}  # fmt: skip
    order = {"type": "record", "name": "Order", "namespace": "shop",
             "fields": [{"name": "customer", "type": "shop.Customer"}]}  # fmt: skip
    references = [("shop.Customer", json.dumps(customer))]
    decode = compile_decoder("avro", "AVRO", json.dumps(order), references)
    assert decode(b"\x02c") == '{"customer":{"id":"c"}}'
    with pytest.raises(ValueError, match="not an Avro schema"):
        compile_decoder("avro", "AVRO", json.dumps(order))  # shop.Customer unknown
    imported = 'syntax = "proto3";\npackage shop;\nmessage Customer { string id = 1; }\n'
    proto = 'syntax = "proto3";\nimport "shop/c.proto";\nmessage O { shop.Customer c = 1; }\n'
    decode = compile_decoder("protobuf", "PROTOBUF", proto, [("shop/c.proto", imported)])
    assert decode(b"\x00\x0a\x03\x0a\x01c") == '{"c":{"id":"c"}}'
    with pytest.raises(ValueError, match="not an import path"):
        compile_decoder("protobuf", "PROTOBUF", proto, [("../c.proto", imported)])
    with pytest.raises(ValueError, match="not supported"):
        compile_decoder("json-schema", "JSON", "{}", [("x.json", "{}")])
