"""Protobuf payloads to JSON text: the registry's .proto text compiled at run time.

The schema's text is compiled by the protoc that grpcio-tools bundles (``grpc_tools.protoc``,
in-process) into a FileDescriptorSet, with Google's well-known types on its import path; the
files it imports from other subjects (its references) are written beside it under their import
paths; the message type of each payload is found by its message indexes
(``wire.message_indexes``).

The JSON is Protobuf's own JSON mapping (``json_format``), with three choices: fields keep
their .proto names (not lowerCamelCase); fields without presence are written even at their
default value (``0``, ``""``, ``false``), so that ``json_extract`` finds them; 64-bit integers
are numbers when a double holds them exactly, strings otherwise. Enums are their names, bytes
base64 text, ``Timestamp`` RFC 3339 text.
"""

from __future__ import annotations

import importlib.resources
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor
from grpc_tools import protoc

from sqlstate.kafka.formats.json_text import to_json
from sqlstate.kafka.formats.wire import message_indexes

_FILE = "schema.proto"
# Google's well-known types, which protoc's own binary has built in but its library does not.
_WELL_KNOWN = str(importlib.resources.files("grpc_tools") / "_proto")


def _descriptors(
    schema_text: str, references: Sequence[tuple[str, str]]
) -> descriptor_pb2.FileDescriptorSet:
    with tempfile.TemporaryDirectory(prefix="sqlstate-proto-") as folder:
        for import_path, text in references:
            # The name is the import path: it must stay inside the folder.
            target = Path(folder, import_path).resolve()
            if not target.is_relative_to(Path(folder).resolve()) or import_path == _FILE:
                raise ValueError(f"a reference named {import_path!r} is not an import path")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        Path(folder, _FILE).write_text(schema_text)
        out = Path(folder, "schema.desc")
        status = protoc.main(
            [
                "protoc",
                f"--proto_path={folder}",
                f"--proto_path={_WELL_KNOWN}",
                "--include_imports",
                f"--descriptor_set_out={out}",
                _FILE,
            ]
        )
        if status != 0 or not out.exists():
            raise ValueError("protoc could not compile it (its messages are in the log's stderr)")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _message_type(top_level: Sequence[Descriptor], indexes: list[int]) -> Descriptor:
    candidates = top_level
    found: Descriptor | None = None
    for index in indexes:
        if not 0 <= index < len(candidates):
            raise ValueError(f"message indexes {indexes} name no message of the schema")
        found = candidates[index]
        candidates = found.nested_types
    assert found is not None  # message_indexes never returns an empty path
    return found


def compile_schema(
    schema_text: str, references: Sequence[tuple[str, str]] = ()
) -> Callable[[bytes], str]:
    """The decoder of payloads written with this .proto, given the files it imports by their
    import paths; ``ValueError`` if it does not compile."""
    pool = descriptor_pool.DescriptorPool()
    for file in _descriptors(schema_text, references).file:
        pool.Add(file)
    top_level = list(pool.FindFileByName(_FILE).message_types_by_name.values())
    if not top_level:
        raise ValueError("the .proto defines no message")
    classes: dict[tuple[int, ...], Any] = {}

    def decode(payload: bytes) -> str:
        indexes, start = message_indexes(payload)
        key = tuple(indexes)
        message_class = classes.get(key)
        if message_class is None:
            message_class = message_factory.GetMessageClass(_message_type(top_level, indexes))
            classes[key] = message_class
        message = message_class.FromString(payload[start:])
        return to_json(
            json_format.MessageToDict(
                message,
                always_print_fields_with_no_presence=True,
                preserving_proto_field_name=True,
                unquote_int64_if_possible=True,
            )
        )

    return decode
