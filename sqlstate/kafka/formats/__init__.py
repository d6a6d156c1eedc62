"""Values and keys framed by a schema registry: ``--key-format``/``--value-format`` ``avro``,
``protobuf`` and ``json-schema``.

Every format turns a payload into JSON text, so that processors read it as they read
``--value-format json`` (``json_extract`` in SQL, ``json.loads`` in Python):

- ``wire``: the registry's framing (magic byte 0, a 4-byte big-endian schema id, the payload);
- ``json_text``: Python values to JSON text, the one place the mapping of bytes, decimals,
  times and non-finite floats is written (docs/schema-registry.md);
- ``avro``, ``protobuf``, ``json_schema``: a registered schema's text to a ``PayloadDecoder``.

``compile_decoder`` picks the format's compiler. Compiling raises ``ValueError`` for a schema
that cannot serve; decoding raises (any ``Exception``) for a payload that does not match it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

# A payload (the bytes after the schema id) to its JSON text.
PayloadDecoder = Callable[[bytes], str]
# The schemas a schema refers to, by the name it uses for each (an Avro type's full name, a
# .proto import path), each after those it refers to itself.
References = Sequence[tuple[str, str]]

# The registry's name of each format's schema type (a schema without one is Avro).
SCHEMA_TYPES = {"avro": "AVRO", "protobuf": "PROTOBUF", "json-schema": "JSON"}
# Each format's module, imported at its first schema: the libraries behind them (protoc's above
# all) would add a tenth of a second to every start of every command.
_MODULES = {"avro": "avro", "protobuf": "protobuf", "json-schema": "json_schema"}


def compile_decoder(
    format: str, schema_type: str, schema_text: str, references: References = ()
) -> PayloadDecoder:
    """The decoder of a registered schema under ``format``, given the schemas it refers to;
    ``ValueError`` if it cannot be one."""
    if SCHEMA_TYPES[format] != schema_type:
        raise ValueError(f"its schema is {schema_type}, not {SCHEMA_TYPES[format]}")
    module = importlib.import_module(f"{__name__}.{_MODULES[format]}")
    compile_schema: Callable[[str, References], PayloadDecoder] = module.compile_schema
    return compile_schema(schema_text, references)
