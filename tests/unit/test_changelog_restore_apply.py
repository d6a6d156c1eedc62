"""A restore's large applies, and a standby's poll of many chunks in one transaction: the capture
triggers are dropped for the writes and come back as they were, and the result is the one the
general path gives on the same records (a key written twice, a tombstone, a key moved, records
set aside); a record's JSON is read as ``json`` reads it.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from sqlstate.changelog import apply as apply_module
from sqlstate.changelog import records as records_module
from sqlstate.changelog.apply import QUIET_CAPTURE_FROM, Applied, apply_changes
from sqlstate.changelog.capture import install_capture, take_changes
from sqlstate.changelog.reader import ChangelogChunk
from sqlstate.changelog.records import ChangelogRecord, position_record
from sqlstate.changelog.standby import PollChunk, apply_chunks, transactions
from sqlstate.changelog.table_sql import drop_temp_trigger
from sqlstate.changelog.tables import state_tables
from sqlstate.errors import ChangelogLostError
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.registry import Processors
from sqlstate.state.database import utc_now
from tests.support.db import query
from tests.support.processing import open_store

T0 = TopicPartition("t", 0)
Logged = tuple[bytes, bytes | None, int]


def counted(partition: int, key: str, count: int) -> tuple[bytes, bytes]:
    """A key_counts row of topic t as its owner's capture writes it."""
    return (
        b'["key_counts","t",%d,"%s"]' % (partition, key.encode()),
        b'{"topic":"t","partition":%d,"key":"%s","count":%d}' % (partition, key.encode(), count),
    )


def changelog() -> list[Logged]:
    """More records than QUIET_CAPTURE_FROM of partition 0, with what compaction may not have
    removed yet and what anyone who can write the topic could write."""
    pairs: list[tuple[bytes, bytes | None]] = [
        counted(0, f"k{i:05d}", 1) for i in range(QUIET_CAPTURE_FROM)
    ]
    pairs += [
        counted(0, "k00005", 7),  # written twice: the last one counts
        (counted(0, "k00006", 1)[0], None),  # a tombstone
        (counted(0, "k00007", 1)[0], None),  # a key moved: the old one's tombstone, the new row
        counted(0, "moved", 1),
        counted(1, "theirs", 5),  # another partition's row: set aside
        (b"not json", None),  # unreadable: set aside
        (counted(0, "other", 1)[0], counted(0, "mine", 1)[1]),  # key and row disagree
        (  # an integer SQLite cannot store: set aside by the one-by-one path
            counted(0, "huge", 1)[0],
            b'{"topic":"t","partition":0,"key":"huge","count":18446744073709551616}',
        ),
        position_record(42),
    ]
    return [(key, value, offset) for offset, (key, value) in enumerate(pairs)]


def _apply(conn: sqlite3.Connection, records: list[Logged]) -> Applied:
    return apply_changes(conn, "t", 0, records, state_tables([KeyCounter()]), now=utc_now())


def _temp_objects(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT type, name, sql FROM sqlite_temp_master ORDER BY rowid").fetchall()


def _an_owners_change(conn: sqlite3.Connection) -> list[tuple[bytes, bytes | None]]:
    """What the capture takes of a row an owner writes, the row then taken back."""
    conn.execute("INSERT INTO key_counts VALUES ('t', 0, 'owner', 1)")
    taken = take_changes(conn)
    conn.execute("DELETE FROM key_counts WHERE key = 'owner'")
    take_changes(conn)
    return taken


async def _applied(
    path: Path, capture: bool, chunk: int
) -> tuple[list[Applied], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Apply ``changelog()`` to a new file in chunks of ``chunk`` records; what each apply
    did, and the connection's TEMP objects before and after."""
    members = [KeyCounter()]
    processors = Processors.checked(members)
    store = await open_store(path, processors)
    database = store.database
    try:
        if capture:
            await database.setting(functools.partial(install_capture, tables=state_tables(members)))
        before = await database.read(_temp_objects)
        records = changelog()
        done = [
            await database.transaction(functools.partial(_apply, records=records[at : at + chunk]))
            for at in range(0, len(records), chunk)
        ]
        after = await database.read(_temp_objects)
        if capture:
            # Still catching the owner's changes, and nothing of the apply's.
            assert await database.transaction(_an_owners_change) == [counted(0, "owner", 1)]
    finally:
        await database.close()
        processors.close()
    return done, before, after


def _state(path: Path) -> list[tuple[Any, ...]]:
    return query(path, "SELECT topic, partition, key, count FROM key_counts ORDER BY key")


async def test_a_large_apply_gives_what_the_general_path_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped: list[str] = []

    def drop(name: str) -> str:
        dropped.append(name)
        return drop_temp_trigger(name)

    monkeypatch.setattr(apply_module, "drop_temp_trigger", drop)
    quiet, before, after = await _applied(tmp_path / "quiet.db", capture=True, chunk=10**9)
    assert len(dropped) == 8  # 4 on each of key_counts and rejected_records
    plain, _, _ = await _applied(tmp_path / "plain.db", capture=False, chunk=10**9)
    # Chunks below the threshold: the capture triggers fire, and what they caught is dropped.
    firing, _, _ = await _applied(
        tmp_path / "firing.db", capture=True, chunk=QUIET_CAPTURE_FROM // 4
    )
    assert len(dropped) == 8

    assert before
    assert after == before  # the same triggers, same text, same order
    assert quiet == plain
    (done,) = quiet
    assert [q for chunk in firing for q in chunk.quarantined] == list(done.quarantined)
    assert [q.reason.split(":")[0] for q in done.quarantined] == [
        "its row belongs to partition 1, not 0",
        "a changelog record this sqlstate cannot read (Expecting value",
        "its key ('t', 0, 'other') is not the key of its row",
        "SQLite refused it",
    ]
    assert (done.position, done.tombstones) == (42, 2)
    expected = _state(tmp_path / "plain.db")
    assert _state(tmp_path / "quiet.db") == expected == _state(tmp_path / "firing.db")
    assert ("t", 0, "k00005", 7) in expected
    assert ("t", 0, "moved", 1) in expected
    assert not {"k00006", "k00007", "huge", "mine", "other"} & {row[2] for row in expected}
    assert len(expected) == QUIET_CAPTURE_FROM - 1  # two gone, one moved in


@pytest.mark.parametrize(
    "text",
    [
        b'{"a":1,"b":"x"}',
        b' {"a": 1} ',
        b'["t",1]\n',
        b'"\\ud800"',
        b'{"a":1} x',
        b'{"a":1',
        b'{"a":NaN}',
        b"Infinity",
        b"",
        b"   ",
        b"[1e400]",
        b'{"a":1,"a":2}',
    ],
)
@pytest.mark.parametrize("scanner", ["scan_once", "none"])
def test_a_records_json_is_read_as_json_reads_it(
    text: bytes, scanner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also on a Python whose decoder has no ``scan_once``: then ``decode`` reads it all."""
    if scanner == "none":
        monkeypatch.setattr(records_module, "_scan", None)

    def read(loads: Any) -> tuple[str, Any]:
        try:
            return "ok", loads(text)
        except ValueError as error:
            return type(error).__name__, str(error)

    expected = read(lambda data: records_module._loads(data.decode()))
    assert read(records_module._json) == expected
    if expected[0] == "ok" and text.strip() not in (b'"\\ud800"',):
        assert expected[1] == json.loads(text)


async def _standby_poll(
    path: Path,
    chunks: list[list[Logged]],
    monkeypatch: pytest.MonkeyPatch,
    rewound: int | None = None,
) -> tuple[list[Applied], int]:
    """Apply ``chunks`` (one per partition of topic t) as one standby poll, in one transaction,
    on the connection of a process that owns other partitions (its capture installed); what
    each chunk did and how many capture triggers were dropped for it."""
    members = [KeyCounter()]
    tables = state_tables(members)
    processors = Processors.checked(members)
    store = await open_store(path, processors)
    database = store.database
    try:
        await database.setting(functools.partial(install_capture, tables=tables))
        before = await database.read(_temp_objects)
        ready = [
            PollChunk(
                TopicPartition("t", partition),
                ChangelogChunk(
                    [ChangelogRecord(*record) for record in records],
                    len(records),
                    rewound=partition == rewound,
                ),
                log_end_offset=None,
                input_end=None,
            )
            for partition, records in enumerate(chunks)
        ]
        dropped: list[str] = []

        def drop(name: str) -> str:
            dropped.append(name)
            return drop_temp_trigger(name)

        with monkeypatch.context() as patch:
            patch.setattr(apply_module, "drop_temp_trigger", drop)
            try:
                done = await database.transaction(
                    functools.partial(apply_chunks, ready=ready, tables=tables, now=utc_now())
                )
            except ChangelogLostError:
                done = []
        assert await database.read(_temp_objects) == before
        # Still catching the owner's changes, and nothing of the apply's.
        assert await database.transaction(_an_owners_change) == [counted(0, "owner", 1)]
    finally:
        await database.close()
        processors.close()
    return done, len(dropped)


def _partition_records(partition: int, rows: int) -> list[Logged]:
    pairs = [counted(partition, f"k{i:05d}", i) for i in range(rows)]
    pairs.append(position_record(rows))
    return [(key, value, offset) for offset, (key, value) in enumerate(pairs)]


@pytest.mark.parametrize(
    "rows",
    # Each chunk holds its rows and a position record: together 2 * (rows + 1) records.
    [QUIET_CAPTURE_FROM // 8, QUIET_CAPTURE_FROM // 2 - 2, QUIET_CAPTURE_FROM // 2 - 1],
)
async def test_a_standby_poll_applies_its_chunks_in_one_transaction(
    tmp_path: Path, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two partitions' chunks, each below the threshold: when together they reach it, the
    triggers are dropped once for both; below it (by two records, or far), they fire. Either
    way each partition holds its chunk's rows, and its position."""
    chunks = [_partition_records(0, rows), _partition_records(1, rows)]
    done, dropped = await _standby_poll(tmp_path / "poll.db", chunks, monkeypatch)
    assert dropped == (8 if 2 * (rows + 1) >= QUIET_CAPTURE_FROM else 0)
    assert [(applied.rows, applied.position) for applied in done] == [(rows, rows)] * 2
    state = query(
        tmp_path / "poll.db",
        "SELECT partition, count(*), sum(count) FROM key_counts GROUP BY partition",
    )
    assert state == [(0, rows, sum(range(rows))), (1, rows, sum(range(rows)))]
    assert query(
        tmp_path / "poll.db", "SELECT partition, next_offset FROM changelog_offsets ORDER BY 1"
    ) == [(0, rows + 1), (1, rows + 1)]


def test_a_standby_poll_is_applied_in_transactions_of_a_bounded_size() -> None:
    def ready(*sizes: int) -> list[PollChunk]:
        return [
            PollChunk(
                TopicPartition("t", partition),
                ChangelogChunk([ChangelogRecord(b"k", None, n) for n in range(size)], size),
                log_end_offset=None,
                input_end=None,
            )
            for partition, size in enumerate(sizes)
        ]

    def sizes(groups: list[list[PollChunk]]) -> list[list[int]]:
        return [[len(item.chunk.records) for item in group] for group in groups]

    assert sizes(transactions(ready(2, 3, 4, 9, 1), 5)) == [[2, 3], [4], [9], [1]]
    assert sizes(transactions(ready(1, 1, 1), 5)) == [[1, 1, 1]]
    assert transactions([], 5) == []


async def test_a_standby_transaction_that_fails_applies_none_of_its_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second partition's changelog was cut short under its reader (a host that must stop,
    exit 5): the first partition's chunk, in the same transaction, is rolled back with it, and
    the capture triggers dropped for both are back as they were."""
    rows = QUIET_CAPTURE_FROM
    chunks = [_partition_records(0, rows), _partition_records(1, rows)]
    done, dropped = await _standby_poll(tmp_path / "poll.db", chunks, monkeypatch, rewound=1)
    assert (done, dropped) == ([], 8)
    assert query(tmp_path / "poll.db", "SELECT count(*) FROM key_counts") == [(0,)]
    assert query(tmp_path / "poll.db", "SELECT count(*) FROM changelog_offsets") == [(0,)]
