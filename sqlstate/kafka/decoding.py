"""Keys and values as ``--key-format``/``--value-format`` say, and records that do not decode.

``bytes`` (the default) leaves them as Kafka has them and costs nothing. ``text`` requires UTF-8
and gives ``str``; ``json`` also requires a JSON document and gives its text, validated once
here, as ``str``, ready for SQLite's JSON functions. A null key or value (a tombstone) stays
``None`` in every format. ``avro``, ``protobuf`` and ``json-schema`` read the schema registry's
wire format and give JSON text too (``formats/``, ``schemas.py``).

Decoding runs inside aiokafka, as its ``key_deserializer``/``value_deserializer``, while it
builds each record, so a good record costs no second object. A deserializer that raised would
break the fetch, so these never raise: a record that does not decode gets an ``Undecodable``
in place of its key or value, and the ``failures`` counter moves. The batch loop then sorts
the batch (only when the counter moved during its ``getmany()``) and applies
``--on-bad-record``:

- ``fail``: stop with exit code 8 before the batch is handed to the store: nothing of it is
  committed, and the next start fetches it again;
- ``skip``: leave the record out of the state, count it (``sqlstate_bad_records_total``) and
  log it;
- ``dead-letter``: write it to ``rejected_records`` in the batch's own transaction.

Either way the record's offset is passed with its batch: never lost, never counted twice.
"""

from __future__ import annotations

import asyncio
import json
import json.scanner
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import TopicPartition

from sqlstate.errors import BadRecordError
from sqlstate.kafka.formats import wire
from sqlstate.kafka.schemas import Pending, Schemas
from sqlstate.observe.logs import LogEvent, partition_fields
from sqlstate.processors.base import Record, Records, Statement
from sqlstate.processors.keys import stored_key
from sqlstate.settings import REGISTRY_FORMATS, BadRecordPolicy, Format
from sqlstate.state.queries import sql

logger = logging.getLogger("sqlstate.decoding")  # its documented name
_BAD_RECORDS = LogEvent(
    logger,
    logging.WARNING,
    "bad_records",
    "%(topic)s-%(partition)d: %(records)d records do not decode, %(kept)s; first at offset"
    " %(first_offset)d: %(reason)s",
    words=lambda fields: {
        "kept": "left out" if fields["policy"] == "skip" else "written to rejected_records"
    },
)

Deserializer = Callable[[bytes | None], Any]


class Undecodable:
    """In place of a key or value that did not decode: the bytes as they came, and why."""

    __slots__ = ("error", "raw")

    def __init__(self, raw: bytes, error: str) -> None:
        self.raw = raw
        self.error = error

    def __repr__(self) -> str:
        return f"Undecodable({self.raw[:40]!r}, {self.error!r})"


def _not_json(constant: str) -> None:
    # Python's json reads NaN and Infinity; JSON (and SQLite's JSON functions) do not.
    raise ValueError(f"{constant} is not JSON")


# One decoder for every value: json.loads with any option builds a new decoder at each call,
# which costs more than parsing a small document. Its scanner is called directly: what
# JSONDecoder.decode() adds around it (two more Python frames and two regular-expression
# matches for the whitespace) cost about as much as the parse itself.
_JSON = json.JSONDecoder(parse_constant=_not_json)
# (typeshed types make_scanner's argument as the scanner itself, not as the decoder it reads.)
_SCAN = json.scanner.make_scanner(_JSON)  # type: ignore[arg-type]
# JSON's whitespace, the only characters allowed around the document.
_WHITESPACE = " \t\n\r"


def check_json(text: str) -> None:
    """Raise ``ValueError`` (``json.JSONDecodeError``) unless ``text`` is one JSON document, as
    ``JSONDecoder.decode`` would, with the same messages, without its overhead."""
    start = len(text) - len(text.lstrip(_WHITESPACE)) if text[:1] in _WHITESPACE else 0
    try:
        _, end = _SCAN(text, start)
    except StopIteration as error:
        raise json.JSONDecodeError("Expecting value", text, error.value) from None
    if end != len(text) and text[end:].strip(_WHITESPACE):
        end = len(text) - len(text[end:].lstrip(_WHITESPACE))
        raise json.JSONDecodeError("Extra data", text, end)


class Decoding:
    """The deserializers of one consumer, and how many records they could not decode."""

    def __init__(
        self, key_format: Format, value_format: Format, schemas: Schemas | None = None
    ) -> None:
        self.failures = 0
        # Keys and values left Pending since the last ``complete``.
        self.pending = 0
        self.schemas = schemas
        self.key_deserializer = self._deserializer("key", key_format)
        self.value_deserializer = self._deserializer("value", value_format)

    @property
    def leaves_bytes(self) -> bool:
        """Whether keys and values stay as Kafka has them: no deserializer at all."""
        return self.key_deserializer is None and self.value_deserializer is None

    def _deserializer(self, what: str, format: Format) -> Deserializer | None:
        if format == "bytes":
            return None
        if format in REGISTRY_FORMATS:
            return self._framed(what, format)
        as_json = format == "json"

        def decode(raw: bytes | None) -> Any:
            if raw is None:
                return None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                self.failures += 1
                return Undecodable(
                    raw, f"{what} is not UTF-8 text ({error.reason} at byte {error.start})"
                )
            if as_json:
                try:
                    check_json(text)
                except (ValueError, RecursionError) as error:
                    self.failures += 1
                    return Undecodable(raw, f"{what} is not JSON ({error})")
            return text

        return decode

    def _framed(self, what: str, format: str) -> Deserializer:
        """The deserializer of the registry's wire format: JSON text, a ``Pending`` while the
        schema is not compiled yet, or an ``Undecodable``."""
        if self.schemas is None:
            raise ValueError(f"--{what}-format {format} needs a schema registry")
        decoders = self.schemas.decoders

        def decode(raw: bytes | None) -> Any:
            if raw is None:
                return None
            schema_id = wire.schema_id(raw)
            if schema_id is None:
                self.failures += 1
                return Undecodable(
                    raw, f"{what} is not framed by a schema registry (no magic byte 0 and id)"
                )
            decoder = decoders.get((format, schema_id))
            if decoder is None:
                self.pending += 1
                return Pending(raw, what, format, schema_id)
            try:
                return decoder(raw[wire.HEADER_SIZE :])
            except Exception as error:  # each library raises its own types for a bad payload
                self.failures += 1
                return Undecodable(raw, f"{what}, {format} schema {schema_id}: {error}")

        return decode

    async def complete(self, batch: Mapping[Any, Iterable[Record]], stop: asyncio.Event) -> bool:
        """Decode the batch's ``Pending`` keys and values, once their schemas are fetched (as
        long as the registry takes to answer). False: ``stop`` came first; the batch must then
        not be committed."""
        if not self.pending or self.schemas is None:
            return True
        self.pending = 0
        waiting = [
            (record, part)
            for records in batch.values()
            for record in records
            for part in (record.key, record.value)
            if type(part) is Pending
        ]
        if not await self.schemas.resolve({(p.format, p.schema_id) for _, p in waiting}, stop):
            return False
        for record, part in waiting:
            if part.what == "key":
                record.key = self._again(self.key_deserializer, part)
            else:
                record.value = self._again(self.value_deserializer, part)
        return True

    @staticmethod
    def _again(deserializer: Deserializer | None, pending: Pending) -> Any:
        assert deserializer is not None  # a Pending comes only from a registry format's
        return deserializer(pending.raw)


def sort_out(records: Records) -> tuple[list[Record], list[Record]]:
    """(the records that decoded, those that did not), each in offset order."""
    good: list[Record] = []
    bad: list[Record] = []
    for record in records:
        if type(record.key) is Undecodable or type(record.value) is Undecodable:
            bad.append(record)
        else:
            good.append(record)
    return good, bad


def reason(record: Record) -> str:
    """Why a record did not decode."""
    return "; ".join(part.error for part in (record.key, record.value) if type(part) is Undecodable)


def _raw(part: Any) -> Any:
    return stored_key(part.raw if type(part) is Undecodable else part)


class BadRecords:
    """Applies ``--on-bad-record`` to each partition's share of a batch."""

    def __init__(self, decoding: Decoding, policy: BadRecordPolicy) -> None:
        self.decoding = decoding
        self.policy = policy

    def mark(self) -> int:
        """Where the failure counter stands; take it just before ``getmany()``."""
        return self.decoding.failures

    def sort(
        self, tp: TopicPartition, records: Records, mark: int
    ) -> tuple[Records, Sequence[Statement], int]:
        """(the records for the processors, the dead-letter statements, how many records did
        not decode). Raises ``BadRecordError`` under ``fail``."""
        if self.decoding.failures == mark or not records:
            return records, (), 0  # nothing failed to decode in this batch
        good, bad = sort_out(records)
        if not bad:
            return records, (), 0
        first = bad[0]
        if self.policy == "fail":
            raise BadRecordError(
                f"{tp.topic}-{tp.partition} offset {first.offset}: {reason(first)}; stopped"
                " before committing its batch (--on-bad-record fail): fix the topic, or run with"
                " --on-bad-record skip or dead-letter"
            )
        _BAD_RECORDS.log(
            **partition_fields(
                tp,
                records=len(bad),
                policy=self.policy,
                first_offset=first.offset,
                reason=reason(first),
            )
        )
        if self.policy == "skip":
            return good, (), len(bad)
        rows = [
            (tp.topic, tp.partition, r.offset, _raw(r.key), _raw(r.value), reason(r)) for r in bad
        ]
        return good, (Statement(sql("insert_rejected_record"), rows),), len(bad)
