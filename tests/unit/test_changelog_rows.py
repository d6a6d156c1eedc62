"""The SQLite side of ``--changelog``, without Kafka: rows captured in one file, shipped in
order as changelog records and applied to a second file, make the second file's state tables
equal to the first's, for every built-in processor, the dead letters and ``--sql`` processors;
applying is idempotent and monotonic; odd keys and values round-trip; refusals."""

from __future__ import annotations

import contextlib
import functools
import json
import random
import sqlite3
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from sqlstate.changelog import apply as apply_module
from sqlstate.changelog.apply import CAN_SWITCH_TRIGGERS, Applied, apply_changes
from sqlstate.changelog.capture import install_capture, take_changes
from sqlstate.changelog.offsets import changelog_offset, changelog_offsets, record_changelog_offset
from sqlstate.changelog.records import (
    POSITION_KEY,
    PositionChange,
    RowChange,
    RowCheck,
    decode,
    position_record,
)
from sqlstate.changelog.side import CapturedChangelog
from sqlstate.changelog.state_table import StateTable
from sqlstate.changelog.table_sql import delete_by_key
from sqlstate.changelog.tables import state_tables
from sqlstate.errors import ChangelogError, ChangelogModeError, DatabaseError, ProcessorError
from sqlstate.kafka.decoding import BadRecords, Decoding
from sqlstate.processors.base import Migration, Processor, Record, Records, Statement
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.latest import Latest
from sqlstate.processors.registry import Processors
from sqlstate.processors.sql_file import SqlFileProcessor
from sqlstate.processors.windowed_counts import WindowedCounts
from sqlstate.state.database import Database, utc_now
from sqlstate.state.model import Change, Claim, Committed, PartitionBatch
from sqlstate.state.out_of_range import LogBounds
from sqlstate.state.start import Start, StartedAt
from sqlstate.state.store import Store
from tests.support.db import query
from tests.support.processing import open_store, order, record

# A changelog record as read back: key, value (None: a tombstone), changelog offset.
Logged = tuple[bytes, bytes | None, int]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "customer_totals.sql"
T0 = TopicPartition("t", 0)
T1 = TopicPartition("t", 1)
MINUTE = 60_000
# Keys that must each stay distinct and come back as they were: null, empty text and empty
# bytes, bytes that are not UTF-8, text with NUL, non-ASCII text, a large key, quotes.
ODD_KEYS: list[Any] = [
    None,
    b"",
    "",
    b"\xff\xfe\x00",
    b"a\x00b",
    "é☃𝄞",
    b"\xc3\xa9",
    "k" * 10_000,
    "\"['$blob']\"",
    '{"$blob": "00"}',
]


class Changelog:
    """The changelog partitions as Kafka would hold them: each batch one transaction of the
    captured records and the position record, whose commit marker takes an offset too."""

    def __init__(self) -> None:
        self.records: dict[TopicPartition, list[Logged]] = defaultdict(list)
        self.ends: dict[TopicPartition, int] = defaultdict(int)

    def append(
        self, tp: TopicPartition, changes: Sequence[tuple[bytes, bytes | None]], position: int
    ) -> int:
        """Add one transaction; return the offset after its last record (what the owner
        records as applied)."""
        for key, value in [*changes, position_record(position)]:
            self.records[tp].append((key, value, self.ends[tp]))
            self.ends[tp] += 1
        applied = self.ends[tp]
        self.ends[tp] += 1  # the commit marker
        return applied


class Owner:
    """A file whose partitions this test owns: batches commit through the store as the daemon
    commits them, with capture on; each batch's records go to ``changelog``."""

    def __init__(self, path: Path, members: Sequence[Processor], changelog: Changelog) -> None:
        self.path = path
        self.processors = Processors.checked(members)
        self.tables = state_tables(members)
        self.changelog = changelog
        self.claims: dict[TopicPartition, Claim] = {}
        self.store: Store

    async def __aenter__(self) -> Owner:
        self.store = await open_store(self.path, self.processors)
        await self.store.database.setting(functools.partial(install_capture, tables=self.tables))
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.store.database.close()
        self.processors.close()

    async def claim(self, tps: Sequence[TopicPartition]) -> None:
        claimed = await self.store.claim(
            {tp: LogBounds(0, 1_000_000) for tp in tps},
            "owner",
            "reset",
            self.processors.forget,
            topic_ids={},
            isolation_level="read_committed",
        )
        self.claims.update(claimed.claims)
        # A claim's own changes (none here: no reset) would go out with the first batch.
        assert await self.store.database.transaction(take_changes) == []

    async def commit(
        self, tp: TopicPartition, records: Records, rejected: Sequence[Statement] = ()
    ) -> None:
        """One batch of one partition, its changes published, its changelog offset recorded."""
        batch = PartitionBatch(
            tp=tp,
            claim=self.claims[tp],
            next_offset=records[-1].offset + 1,
            log_end_offset=None,
            records=len(records),
            statements=[*rejected, *self.processors.statements(tp, records)],
        )
        (outcome,) = await self.store.commit_batch([batch])
        assert isinstance(outcome, Committed), outcome
        self.claims[tp] = outcome.claim
        await self.publish(tp, outcome.claim.next_offset)

    async def reset(self, tp: TopicPartition, first: int) -> None:
        """An out-of-range reset, as the claim makes it (at an assignment, or again while
        running): the partition's state forgotten, its position moved to the log's start."""
        claimed = await self.store.claim(
            {tp: LogBounds(first, 1_000_000)},
            "owner",
            "reset",
            self.processors.forget,
            topic_ids={},
            isolation_level="read_committed",
        )
        assert [reset.tp for reset in claimed.resets] == [tp]
        self.claims[tp] = claimed.claims[tp]
        await self.publish(tp, claimed.claims[tp].next_offset)

    async def publish(self, tp: TopicPartition, position: int) -> None:
        changes = await self.store.database.transaction(take_changes)
        applied = self.changelog.append(tp, changes, position)
        await self.store.database.transaction(
            functools.partial(record_changelog_offset, tp=tp, next_offset=applied)
        )


async def follow(
    path: Path,
    members: Sequence[Processor],
    changelog: Changelog,
    chunks: int = 1,
    seed: int = 7,
) -> list[Applied]:
    """Apply every partition of ``changelog`` to the file at ``path`` (migrated first), cut in
    ``chunks`` transactions at random places."""
    processors = Processors.checked(members)
    tables = state_tables(members)
    rng = random.Random(seed)
    results = []
    store = await open_store(path, processors)
    try:
        for tp, records in sorted(changelog.records.items()):
            cuts = sorted(rng.sample(range(1, len(records)), k=min(chunks - 1, len(records) - 1)))
            for start, end in zip([0, *cuts], [*cuts, len(records)], strict=True):
                results.append(await apply(store.database, tp, records[start:end], tables))
    finally:
        await store.database.close()
        processors.close()
    return results


async def apply(
    database: Database,
    tp: TopicPartition,
    records: Sequence[Logged],
    tables: Sequence[StateTable],
    next_offset: int | None = None,
    input_end: int | None = None,
) -> Applied:
    return await database.transaction(
        functools.partial(
            apply_changes,
            topic=tp.topic,
            partition=tp.partition,
            records=records,
            tables=tables,
            now=utc_now(),
            next_offset=next_offset,
            input_end=input_end,
        )
    )


def state(path: Path, tables: Sequence[StateTable]) -> dict[str, list[tuple[Any, ...]]]:
    """Every state table's rows in a stable order, each value with its SQLite type, and the
    positions."""
    dump = {}
    for table in tables:
        rows = query(path, f'SELECT * FROM "{table.name}" ORDER BY {_all_columns(path, table)}')
        dump[table.name] = [tuple((type(v).__name__, v) for v in row) for row in rows]
    dump["positions"] = query(path, "SELECT topic, partition, next_offset FROM positions")
    return dump


def _all_columns(path: Path, table: StateTable) -> str:
    count = len(query(path, f"SELECT name FROM pragma_table_info('{table.name}')"))
    return ", ".join(str(n) for n in range(1, count + 1))


def assert_same_state(owner: Path, standby: Path, members: Sequence[Processor]) -> None:
    tables = state_tables(members)
    expected = state(owner, tables)
    assert any(expected[t.name] for t in tables), "the test wrote no state"
    assert state(standby, tables) == expected


def some_records(tp: TopicPartition, start: int, keys: Sequence[Any], count: int) -> list[Record]:
    rng = random.Random(start)
    return [
        record(tp, offset, rng.choice(keys), f"v{offset}".encode(), 1_000 * offset)
        for offset in range(start, start + count)
    ]


# ---- every processor, shipped to a second file -------------------------------------------------


@pytest.mark.parametrize("chunks", [1, 3, 1_000])
async def test_counts_with_odd_keys_are_the_same_on_the_standby(
    tmp_path: Path, chunks: int
) -> None:
    members = [KeyCounter()]
    changelog = Changelog()
    async with Owner(tmp_path / "owner.db", members, changelog) as owner:
        await owner.claim([T0, T1])
        for start in range(0, 120, 30):
            await owner.commit(T0, some_records(T0, start, ODD_KEYS, 30))
            await owner.commit(T1, some_records(T1, start, ODD_KEYS[:3], 30))
    await follow(tmp_path / "standby.db", members, changelog, chunks)
    assert_same_state(tmp_path / "owner.db", tmp_path / "standby.db", members)
    assert query(tmp_path / "standby.db", "SELECT count(*) FROM key_counts WHERE key IS NULL") == [
        (2,)
    ]


async def test_latest_with_tombstones_is_the_same_on_the_standby(tmp_path: Path) -> None:
    members = [Latest()]
    changelog = Changelog()
    async with Owner(tmp_path / "owner.db", members, changelog) as owner:
        await owner.claim([T0])
        await owner.commit(T0, [record(T0, o, k, b"x%d" % o) for o, k in enumerate(ODD_KEYS)])
        # A tombstone for some keys, a new value for others, a delete and re-insert in one batch.
        await owner.commit(
            T0,
            [
                record(T0, 10, None, None),
                record(T0, 11, b"\xff\xfe\x00", None),
                record(T0, 12, "é☃𝄞", b"\xff"),
                record(T0, 13, "", None),
                record(T0, 14, "", b"back"),
            ],
        )
    await follow(tmp_path / "standby.db", members, changelog, chunks=4)
    assert_same_state(tmp_path / "owner.db", tmp_path / "standby.db", members)
    keys = query(tmp_path / "standby.db", "SELECT key FROM latest WHERE key IS NULL OR key = ''")
    assert keys == [("",)]


async def test_windowed_counts_with_expiry_are_the_same_on_the_standby(tmp_path: Path) -> None:
    members = [WindowedCounts(MINUTE, 3 * MINUTE)]
    changelog = Changelog()
    async with Owner(tmp_path / "owner.db", members, changelog) as owner:
        await owner.claim([T0])
        offset = 0
        for minute in range(8):  # each batch moves the clock a minute: old windows expire
            batch = [
                record(T0, offset + i, ODD_KEYS[i % 4], b"v", minute * MINUTE + i)
                for i in range(12)
            ]
            offset += len(batch)
            await owner.commit(T0, batch)
    expired = [r for r in changelog.records[T0] if r[1] is None]
    assert expired, "retention deleted no window"
    await follow(tmp_path / "standby.db", members, changelog, chunks=5)
    assert_same_state(tmp_path / "owner.db", tmp_path / "standby.db", members)


async def test_dead_letters_are_the_same_on_the_standby(tmp_path: Path) -> None:
    members = [KeyCounter()]
    decoding = Decoding("text", "json")
    assert decoding.key_deserializer is not None
    assert decoding.value_deserializer is not None
    raw = [(b"a", b"1"), (b"\xff", b"2"), (b"b", b"{oops"), (b"c", b"3")]
    records = [
        record(T0, offset, decoding.key_deserializer(key), decoding.value_deserializer(value))
        for offset, (key, value) in enumerate(raw)
    ]
    good, rejected, _ = BadRecords(decoding, "dead-letter").sort(T0, records, -1)
    changelog = Changelog()
    async with Owner(tmp_path / "owner.db", members, changelog) as owner:
        await owner.claim([T0])
        await owner.commit(T0, good, rejected)
    await follow(tmp_path / "standby.db", members, changelog)
    assert_same_state(tmp_path / "owner.db", tmp_path / "standby.db", members)
    assert len(query(tmp_path / "standby.db", "SELECT * FROM rejected_records")) == 2


# A --sql processor keyed by a UNIQUE index (no PRIMARY KEY) whose trigger derives a second table.
# On a standby, both tables' rows come from the changelog: the trigger must not fire again there.
DERIVED = """\
-- sqlstate: schema
CREATE TABLE seen (topic TEXT NOT NULL, partition INTEGER NOT NULL, key, last_offset INTEGER);
CREATE UNIQUE INDEX seen_key ON seen (topic, partition, key);
CREATE TABLE seen_totals (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, writes INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TRIGGER seen_count AFTER INSERT ON seen BEGIN
    INSERT INTO seen_totals (topic, partition, writes) VALUES (NEW.topic, NEW.partition, 1)
    ON CONFLICT (topic, partition) DO UPDATE SET writes = writes + 1;
END;
-- sqlstate: record
INSERT INTO seen (topic, partition, key, last_offset) VALUES (:topic, :partition, :key, :offset)
ON CONFLICT (topic, partition, key) DO UPDATE SET last_offset = excluded.last_offset;
-- sqlstate: forget
DELETE FROM seen WHERE topic = :topic AND partition = :partition;
"""


async def test_sql_processors_are_the_same_on_the_standby(tmp_path: Path) -> None:
    (tmp_path / "derived.sql").write_text(DERIVED)
    members: list[Processor] = [
        SqlFileProcessor.load(EXAMPLE),
        SqlFileProcessor.load(tmp_path / "derived.sql"),
    ]
    changelog = Changelog()
    customers = ["c-1", "c-2", "c-3"]
    async with Owner(tmp_path / "owner.db", members, changelog) as owner:
        await owner.claim([T0])
        for start in range(0, 40, 10):
            await owner.commit(
                T0,
                [
                    record(T0, o, f"k{o % 4}", order(customers[o % 3], o * 10))
                    for o in range(start, start + 10)
                ],
            )
    await follow(tmp_path / "standby.db", members, changelog, chunks=3)
    assert_same_state(tmp_path / "owner.db", tmp_path / "standby.db", members)
    assert query(tmp_path / "standby.db", "SELECT writes FROM seen_totals") == [(4,)]
    # The file's triggers are on again after the apply.
    with sqlite3.connect(tmp_path / "standby.db") as conn:
        conn.execute("INSERT INTO seen VALUES ('t', 9, 'new', 0)")
        assert conn.execute("SELECT sum(writes) FROM seen_totals").fetchall() == [(5,)]
    conn.close()


# Triggers a user added to a standby's file: each stops any statement it fires for, saying which
# it is. Two of the same kind show the order SQLite fires them in, which must survive the apply.
USER_TRIGGERS = [
    f"CREATE TRIGGER {name} {timing} ON latest BEGIN SELECT RAISE(ABORT, '{name} fired'); END"
    for name, timing in [
        ("before_insert_1", "BEFORE INSERT"),
        ("before_insert_2", "BEFORE INSERT"),
        ("after_insert", "AFTER INSERT"),
        ("before_delete", "BEFORE DELETE"),
        ("after_delete", "AFTER DELETE"),
        ("after_update", "AFTER UPDATE"),
    ]
]


def first_trigger_fired(path: Path, statement: str) -> str:
    """The message of the trigger that stops ``statement`` on ``path`` (nothing is changed)."""
    with contextlib.closing(sqlite3.connect(path)) as conn, pytest.raises(sqlite3.Error) as error:
        conn.execute(statement)
    return str(error.value)


# Every way this Python has: Connection.setconfig came with Python 3.12; dropping and creating
# the triggers again works on every version (and is 3.11's only way).
TRIGGER_SWITCHES = [
    *([pytest.param(True, id="setconfig")] if CAN_SWITCH_TRIGGERS else []),
    pytest.param(False, id="dropped-and-created-again"),
]


@pytest.mark.parametrize("switch", TRIGGER_SWITCHES)
async def test_the_files_own_triggers_never_fire_while_applying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, switch: bool
) -> None:
    """Whichever way this Python switches them off: no trigger of the file fires for a row,
    a tombstone or a changed value applied; afterwards they are all there, as they were, and
    fire in the same order."""
    monkeypatch.setattr(apply_module, "CAN_SWITCH_TRIGGERS", switch)
    members = [Latest()]
    changelog = Changelog()
    async with Owner(tmp_path / "owner.db", members, changelog) as owner:
        await owner.claim([T0])
        await owner.commit(T0, [record(T0, o, f"k{o}", b"v%d" % o) for o in range(5)])
    standby = tmp_path / "standby.db"
    await follow(standby, members, changelog)
    with contextlib.closing(sqlite3.connect(standby)) as conn, conn:
        for trigger in USER_TRIGGERS:
            conn.execute(trigger)
    schema = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
    before = query(standby, schema)
    insert = "INSERT INTO latest SELECT * FROM latest"
    assert "before_insert_2 fired" in first_trigger_fired(standby, insert)

    async with Owner(tmp_path / "owner.db", members, changelog) as owner:
        await owner.claim([T0])
        # New keys, new values of old keys, and tombstones: inserts and deletes on the standby.
        await owner.commit(
            T0, [record(T0, 5, "k0", b"new"), record(T0, 6, "k1", None), record(T0, 7, "k9", b"")]
        )
    processors = Processors.checked(members)
    store = await open_store(standby, processors)
    try:
        applied = await apply(store.database, T0, changelog.records[T0], state_tables(members))
        # On again for the connection that applied (it also commits the batches it owns).
        with pytest.raises(DatabaseError, match="before_insert_2 fired"):
            await store.database.transaction(lambda conn: conn.execute(insert))
    finally:
        await store.database.close()
        processors.close()
    assert [q.reason for q in applied.quarantined] == []
    assert (applied.rows, applied.tombstones) == (2, 1)
    assert_same_state(tmp_path / "owner.db", standby, members)
    assert query(standby, schema) == before
    assert "before_insert_2 fired" in first_trigger_fired(standby, insert)
    assert "before_delete fired" in first_trigger_fired(standby, "DELETE FROM latest")


async def test_triggers_that_would_not_come_back_to_the_file_roll_the_apply_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropped and created again (Python 3.11's way): a TEMP table of the name of a trigger's
    table would take the created trigger into the TEMP schema, out of the file at the commit.
    The apply refuses and rolls back: the file keeps its triggers and its state."""
    monkeypatch.setattr(apply_module, "CAN_SWITCH_TRIGGERS", False)
    members = [Latest()]
    changelog = Changelog()
    async with Owner(tmp_path / "owner.db", members, changelog) as owner:
        await owner.claim([T0])
        await owner.commit(T0, [record(T0, o, f"k{o}", b"v%d" % o) for o in range(3)])
    standby = tmp_path / "standby.db"
    processors = Processors.checked(members)
    store = await open_store(standby, processors)
    try:
        await store.database.transaction(lambda conn: conn.execute(USER_TRIGGERS[0]))
        schema = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
        before = query(standby, schema)
        await store.database.transaction(lambda conn: conn.execute("CREATE TEMP TABLE latest (x)"))
        with pytest.raises(DatabaseError, match="did not come back"):
            await apply(store.database, T0, changelog.records[T0], state_tables(members))
    finally:
        await store.database.close()
        processors.close()
    assert query(standby, schema) == before
    assert query(standby, "SELECT count(*) FROM latest") == [(0,)]


async def test_a_reset_ships_tombstones_and_the_new_position(tmp_path: Path) -> None:
    members: list[Processor] = [KeyCounter(), Latest()]
    changelog = Changelog()
    async with Owner(tmp_path / "owner.db", members, changelog) as owner:
        await owner.claim([T0, T1])
        await owner.commit(T0, some_records(T0, 0, ["a", "b", None], 20))
        await owner.commit(T1, some_records(T1, 0, ["a", "c"], 20))
        await owner.reset(T0, 500)
        await owner.commit(T0, some_records(T0, 500, ["z"], 5))
    await follow(tmp_path / "standby.db", members, changelog)
    assert_same_state(tmp_path / "owner.db", tmp_path / "standby.db", members)
    assert query(tmp_path / "standby.db", "SELECT DISTINCT key FROM key_counts WHERE partition = 0")
    assert query(
        tmp_path / "standby.db", "SELECT next_offset FROM positions WHERE partition = 0"
    ) == [(505,)]


# ---- applying: idempotent, monotonic, positions ------------------------------------------------


async def test_applying_twice_or_older_records_changes_nothing(tmp_path: Path) -> None:
    members = [KeyCounter()]
    changelog = Changelog()
    async with Owner(tmp_path / "owner.db", members, changelog) as owner:
        await owner.claim([T0])
        for start in range(0, 60, 20):
            await owner.commit(T0, some_records(T0, start, ["a", "b", "c", None], 20))
    standby = tmp_path / "standby.db"
    await follow(standby, members, changelog)
    before = state(standby, state_tables(members))
    records = changelog.records[T0]
    processors = Processors.checked(members)
    store = await open_store(standby, processors)
    try:
        tables = state_tables(members)
        again = await apply(store.database, T0, records, tables)
        older = await apply(store.database, T0, records[:5], tables)
        end = records[-1][2] + 1
        assert (again.records, again.skipped, again.next_offset) == (0, len(records), end)
        assert (older.records, older.skipped, older.next_offset) == (0, 5, end)
        assert await store.database.read(functools.partial(changelog_offset, tp=T0)) == end
        # A record below the file's offset is skipped even when it comes with newer ones.
        stale = (records[0][0], None, 0)  # would delete a row
        newer = (*position_record(60), end + 5)
        mixed = await apply(store.database, T0, [stale, newer], tables)
        assert (mixed.records, mixed.skipped, mixed.position, mixed.next_offset) == (
            1,
            1,
            60,
            end + 6,
        )
        # A reader's position past a transaction marker moves the offset with no record.
        marker = await apply(store.database, T0, [], tables, next_offset=end + 7)
        assert marker.next_offset == end + 7
        offsets = await store.database.read(changelog_offsets)
        assert offsets == {T0: end + 7}
    finally:
        await store.database.close()
        processors.close()
    assert state(standby, state_tables(members)) == before


async def test_an_owner_ahead_on_the_same_file_wins(tmp_path: Path) -> None:
    """The file's owner recorded a newer changelog offset than the records a standby reader
    brings: they are older than the file's state and are skipped."""
    members = [Latest()]
    changelog = Changelog()
    async with Owner(tmp_path / "owner.db", members, changelog) as owner:
        await owner.claim([T0])
        await owner.commit(T0, [record(T0, 0, "k", b"old")])
        old = list(changelog.records[T0])
        await owner.commit(T0, [record(T0, 1, "k", b"new")])
        applied = await apply(owner.store.database, T0, old, owner.tables)
        assert (applied.records, applied.skipped) == (0, len(old))
    assert query(tmp_path / "owner.db", "SELECT value FROM latest") == [("new",)]


async def test_a_position_record_makes_a_standby_row_and_keeps_the_epoch(
    tmp_path: Path,
) -> None:
    members = [KeyCounter()]
    processors = Processors.checked(members)
    tables = state_tables(members)
    store = await open_store(tmp_path / "s.db", processors)
    try:
        await apply(store.database, T0, [(*position_record(42), 0)], tables)
        for _ in range(2):  # claimed twice here: epoch 2
            await store.claim(
                {T1: LogBounds(0, 100)},
                "me",
                "reset",
                processors.forget,
                topic_ids={},
                isolation_level="read_committed",
            )
        await apply(store.database, T1, [(*position_record(77), 0)], tables)
    finally:
        await store.database.close()
        processors.close()
    rows = query(tmp_path / "s.db", "SELECT partition, next_offset, epoch, owner FROM positions")
    # Followed now, whoever claimed it here before: the epoch stays, so a claim is never undone.
    assert rows == [(0, 42, 0, "standby"), (1, 77, 2, "standby")]


async def test_a_followed_start_records_the_topics_partition_count(tmp_path: Path) -> None:
    """The count of the topic's first claim comes with another host's start, once: a later
    claim here of a partition numbered past it starts at its earliest offset."""
    members = [KeyCounter()]
    processors = Processors.checked(members)
    tables = state_tables(members)
    store = await open_store(tmp_path / "s.db", processors)
    try:
        first = position_record(42, None, StartedAt("latest", 40, 1))
        assert json.loads(first[1])["topic_partitions"] == 1
        await apply(store.database, T0, [(*first, 0)], tables)
        again = position_record(43, None, StartedAt("latest", 40, 5))
        await apply(store.database, T0, [(*again, 1)], tables)
        await store.claim(
            {T1: LogBounds(0, 100, start=Start("latest", 100, 2))},
            "me",
            "reset",
            processors.forget,
            topic_ids={},
            isolation_level="read_committed",
        )
    finally:
        await store.database.close()
        processors.close()
    assert query(tmp_path / "s.db", "SELECT topic, partitions FROM topic_starts") == [("t", 1)]
    rows = query(tmp_path / "s.db", "SELECT partition, start_from, start_offset FROM positions")
    assert rows == [(0, "latest", 40), (1, "earliest", 0)]


def counted(partition: int, key: str, count: int) -> tuple[bytes, bytes]:
    """A key_counts row of topic t as its owner's capture writes it."""
    return (
        b'["key_counts","t",%d,"%s"]' % (partition, key.encode()),
        b'{"topic":"t","partition":%d,"key":"%s","count":%d}' % (partition, key.encode(), count),
    )


# Records anyone who can write the changelog topic could write, each set aside with its reason.
CRAFTED: list[tuple[bytes, bytes | None, str]] = [
    (b'["latest","t",0,"k"]', b"{}", "table 'latest' is not a state table"),
    (b'["positions","t",0]', b'{"topic":"t","partition":0}', "table 'positions' is not a state"),
    (b"not json", None, "cannot read"),
    (b'["key_counts","t",0,"list"]', b"[1]", "not a JSON object"),
    (*counted(0, "nan", 1)[:1], b'{"topic":"t","partition":0,"key":"nan","count":NaN}', "NaN"),
    (
        counted(0, "huge", 1)[0],
        b'{"topic":"t","partition":0,"key":"huge","count":18446744073709551616}',
        "SQLite refused it",
    ),
    (
        counted(0, "nul", 1)[0],
        b'{"topic":"t","partition":0,"key":"nul","count":1,"c\\u0000":1}',
        "unknown: 'c\\x00'",
    ),
    (counted(0, "other", 1)[0], counted(0, "mine", 1)[1], "is not the key of its row"),
    (counted(0, "few", 1)[0], b'{"topic":"t","partition":0,"key":"few"}', "missing: count"),
    (b'["key_counts","t",0]', None, "its key has 2 values"),
    (
        b'["key_counts","t",0,"obj"]',
        b'{"topic":"t","partition":0,"key":"obj","count":{"hex":"ff"}}',
        "SQLite refused it",
    ),
    (*counted(1, "theirs", 5), "belongs to partition 1, not 0"),
    (
        b'["rejected_records","t",1,7]',
        b'{"topic":"t","partition":1,"offset":7,"key":null,"value":null,"error":"x","processor":null}',
        "belongs to partition 1, not 0",
    ),
    (
        b'["rejected_records","u",0,7]',
        b'{"topic":"u","partition":0,"offset":7,"key":null,"value":null,"error":"x","processor":null}',
        "belongs to topic 'u', not t",
    ),
    (b'["$position"]', b'{"next_offset":18446744073709551616}', "cannot read"),
    (*position_record(5), "position 5 goes back from 10"),
    (*position_record(1_000), "position 1000 lies past the end of t-0 (100)"),
]


async def test_records_that_are_not_valid_state_are_set_aside_and_the_rest_applied(
    tmp_path: Path,
) -> None:
    members = [KeyCounter()]
    tables = state_tables(members)
    processors = Processors.checked(members)
    store = await open_store(tmp_path / "s.db", processors)
    try:
        await apply(
            store.database, T0, [(*counted(0, "a", 10), 0), (*position_record(10), 1)], tables
        )
        records: list[Logged] = [(key, value, 2 + i) for i, (key, value, _) in enumerate(CRAFTED)]
        good = len(records) + 2
        records += [
            (*counted(0, "a", 11), good),
            (*counted(0, "b", 1), good + 1),
            (*position_record(12), good + 2),
        ]
        done = await apply(store.database, T0, records, tables, input_end=100)
    finally:
        await store.database.close()
        processors.close()
    assert [q.offset for q in done.quarantined] == list(range(2, 2 + len(CRAFTED)))
    for (key, _, reason), quarantined in zip(CRAFTED, done.quarantined, strict=True):
        assert reason in quarantined.reason, (key, quarantined.reason)
    assert (done.position, done.next_offset, done.rows) == (12, good + 3, 2)
    rows = query(tmp_path / "s.db", "SELECT partition, key, count FROM key_counts ORDER BY key")
    assert rows == [(0, "a", 11), (0, "b", 1)]
    assert query(tmp_path / "s.db", "SELECT count(*) FROM rejected_records") == [(0,)]
    positions = query(tmp_path / "s.db", "SELECT partition, next_offset FROM positions")
    assert positions == [(0, 12)]


# ---- capture on one connection ----------------------------------------------------------------


def capturing(path: Path, schema: str, tables: Sequence[StateTable]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(schema)
    install_capture(conn, tables)
    install_capture(conn, tables)  # idempotent
    return conn


def test_a_key_change_ships_the_old_keys_tombstone(tmp_path: Path) -> None:
    table = StateTable("items", ("id",))
    conn = capturing(tmp_path / "s.db", "CREATE TABLE items (id PRIMARY KEY, name);", [table])
    try:
        conn.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
        take_changes(conn)
        conn.execute("UPDATE items SET id = 3 WHERE id = 1")
        conn.execute("UPDATE items SET name = 'c' WHERE id = 2")  # no key change: no tombstone
        assert take_changes(conn) == [
            (b'["items",1]', None),
            (b'["items",3]', b'{"id":3,"name":"a"}'),
            (b'["items",2]', b'{"id":2,"name":"c"}'),
        ]
        assert take_changes(conn) == []
        # Changed twice in one batch: only the last value, ordered by the last change.
        conn.execute("UPDATE items SET name = 'x' WHERE id = 3")
        conn.execute("UPDATE items SET name = 'y' WHERE id = 2")
        conn.execute("DELETE FROM items WHERE id = 3")
        assert take_changes(conn) == [
            (b'["items",2]', b'{"id":2,"name":"y"}'),
            (b'["items",3]', None),
        ]
    finally:
        conn.close()


@pytest.mark.parametrize(
    "value",
    [None, b"", b"\xff\x00\xfe", "", "é☃𝄞", "a\x00b", 0, -(2**63), 2**63 - 1, 1.5, -0.25, 1e300],
)
def test_odd_values_and_keys_round_trip(tmp_path: Path, value: Any) -> None:
    table = StateTable("odd", ("k",))
    conn = capturing(tmp_path / "s.db", "CREATE TABLE odd (k UNIQUE, v);", [table])
    try:
        conn.execute("INSERT INTO odd VALUES (?, ?)", (value, value))
        ((key, row),) = take_changes(conn)
        change = decode(key, row)
        assert change == RowChange("odd", (value,), {"k": value, "v": value})
        assert type(change.key[0]) is type(value)
        assert row is not None
        assert json.loads(row) == json.loads(row.decode("utf-8"))  # UTF-8 JSON
    finally:
        conn.close()


def test_records_decode() -> None:
    assert position_record(12) == (POSITION_KEY, b'{"next_offset":12}')
    assert decode(*position_record(12)) == PositionChange(12)
    assert decode(b'["t",{"$blob":"ff00"}]', None) == RowChange("t", (b"\xff\x00",), None)
    for key, value in [
        (b'["$position"]', None),
        (b'["$position"]', b'{"next_offset":"1"}'),
        (b'["t"]', None),
        (b"[]", None),
        (b'{"t":1}', None),
        (b'["t",{"$blob":"zz"}]', None),
        (b'["t",{"$blob":"ff","x":1}]', None),
        (b'["t",1]', b'{"a":{"$blob":"ff"},"b":[1]}'),
        (b'["t",1]', b"[1]"),
        (b"\xff", None),
    ]:
        with pytest.raises(ProcessorError, match="cannot read"):
            decode(key, value)


def test_row_checks_of_a_table_keyed_by_one_column() -> None:
    check = RowCheck("notes", ("id",), ["id", "body"], "t", 0)
    assert check.problem(RowChange("notes", (1,), {"id": 1, "body": "x"})) is None
    assert check.problem(RowChange("notes", (1,), None)) is None
    assert "not the key of its row" in (
        check.problem(RowChange("notes", (2,), {"id": 1, "body": "x"})) or ""
    )
    # A column named partition outside the key is the table's own business.
    loose = RowCheck("notes", ("id",), ["id", "partition"], "t", 0)
    assert loose.problem(RowChange("notes", (1,), {"id": 1, "partition": 5})) is None


def test_no_capture_without_changelog_mode(tmp_path: Path) -> None:
    """The single-host path: a connection on which capture was not installed has no TEMP
    object at all, so its statements run exactly as before."""
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        conn.execute("CREATE TABLE items (id PRIMARY KEY)")
        conn.execute("INSERT INTO items VALUES (1)")
        assert conn.execute("SELECT count(*) FROM sqlite_temp_master").fetchone() == (0,)
    finally:
        conn.close()


# ---- which tables, and their keys --------------------------------------------------------------


def test_the_built_ins_and_a_sql_file_declare_their_keys(tmp_path: Path) -> None:
    (tmp_path / "derived.sql").write_text(DERIVED)
    tables = state_tables(
        [
            KeyCounter(),
            Latest(),
            WindowedCounts(MINUTE, MINUTE),
            SqlFileProcessor.load(EXAMPLE),
            SqlFileProcessor.load(tmp_path / "derived.sql"),
        ]
    )
    assert [(t.name, t.key) for t in tables] == [
        ("rejected_records", ("topic", "partition", "offset")),
        ("key_counts", ("topic", "partition", "key")),
        ("latest", ("topic", "partition", "key")),
        ("windowed_key_counts", ("topic", "partition", "key", "window_start_ms", "window_end_ms")),
        ("window_clocks", ("topic", "partition")),
        ("customer_amounts", ("topic", "partition", "customer")),
        ("seen", ("topic", "partition", "key")),
        ("seen_totals", ("topic", "partition")),
    ]


async def test_a_row_is_found_by_key_through_an_index(tmp_path: Path) -> None:
    """Deleting by key on a standby costs a lookup, never a scan of the table."""
    members: list[Processor] = [KeyCounter(), Latest(), WindowedCounts(MINUTE, MINUTE)]
    processors = Processors.checked(members)
    store = await open_store(tmp_path / "s.db", processors)
    await store.database.close()
    processors.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        for table in state_tables(members):
            plan = conn.execute(
                f"EXPLAIN QUERY PLAN {delete_by_key(table)}", (None,) * len(table.key)
            ).fetchall()
            details = " ".join(row[-1] for row in plan)
            assert details.startswith("SEARCH"), (table.name, details)
    conn.close()


class Undeclared:
    name = "undeclared"
    migrations: Sequence[Migration] = (Migration("0001_t", "CREATE TABLE t (a PRIMARY KEY);"),)

    def statements(self, tp: TopicPartition, records: Records) -> Sequence[Statement]:
        return []

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        return []


class Declared(Undeclared):
    name = "declared"

    def __init__(self, tables: dict[str, Sequence[str]], matches: dict[str, str]) -> None:
        self.changelog_tables = tables
        self.changelog_matches = matches


class Wide(Undeclared):
    name = "wide"
    columns = ", ".join(f"c{n}" for n in range(64))
    migrations = (Migration("0001_wide", f"CREATE TABLE wide ({columns}, PRIMARY KEY (c0));"),)
    changelog_tables: Mapping[str, Sequence[str]] = {"wide": ("c0",)}


@pytest.mark.parametrize(
    ("processor", "reason"),
    [
        (Undeclared(), "processor undeclared does not say which columns key the rows"),
        (Declared({"nope": ("a",)}, {}), "table nope does not exist"),
        (Declared({"t": ("b",)}, {}), "must name its columns"),
        (Declared({"t": ()}, {}), "must name its columns"),
        (Declared({"t": ("a", "a")}, {}), "must name its columns"),
        (Declared({"t": ("a",)}, {"t": "b = ?1"}), "does not compile"),
        (Declared({"t": ("a",)}, {"u": "a = ?1"}), "names u, which is not"),
        (Declared({"key_counts": ("topic", "partition", "key")}, {}), "declared as state by two"),
        (Wide(), "table wide has 64 columns"),
    ],
)
def test_what_cannot_be_keyed_is_refused(processor: Processor, reason: str) -> None:
    with pytest.raises(ProcessorError, match=reason):
        state_tables([KeyCounter(), processor])


@pytest.mark.parametrize(
    "schema",
    [
        "CREATE TABLE notes (topic TEXT, partition INTEGER, body TEXT);",
        # Neither a partial nor an expression index identifies a row by its columns.
        "CREATE TABLE notes (topic, body);\n"
        "CREATE UNIQUE INDEX notes_body ON notes (body) WHERE body IS NOT NULL;\n"
        "CREATE UNIQUE INDEX notes_lower ON notes (lower(body));",
    ],
)
def test_a_sql_table_without_a_key_is_refused(tmp_path: Path, schema: str) -> None:
    path = tmp_path / "notes.sql"
    path.write_text(
        f"-- sqlstate: schema\n{schema}\n-- sqlstate: record\n"
        "INSERT INTO notes (topic, body) VALUES (:topic, :value);\n"
        "-- sqlstate: forget\nDELETE FROM notes WHERE topic = :topic;\n"
    )
    with pytest.raises(ProcessorError, match=r"table notes has no PRIMARY KEY.*add a PRIMARY KEY"):
        state_tables([SqlFileProcessor.load(path)])


def test_a_sql_table_keyed_by_a_unique_constraint_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "notes.sql"
    path.write_text(
        "-- sqlstate: schema\n"
        "CREATE TABLE notes (topic TEXT, partition INTEGER, body TEXT, n,"
        " UNIQUE (topic, partition, body));\n-- sqlstate: record\n"
        "INSERT INTO notes (topic, partition, body) VALUES (:topic, :partition, :value);\n"
        "-- sqlstate: forget\nDELETE FROM notes WHERE topic = :topic;\n"
    )
    assert state_tables([SqlFileProcessor.load(path)])[-1] == StateTable(
        "notes", ("topic", "partition", "body")
    )


@pytest.mark.parametrize("first", [True, False])
async def test_the_state_keeps_the_mode_it_was_made_in(tmp_path: Path, first: bool) -> None:
    """State made with --changelog is refused without it, and the other way round: either way
    a changelog would no longer hold every change of the state. A file without positions takes
    either mode."""
    members = [KeyCounter()]
    processors = Processors.checked(members)
    store = await open_store(tmp_path / "s.db", processors)
    try:
        await store.check_changelog(not first)  # nothing claimed yet: either is fine

        def no_kafka(
            changes: Mapping[TopicPartition, Change],
        ) -> dict[TopicPartition, int | ChangelogError]:
            return dict.fromkeys(changes, 0)

        in_mode = Store(store.database, CapturedChangelog(no_kafka) if first else None)
        await in_mode.claim(
            {T0: LogBounds(0, 10)},
            "me",
            "reset",
            processors.forget,
            topic_ids={},
            isolation_level="read_committed",
        )
        await store.check_changelog(first)
        with pytest.raises(ChangelogModeError, match="--changelog"):
            await store.check_changelog(not first)
        other_mode = Store(store.database, None if first else CapturedChangelog(no_kafka))
        with pytest.raises(ChangelogModeError):
            await other_mode.claim(
                {T0: LogBounds(0, 10)},
                "me",
                "reset",
                processors.forget,
                topic_ids={},
                isolation_level="read_committed",
            )
    finally:
        await store.database.close()
        processors.close()
