"""KeyCounter's batch statements store every kind of key exactly as the one-row-per-key upsert.

The fast path sends a partition's text keys to SQLite as one JSON object; these keys are the ones
where JSON and SQLite's JSON functions could disagree with Python (NUL, control characters,
escapes, non-ASCII, numbers-as-text, very large keys), mixed with keys that must take the slow
path (null, not UTF-8), in the same batch and partition.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from sqlstate.processors.counts import KeyCounter, sql
from sqlstate.processors.keys import stored_key
from sqlstate.state import migrate
from sqlstate.state.database import Database
from tests.support.db import query

TEXT_KEYS: list[bytes | None] = [
    b"",
    b"plain",
    b"123",
    b"1.5",
    b"true",
    b"null",
    b" ",
    b'"quoted"',
    b"back\\slash",
    b"\\u0000",
    b"tab\there",
    b"line\nbreak",
    b"\x01\x1f\x7f",
    "ünïcödé".encode(),
    "😀 emoji".encode(),
    b"x" * 1_000_000,
]
NUL_KEYS: list[bytes | None] = [b"\x00", b"a\x00b"]
OTHER_KEYS: list[bytes | None] = [None, b"\xff\xfe", b"\x80"]


def _record(tp: TopicPartition, offset: int, key: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=b"v",
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=1,
        headers=(),
    )


async def _stored(
    path: Path, keys_by_partition: dict[TopicPartition, list[bytes | None]], times: int
) -> list[tuple[object, ...]]:
    database = await Database.open(path, busy_timeout_s=5.0)
    try:
        await migrate.apply_pending(database)
        statements = [
            statement
            for tp, keys in keys_by_partition.items()
            for statement in KeyCounter().statements(
                tp, [_record(tp, offset, key) for offset, key in enumerate(keys)]
            )
        ]

        def work(conn: sqlite3.Connection) -> None:
            for statement in statements:
                conn.executemany(statement.sql, statement.rows)

        for _ in range(times):
            await database.transaction(work)
    finally:
        await database.close()
    return sorted(
        query(path, "SELECT topic, partition, key, typeof(key), count FROM key_counts"), key=repr
    )


def _expected(
    keys_by_partition: dict[TopicPartition, list[bytes | None]], times: int
) -> list[tuple[object, ...]]:
    rows = []
    for tp, keys in keys_by_partition.items():
        for key, count in Counter(keys).items():
            stored = stored_key(key)
            kind = "null" if stored is None else "text" if isinstance(stored, str) else "blob"
            rows.append((tp.topic, tp.partition, stored, kind, count * times))
    return sorted(rows, key=repr)


async def test_every_kind_of_key_is_counted_exactly(tmp_path: Path) -> None:
    mixed = TopicPartition("t", 0)
    text_only = TopicPartition("t", 1)
    keys: dict[TopicPartition, list[bytes | None]] = {
        mixed: [*TEXT_KEYS, *NUL_KEYS, *OTHER_KEYS, b"plain", None, b"\xff\xfe"],
        text_only: [*TEXT_KEYS, b"plain", b""],
    }
    assert await _stored(tmp_path / "x.db", keys, times=2) == _expected(keys, times=2)


async def test_text_keys_of_a_partition_go_as_one_statement() -> None:
    tp = TopicPartition("t", 0)
    statements = KeyCounter().statements(tp, [_record(tp, i, b"k%d" % (i % 7)) for i in range(100)])
    assert [(s.sql, len(s.rows)) for s in statements] == [(sql("upsert_partition_key_counts"), 1)]
