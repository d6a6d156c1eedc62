"""--on-processor-error on a real SQLite file: records a processor fails on (in SQL or in Python)
dead-lettered in their batch's transaction while the rest commits, the limit on records rejected
in a row, and failures that are never a record's."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from sqlstate.app.batch_loop import partition_batch
from sqlstate.app.processor_errors import ProcessorErrors
from sqlstate.errors import DatabaseError, RejectionLimitError
from sqlstate.kafka.decoding import BadRecords, Decoding
from sqlstate.observe.stats import Stats
from sqlstate.processors import Migration, Processor, Records, Statement
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.registry import Processors
from sqlstate.processors.sql_file import SqlFileProcessor
from sqlstate.settings import Settings
from sqlstate.state.model import Claim, Committed, PartitionBatch
from sqlstate.state.out_of_range import LogBounds
from sqlstate.state.rejections import record_fault
from sqlstate.state.store import Store
from tests.support.db import query
from tests.support.processing import open_store, record
from tests.unit.test_changelog_rows import T0, Changelog, Owner, assert_same_state, follow

TP = TopicPartition("orders", 0)

AMOUNTS = """\
-- sqlstate: schema
CREATE TABLE amounts (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    amount INTEGER NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (topic, partition, offset)
) STRICT;
-- sqlstate: record
INSERT INTO amounts (topic, partition, offset, amount)
VALUES (:topic, :partition, :offset, json_extract(:value, '$.amount'));
-- sqlstate: forget
DELETE FROM amounts WHERE topic = :topic AND partition = :partition;
"""


class Picky:
    """A Python processor that raises on a value of "boom", and keeps the others' offsets."""

    name = "picky"
    migrations = (Migration("0001_seen", "CREATE TABLE seen (offset INTEGER PRIMARY KEY);"),)

    def statements(self, tp: TopicPartition, records: Records) -> Sequence[Statement]:
        if any(r.value == "boom" for r in records):
            raise ValueError("boom is not an order")
        return [Statement("INSERT INTO seen (offset) VALUES (?)", [(r.offset,) for r in records])]

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        return []


@dataclass
class Daemon:
    """What the batch loop uses of the processors and the store, without Kafka."""

    store: Store
    processors: Processors
    errors: ProcessorErrors
    stats: Stats
    path: Path
    claim: Claim

    async def commit(self, values: Sequence[str]) -> Committed:
        """Commit one batch of ``values`` at the partition's position, as the batch loop does."""
        start = self.claim.next_offset
        records = [record(TP, start + i, b"k", v) for i, v in enumerate(values)]
        part = batch_of(self.claim, records, self.processors, self.errors)
        (outcome,) = await self.errors.commit(self.store, [part])
        assert isinstance(outcome, Committed)
        self.claim = outcome.claim
        return outcome

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        return query(self.path, sql)


@pytest.fixture
async def daemon(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Daemon]:
    options = getattr(request, "param", {})
    (tmp_path / "amounts.sql").write_text(AMOUNTS)
    processors = Processors.checked(
        [KeyCounter(), SqlFileProcessor.load(tmp_path / "amounts.sql"), Picky()]
    )
    settings = Settings(
        topics=("orders",),
        group_id="g",
        on_processor_error=options.get("policy", "dead-letter"),
        max_rejected_in_a_row=options.get("limit", 100),
    )
    path = tmp_path / "s.db"
    store = await open_store(path, processors)
    stats = Stats()
    try:
        claimed = await store.claim(
            {TP: LogBounds(0, 1_000)},
            "test",
            "reset",
            processors.forget,
            topic_ids={},
            isolation_level="read_committed",
        )
        errors = ProcessorErrors(processors, settings, stats)
        yield Daemon(store, processors, errors, stats, path, claimed.claims[TP])
    finally:
        await store.database.close()
        processors.close()


def batch_of(
    claim: Claim, records: Records, processors: Processors, errors: ProcessorErrors
) -> PartitionBatch:
    """One partition's share of a batch, made as the batch loop makes it."""
    tp = TopicPartition(records[0].topic, records[0].partition)
    nothing_bad = BadRecords(Decoding("bytes", "bytes"), "fail")
    return partition_batch(
        tp, claim, records, records[-1].offset + 1, None, processors, nothing_bad, 0, errors
    )


def amount(cents: object) -> str:
    return json.dumps({"amount": cents})


async def test_records_that_fail_in_sql_or_python_are_dead_lettered_and_the_rest_commits(
    daemon: Daemon,
) -> None:
    values = [amount(1), amount(2), amount(-3), amount(4), "boom", "not json", amount("x")]
    values += [amount(8)]
    outcome = await daemon.commit(values)

    assert outcome.records == 4
    assert daemon.rows("SELECT offset, amount FROM amounts ORDER BY 1") == [
        (0, 1),
        (1, 2),
        (3, 4),
        (7, 8),
    ]
    # Every processor's state leaves a rejected record out, counts and the Python one too.
    assert daemon.rows("SELECT offset FROM seen ORDER BY 1") == [(0,), (1,), (3,), (7,)]
    assert daemon.rows("SELECT count FROM counts") == [(4,)]
    rejected = daemon.rows(
        "SELECT offset, key, value, processor, error FROM rejected_records ORDER BY offset"
    )
    assert [(offset, key, processor) for offset, key, _, processor, _ in rejected] == [
        (2, "k", "amounts"),
        (4, "k", "picky"),
        (5, "k", "amounts"),
        (6, "k", "amounts"),
    ]
    errors = [str(error) for *_, error in rejected]
    assert "CHECK constraint failed" in errors[0]
    assert errors[1] == "ValueError: boom is not an order"
    assert "malformed JSON" in errors[2]
    assert "cannot store TEXT value in INTEGER column" in errors[3]
    assert rejected[1][2] == "boom"
    # The position moved over all of them, in the same transaction.
    assert daemon.rows("SELECT next_offset FROM positions") == [(8,)]
    assert daemon.stats.rejected_records == {"amounts": 3, "picky": 1}

    # The next batch is whole again, and fast: nothing fails in it.
    outcome = await daemon.commit([amount(9), amount(10)])
    assert (outcome.records, outcome.rejected) == (2, [])
    assert daemon.rows("SELECT count FROM counts") == [(6,)]


@pytest.mark.parametrize("seed", range(4))
async def test_any_mix_of_failing_records_is_found_record_by_record(
    daemon: Daemon, seed: int
) -> None:
    """Pieces of several records that fail are cut again, in SQL and in Python alike: whatever
    fails where, each record is applied once, by every processor, or rejected once."""
    rng = random.Random(seed)
    values = [rng.choice([amount(1), amount(1), amount(1), amount(-1), "boom"]) for _ in range(60)]
    values[0], values[-1] = amount(-1), "boom"  # at both ends of the batch, too
    outcome = await daemon.commit(values)
    good = [offset for offset, value in enumerate(values) if value == amount(1)]
    assert outcome.records == len(good)
    assert [r.offset for r in outcome.rejected] == [
        offset for offset in range(60) if offset not in good
    ]
    assert daemon.rows("SELECT offset FROM amounts ORDER BY 1") == [(o,) for o in good]
    assert daemon.rows("SELECT offset FROM seen ORDER BY 1") == [(o,) for o in good]
    assert daemon.rows("SELECT count FROM counts") == [(len(good),)]
    processors = {o: p for o, p in daemon.rows("SELECT offset, processor FROM rejected_records")}
    assert processors == {
        offset: "picky" if value == "boom" else "amounts"
        for offset, value in enumerate(values)
        if offset not in good
    }


@pytest.mark.parametrize("daemon", [{"limit": 2}], indirect=True)
async def test_more_records_rejected_in_a_row_than_the_limit_stop_before_the_batch_commits(
    daemon: Daemon,
) -> None:
    await daemon.commit([amount(1), amount(-1), amount(-2)])  # two in a row: the limit
    with pytest.raises(RejectionLimitError, match=r"3 records in a row .* orders-0 offset 3"):
        await daemon.commit([amount(-3), amount(4)])
    assert daemon.rows("SELECT next_offset FROM positions") == [(3,)]
    assert daemon.rows("SELECT offset FROM rejected_records ORDER BY 1") == [(1,), (2,)]

    # One record applied ends the run: two more rejected in a row are within the limit again.
    daemon.errors = ProcessorErrors(
        daemon.processors,
        Settings(topics=("orders",), group_id="g", on_processor_error="dead-letter"),
        daemon.stats,
    )
    outcome = await daemon.commit([amount(5), amount(-6), amount(-7)])
    assert (outcome.records, outcome.rejected_at_end) == (1, 2)


@pytest.mark.parametrize("daemon", [{"policy": "fail"}], indirect=True)
async def test_under_fail_a_failing_record_commits_nothing(daemon: Daemon) -> None:
    with pytest.raises(DatabaseError, match="CHECK constraint failed"):
        await daemon.commit([amount(1), amount(-1)])
    assert daemon.rows("SELECT next_offset FROM positions") == [(0,)]
    assert daemon.rows("SELECT count(*) FROM amounts") == [(0,)]


async def test_a_full_database_is_never_the_records_fault(daemon: Daemon) -> None:
    await daemon.commit([amount(1)])
    page_count = daemon.rows("PRAGMA page_count")[0][0]
    await daemon.store.database.setting(
        lambda conn: conn.execute(f"PRAGMA max_page_count = {page_count}")
    )
    with pytest.raises(DatabaseError, match="full"):
        await daemon.commit([amount(i) for i in range(5_000)])
    assert daemon.rows("SELECT count(*) FROM rejected_records") == [(0,)]
    assert daemon.rows("SELECT next_offset FROM positions") == [(1,)]


def test_which_errors_a_record_can_cause() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY, y INTEGER NOT NULL) STRICT")
        caught = []
        for statement, parameters in [
            ("INSERT INTO t VALUES (1, NULL)", ()),
            ("INSERT INTO t VALUES (1, ?)", ("a",)),
            ("SELECT json_extract(?, '$.a')", ("{",)),
            ("INSERT INTO t VALUES (2, ?)", ({},)),
            ("INSERT INTO t VALUES (2, ?)", (2**70,)),
        ]:
            with pytest.raises((sqlite3.Error, OverflowError)) as error:
                conn.execute(statement, parameters)
            caught.append(record_fault(error.value))
        assert caught == [True] * 5

        conn.execute("PRAGMA max_page_count = 1")
        with pytest.raises(sqlite3.Error) as full:
            conn.execute("CREATE TABLE u (x)")
    finally:
        conn.close()
    assert not record_fault(full.value)
    with pytest.raises(sqlite3.ProgrammingError) as closed:
        conn.execute("SELECT 1")
    assert not record_fault(closed.value)
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
    assert not record_fault(busy)
    assert not record_fault(ValueError("not SQLite's"))


async def test_under_changelog_only_what_committed_is_captured_and_the_standby_has_it_all(
    tmp_path: Path,
) -> None:
    """A record rolled back to its savepoint leaves nothing in the capture; its dead letter
    reaches the standby as any other row does."""
    (tmp_path / "amounts.sql").write_text(AMOUNTS)
    members: list[Processor] = [KeyCounter(), SqlFileProcessor.load(tmp_path / "amounts.sql")]
    changelog = Changelog()
    settings = Settings(topics=("orders",), group_id="g", on_processor_error="dead-letter")
    async with Owner(tmp_path / "owner.db", members, changelog) as owner:
        await owner.claim([T0])
        errors = ProcessorErrors(owner.processors, settings, Stats())
        for start in (0, 6):
            values = [amount(-1 if offset in (2, 3) else offset) for offset in range(6)]
            records = [record(T0, start + i, b"k", v) for i, v in enumerate(values)]
            part = batch_of(owner.claims[T0], records, owner.processors, errors)
            (outcome,) = await errors.commit(owner.store, [part])
            assert isinstance(outcome, Committed)
            owner.claims[T0] = outcome.claim
            await owner.publish(T0, outcome.claim.next_offset)
    await follow(tmp_path / "standby.db", members, changelog)
    assert_same_state(tmp_path / "owner.db", tmp_path / "standby.db", members)
    standby = tmp_path / "standby.db"
    assert query(standby, "SELECT offset, processor FROM rejected_records ORDER BY 1") == [
        (2, "amounts"),
        (3, "amounts"),
        (8, "amounts"),
        (9, "amounts"),
    ]
    assert query(standby, "SELECT count FROM counts") == [(8,)]
