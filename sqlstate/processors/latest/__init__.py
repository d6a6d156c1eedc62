"""The built-in processor ``latest``: the latest value of every key, a compacted topic as a table.

Table ``latest (topic, key, value, partition, offset, timestamp)``, one row per key and
partition. A record whose value is null (a tombstone) deletes its key. Only each key's last
record of a batch matters, so a batch costs one row per distinct key: the table ends the same
whatever the batch boundaries, as a compacted topic does.

The package is the whole processor: this code, its statements (``queries.sql``) and its tables
(``migrations/``, recorded as ``latest/0001_latest``...).

Keys and values are stored as ``key_counts`` stores keys: TEXT when valid UTF-8 (or decoded by
``--key-format``/``--value-format text`` or ``json``), BLOB otherwise.

A partition's batch normally goes to SQLite as one statement (``upsert_partition_latest``): its
keys, offsets and timestamps as one JSON array, its values end to end as one BLOB. SQLite then
runs the whole upsert in one step without Python's GIL, beside the event loop. A statement run
once per row instead takes the GIL back for every row, and while the event loop is busy each of
those waits can last Python's whole switch interval (5 ms): that cost ``latest`` half its speed.
A batch with a key the JSON cannot carry (null, not UTF-8, or holding NUL), a value that is not
UTF-8 (a BLOB), or more values than ``BLOB_LIMIT`` bytes goes row by row, with the same result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import accumulate
from typing import Any

from aiokafka import TopicPartition

from sqlstate.processors import Migration, Queries, Statement, bundled, json_text
from sqlstate.processors.base import ParsedRecord, ParsedRecords
from sqlstate.processors.keys import stored_key

#: Above this many bytes of values a batch goes row by row rather than as one BLOB (which SQLite
#: caps at 1 GB, and which would double the batch's memory for a moment).
BLOB_LIMIT = 32 * 1024 * 1024

sql = Queries(__name__)


class Latest:
    """The latest value per key; tombstones delete."""

    name = "latest"
    # --changelog: what identifies a row, and how to find it through the table's unique index.
    changelog_tables: Mapping[str, Sequence[str]] = {"latest": ("topic", "partition", "key")}
    #: What makes its state besides sqlstate's version (``sqlstate rebuild`` compares it).
    definition = name

    def __init__(self) -> None:
        self.migrations: Sequence[Migration] = bundled(__name__)

    @property
    def changelog_matches(self) -> Mapping[str, str]:
        return {"latest": sql("changelog_match_latest")}

    def statements(self, tp: TopicPartition, records: ParsedRecords) -> Sequence[Statement]:
        last: dict[Any, ParsedRecord] = {record.key: record for record in records}
        documents = _as_documents(last)
        if documents is None:
            return _row_by_row(tp, last)
        rows, values, tombstones = documents
        partition = {"topic": tp.topic, "partition": tp.partition}
        statements = []
        if rows is not None:
            statements.append(
                Statement(
                    sql("upsert_partition_latest"), [{**partition, "rows": rows, "values": values}]
                )
            )
        if tombstones is not None:
            statements.append(
                Statement(sql("delete_partition_latest"), [{**partition, "keys": tombstones}])
            )
        return statements

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        return [Statement(sql("forget_latest"), [{"topic": tp.topic, "partition": tp.partition}])]


def _as_documents(last: Mapping[Any, ParsedRecord]) -> tuple[str | None, bytes, str | None] | None:
    """Each key's last record as ``(rows, values, tombstones)`` for the one-statement path.

    ``rows`` is the JSON array ``[[key, start, length, offset, timestamp], ...]`` of the keys
    with a value, ``values`` those values end to end, ``tombstones`` the JSON array of the keys
    whose last value is null; either document is None when it would be empty. None instead when
    the batch must go row by row (see the module's docstring).
    """
    if None in last:
        return None
    tombstones = None
    rows = None
    blob = b""
    try:
        # A column at a time: a comprehension per field is cheaper than a tuple per record.
        values = [record.value for record in last.values()]
        if None in values:
            dead = [key for key, record in last.items() if record.value is None]
            tombstones = json_text.document(_text_keys(dead))
            if tombstones is None:
                return None
            last = {key: record for key, record in last.items() if record.value is not None}
            values = [record.value for record in last.values()]
        if values:
            blob, lengths = _end_to_end(values)
            if len(blob) > BLOB_LIMIT:
                return None
            columns = zip(
                _text_keys(list(last)),
                accumulate(lengths[:-1], initial=1),
                lengths,
                [record.offset for record in last.values()],
                [record.timestamp for record in last.values()],
                strict=True,
            )
            rows = json_text.document(list(columns))
            if rows is None:
                return None
    except (UnicodeError, TypeError):  # a key or value not UTF-8; a format's types mixed
        return None
    return rows, blob, tombstones


def _text_keys(keys: list[Any]) -> list[str]:
    """The keys as text. Raises UnicodeError for bytes that are not UTF-8, TypeError for a
    batch that mixes bytes and text (no ``--key-format`` makes one)."""
    return keys if type(keys[0]) is str else list(map(bytes.decode, keys))


def _end_to_end(values: Sequence[bytes | str]) -> tuple[bytes, list[int]]:
    """The values' UTF-8 bytes joined, and each one's length in bytes.

    Raises UnicodeError when a value is not valid UTF-8 on its own (it is stored as a BLOB).
    ASCII, nearly always, is checked over the whole batch at once: then every byte is a
    character and nothing needs decoding or encoding value by value.
    """
    if type(values[0]) is str:
        text = "".join(values)  # type: ignore[arg-type]
        if text.isascii():
            return text.encode("ascii"), list(map(len, values))
        encoded = [value.encode() for value in values]  # type: ignore[union-attr]
        return b"".join(encoded), list(map(len, encoded))
    joined = b"".join(values)  # type: ignore[arg-type]
    if not joined.isascii():
        for value in values:
            value.decode()  # type: ignore[union-attr]
    return joined, list(map(len, values))


def _row_by_row(tp: TopicPartition, last: Mapping[Any, ParsedRecord]) -> Sequence[Statement]:
    """One upsert row per key with a value and one delete row per tombstone."""
    topic, partition = tp.topic, tp.partition
    upserts = []
    deletes = []
    for key, record in last.items():
        if record.value is None:
            deletes.append((topic, partition, stored_key(key)))
        else:
            upserts.append(
                (
                    topic,
                    partition,
                    stored_key(key),
                    stored_key(record.value),
                    record.offset,
                    record.timestamp,
                )
            )
    statements = []
    if upserts:
        statements.append(Statement(sql("upsert_latest"), upserts))
    if deletes:
        statements.append(Statement(sql("delete_latest"), deletes))
    return statements
