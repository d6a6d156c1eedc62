"""Records written by hand, for ``sqlstate replay`` and ``sqlstate.testing``: one JSON object a
line (JSON Lines), each a Kafka record as a consumer would fetch it.

The fields (any other is refused, so a misspelt one is not silently left out):

- ``topic``: text, required (``sqlstate.testing`` gives a default);
- ``partition``: an integer from 0; default 0;
- ``offset``: an integer from 0, higher than the partition's offset before it in the file;
  default the one after it (0 for the partition's first record);
- ``timestamp``: milliseconds since the epoch, or ISO 8601 text (UTC when it gives no offset);
  default 0;
- ``key``, ``value``: a payload (below); default null;
- ``headers``: an object ``{"name": payload}``, or a list of ``["name", payload]`` pairs when a
  name repeats; default none.

A payload is the record's bytes: text (stored as its UTF-8 bytes), null (no key, or a
tombstone), or an object of one member: ``{"base64": "..."}`` or ``{"hex": "..."}`` for any
bytes, ``{"json": ...}`` for a JSON document, written as ``json.dumps`` writes it. Keys and values
reach the processors as ``--key-format``/``--value-format`` decode these bytes, as from Kafka.
The format is documented in docs/testing-processors.md.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias, cast

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from sqlstate.errors import ConfigError

#: A record as Kafka has it: key and value as bytes (or None), not yet decoded.
RawRecord: TypeAlias = ConsumerRecord[bytes, bytes]
FIELDS = ("topic", "partition", "offset", "timestamp", "key", "value", "headers")
_CREATE_TIME = 0  # Kafka's timestamp type of a timestamp the producer set
# Kafka's widths: a partition is an int32, an offset and a timestamp an int64 (and SQLite's
# INTEGER is one too, so a larger offset could not even be stored as a position).
_LIMITS = {"partition": 2**31 - 1, "offset": 2**63 - 1, "timestamp": 2**63 - 1}


class RecordsFileError(ConfigError):
    """A record of the records file is not valid."""


class Offsets:
    """Each partition's last offset so far: gives the default offset, and refuses one that
    does not go up."""

    def __init__(self) -> None:
        self._last: dict[TopicPartition, int] = {}

    def next(self, tp: TopicPartition, given: int | None, where: str) -> int:
        last = self._last.get(tp, -1)
        offset = last + 1 if given is None else given
        if offset <= last:
            raise RecordsFileError(
                f"{where}: offset {offset} of {tp.topic}-{tp.partition} is not above the"
                f" partition's offset before it ({last}): each partition's offsets must go up"
            )
        self._last[tp] = offset
        return offset


def read(path: Path) -> list[RawRecord]:
    """The records of a JSON Lines file, in its order; ``RecordsFileError`` names the line."""
    try:
        # Lines end at "\n" only (JSON Lines): str.splitlines() would also cut at U+2028,
        # U+0085 and the like, which JSON text may hold unescaped inside a string.
        lines = path.read_text("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise RecordsFileError(f"--records {path}: cannot read it: {error}") from error
    offsets = Offsets()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            fields = json.loads(line, object_pairs_hook=_unique, parse_constant=_no_constant)
        except ValueError as error:
            raise RecordsFileError(f"{where}: not a JSON object: {error}") from error
        records.append(parse(fields, offsets, where))
    return records


def parse(fields: object, offsets: Offsets, where: str, topic: str | None = None) -> RawRecord:
    """One record from its fields; ``topic``: the topic of a record that names none."""
    if not isinstance(fields, Mapping):
        raise RecordsFileError(f"{where}: a record is a JSON object, not {_kind(fields)}")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise RecordsFileError(
            f"{where}: unknown field {unknown[0]!r}; a record has {', '.join(FIELDS)}"
        )
    topic = fields.get("topic", topic)
    if not isinstance(topic, str) or not topic:
        raise RecordsFileError(f"{where}: topic must be given as non-empty text")
    partition = _count(fields.get("partition", 0), "partition", where)
    given = fields.get("offset")
    tp = TopicPartition(topic, partition)
    offset = offsets.next(tp, None if given is None else _count(given, "offset", where), where)
    key = payload(fields.get("key"), f"{where}: key")
    value = payload(fields.get("value"), f"{where}: value")
    return ConsumerRecord(
        topic,
        partition,
        offset,
        timestamp(fields.get("timestamp", 0), where),
        _CREATE_TIME,
        key,
        value,
        None,
        -1 if key is None else len(key),
        -1 if value is None else len(value),
        _headers(fields.get("headers", ()), where),
    )


def payload(given: object, where: str) -> bytes | None:
    """A key's, value's or header's bytes from their JSON form (or bytes, from Python)."""
    if given is None or isinstance(given, bytes):
        return given
    if isinstance(given, str):
        return given.encode("utf-8")
    if isinstance(given, Mapping) and len(given) == 1:
        ((form, content),) = given.items()
        if form == "json":
            return json.dumps(content).encode("utf-8")
        if form in ("base64", "hex") and isinstance(content, str):
            try:
                if form == "hex":
                    return bytes.fromhex(content)
                return base64.b64decode(content, validate=True)
            except (ValueError, binascii.Error) as error:
                raise RecordsFileError(f"{where}: not {form}: {error}") from error
    raise RecordsFileError(
        f"{where}: {_kind(given)} is not a payload: give text, null, or an object"
        ' {"base64": "..."}, {"hex": "..."} or {"json": ...}'
    )


def timestamp(given: object, where: str) -> int:
    """Milliseconds since the epoch, from a number of them or ISO 8601 text (UTC by default)."""
    if isinstance(given, str):
        try:
            moment = datetime.fromisoformat(given)
        except ValueError as error:
            raise RecordsFileError(f"{where}: timestamp: {error}") from error
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return round(moment.timestamp() * 1000)
    if type(given) is int and -_LIMITS["timestamp"] <= given <= _LIMITS["timestamp"]:
        return given
    raise RecordsFileError(
        f"{where}: timestamp must be milliseconds since the epoch (a signed 64-bit integer) or"
        f" ISO 8601 text, not {given if type(given) is int else _kind(given)}"
    )


def batches(records: Sequence[RawRecord], size: int) -> Iterable[Sequence[RawRecord]]:
    """``size`` records at a time, in the file's order: like a ``getmany(max_records=size)``,
    a batch holds the records of every partition among them."""
    for start in range(0, len(records), size):
        yield records[start : start + size]


def _headers(given: object, where: str) -> tuple[tuple[str, bytes], ...]:
    pairs: Iterable[Any]
    if isinstance(given, Mapping):
        pairs = given.items()
    elif isinstance(given, list | tuple):
        pairs = given
    else:
        raise RecordsFileError(f"{where}: headers must be an object or a list of [name, payload]")
    headers = []
    for pair in pairs:
        if not isinstance(pair, list | tuple) or len(pair) != 2 or not isinstance(pair[0], str):
            raise RecordsFileError(f"{where}: a header is [name, payload], not {pair!r}")
        name, content = pair
        headers.append((name, payload(content, f"{where}: header {name!r}")))
    # A header's value may be null in Kafka too, whatever aiokafka's type says.
    return cast(tuple[tuple[str, bytes], ...], tuple(headers))


def _count(given: object, name: str, where: str) -> int:
    if type(given) is not int or not 0 <= given <= _LIMITS[name]:
        raise RecordsFileError(
            f"{where}: {name} must be an integer from 0 to {_LIMITS[name]}, not {given!r}"
        )
    return given


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose every name appears once: json.loads would keep the last of two."""
    fields: dict[str, Any] = {}
    for name, value in pairs:
        if name in fields:
            raise ValueError(f"the name {name!r} appears twice")
        fields[name] = value
    return fields


def _no_constant(name: str) -> Any:
    """NaN and Infinity, which json.loads takes though JSON has no such values."""
    raise ValueError(f"{name} is not JSON")


def _kind(given: object) -> str:
    return "an array" if isinstance(given, list) else type(given).__name__
