"""The processor API on a real SQLite file: loading, the guard, processors' own migrations, the
recorded set of processors per topic, and a database made by the release before processors."""

from __future__ import annotations

import importlib
import shutil
import sqlite3
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from examples.order_totals import OrderTotals
from sqlstate.errors import ConfigError, ProcessorError, SchemaTooNewError
from sqlstate.processors import Migration, Processor, Records, Statement
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.latest import Latest
from sqlstate.processors.registry import Processors, from_settings, load
from sqlstate.processors.windowed_counts import WindowedCounts
from sqlstate.settings import Settings
from sqlstate.state import migrate
from sqlstate.state.database import Database
from sqlstate.state.model import Claim, Committed, PartitionBatch
from sqlstate.state.out_of_range import LogBounds
from sqlstate.state.store import Store
from tests.support.db import query
from tests.support.processing import fold, order, record

TP = TopicPartition("orders", 0)
# Made by `sqlstate run` of the release before processors (commit c66a03f), counting topic
# "orders" (3 partitions, 100 records each, odd keys among them), then stopped with SIGTERM.
RELEASE_DATABASE = Path(__file__).parents[1] / "fixtures" / "release-0.1.0.db"


def settings(*processors: str, **options: object) -> Settings:
    return Settings(topics=("t",), group_id="g", processors=processors, **options)  # type: ignore[arg-type]


class Writer:
    """A processor whose statement and migration are whatever a test gives it."""

    def __init__(self, statement: str, migration: str = "CREATE TABLE mine (x);", name: str = "w"):
        self.name = name
        self.migrations: Sequence[Migration] = (Migration("0001_mine", migration),)
        self._statement = statement

    def statements(self, tp: TopicPartition, records: Records) -> Sequence[Statement]:
        return [Statement(self._statement, [(1,)])]

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        return []


def test_built_ins_load_by_short_name_and_counts_is_the_default() -> None:
    assert [p.name for p in from_settings(settings())] == ["counts"]
    loaded = from_settings(settings("latest", "windowed-counts", "counts", window="5m"))
    assert [type(p) for p in loaded] == [Latest, WindowedCounts, KeyCounter]
    assert isinstance(loaded[1], WindowedCounts)
    assert loaded[1].window_ms == 300_000
    assert all(isinstance(p, Processor) for p in loaded)


def test_a_processor_of_your_own_loads_by_import_path() -> None:
    (processor,) = from_settings(settings("examples.order_totals:OrderTotals"))
    assert isinstance(processor, OrderTotals)


def test_the_current_directory_is_searched_for_the_processor_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left first on sys.path, the current directory would shadow every module imported later
    in the run: a file there named like one would be run in its place."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "processor_in_cwd.py").write_text(
        textwrap.dedent(
            """
            from sqlstate.processors import Migration

            class Mine:
                name = "mine"
                migrations = (Migration("0001_mine", "CREATE TABLE mine (x);"),)

                def statements(self, tp, records):
                    return []

                def forget(self, tp):
                    return []
            """
        )
    )
    (tmp_path / "imported_later.py").write_text("RAN = True\n")
    for name in ("processor_in_cwd", "imported_later"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    before = list(sys.path)

    processor = load("processor_in_cwd:Mine", settings())
    assert processor.name == "mine"
    assert sys.path == before
    assert "processor_in_cwd" in sys.modules  # imported once, and stays so
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("imported_later")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonsense", "name a built-in"),
        ("no.such.module:X", "cannot import no.such.module"),
        ("examples.order_totals:Nope", "has no Nope"),
        ("examples.order_totals:__doc__", "is not a processor"),
        ("examples.order_totals:json", "is not a processor"),
    ],
)
def test_a_processor_that_cannot_load_is_refused(spec: str, message: str) -> None:
    with pytest.raises(ProcessorError, match=message):
        load(spec, settings())


def test_processor_names_and_migration_names_are_checked() -> None:
    from sqlstate.processors.registry import checked

    with pytest.raises(ProcessorError, match="processor name 'Bad Name'"):
        checked(Writer("SELECT 1", name="Bad Name"), "test")
    bad_migration = Writer("SELECT 1")
    bad_migration.migrations = (Migration("first", "CREATE TABLE x (a);"),)
    with pytest.raises(ProcessorError, match="is not NNNN_what"):
        checked(bad_migration, "test")
    with pytest.raises(ConfigError, match="given twice"):
        Settings(topics=("t",), group_id="g", processors=("latest", "latest"))


@pytest.mark.parametrize(
    ("statement", "migration", "reason"),
    [
        (
            "UPDATE positions SET epoch = ?",
            "CREATE TABLE mine (x);",
            "update positions, sqlstate's",
        ),
        (
            "DELETE FROM key_counts WHERE count = ?",
            "CREATE TABLE mine (x);",
            "sqlstate's own table",
        ),
        ("INSERT INTO latest (topic) VALUES (?)", "CREATE TABLE mine (x);", "processor latest"),
        (
            "INSERT INTO mine VALUES (?); COMMIT",
            "CREATE TABLE mine (x);",
            "one statement at a time",
        ),
        ("SAVEPOINT s", "CREATE TABLE mine (x);", "savepoint"),
        ("INSERT INTO mine VALUES (random() + ?)", "CREATE TABLE mine (x);", "not repeatable"),
        ("CREATE TABLE other (x)", "CREATE TABLE mine (x);", "schema changes belong"),
        (
            "INSERT INTO mine VALUES (?)",
            "CREATE TABLE mine (x); CREATE TRIGGER t AFTER INSERT ON mine"
            " BEGIN DELETE FROM positions; END;",
            "delete from positions",
        ),
    ],
)
def test_the_guard_refuses_what_a_processor_may_not_do(
    statement: str, migration: str, reason: str
) -> None:
    processors = Processors.checked([Latest(), Writer(statement, migration)])
    try:
        with pytest.raises(ProcessorError, match=reason):
            processors.statements(TP, [record(TP, 0, b"k")])
    finally:
        processors.close()


@pytest.mark.parametrize(
    ("migration", "reason"),
    [
        ("CREATE INDEX mine ON key_counts (count);", "create an index on key_counts"),
        ("DROP VIEW counts;", "drop view counts"),
        ("ALTER TABLE positions ADD COLUMN x;", "alter positions"),
        ("CREATE TRIGGER t AFTER INSERT ON positions BEGIN SELECT 1; END;", "trigger on positions"),
        ("CREATE TEMP TABLE scratch (x);", "temporary table"),
        ("PRAGMA journal_mode = DELETE;", "PRAGMA"),
        ("CREATE TABLE latest (x);", "already exists"),
    ],
)
def test_the_guard_refuses_migrations_that_touch_what_is_not_theirs(
    migration: str, reason: str
) -> None:
    with pytest.raises(ProcessorError, match=reason):
        Processors.checked([Latest(), Writer("SELECT ?", migration)])


async def test_processor_migrations_are_applied_once_and_recorded_in_their_namespace(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    members: list[Processor] = [Latest(), OrderTotals()]
    for _ in range(2):
        database = await Database.open(path, busy_timeout_s=5.0)
        try:
            await migrate.apply_pending(database)
            applied = await migrate.apply_processor_migrations(database, members)
            statuses = await migrate.list_status(database)
            version = await migrate.schema_version(database)
        finally:
            await database.close()
        if _ == 0:
            assert applied == ["latest/0001_latest", "order-totals/0001_order_totals"]
        else:
            assert applied == []
    assert [s.name for s in statuses if s.applied_at] == [
        *(m.name for m in migrate.available()),
        "latest/0001_latest",
        "order-totals/0001_order_totals",
    ]
    assert version == migrate.available()[-1].name.removesuffix(".sql")
    tables = {name for (name,) in query(path, "SELECT name FROM sqlite_master")}
    assert {"latest", "order_totals", "customer_totals"} <= tables


async def test_a_processor_migration_this_code_does_not_have_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    database = await Database.open(path, busy_timeout_s=5.0)
    try:
        await migrate.apply_pending(database)
        await migrate.apply_processor_migrations(database, [Latest()])
        newer = Latest()
        newer.migrations = [*newer.migrations, Migration("0002_more", "CREATE TABLE more (x);")]
        await migrate.apply_processor_migrations(database, [newer])
        with pytest.raises(SchemaTooNewError, match="latest/0002_more of processor latest"):
            await migrate.apply_processor_migrations(database, [Latest()])
        # sqlstate's own check is not disturbed by the processors' records.
        await migrate.apply_pending(database)
    finally:
        await database.close()


async def test_the_processors_of_a_topic_with_positions_cannot_change(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await _store(path)
    try:
        # Checking writes nothing; no positions yet: the set may change freely.
        await store.check_processors(["a", "b"], ["counts"])
        assert query(path, "SELECT * FROM topic_processors") == []
        await store.record_processors(["a", "b"], ["counts"])
        await store.record_processors(["a", "b"], ["latest", "counts"])
        await store.claim(
            {TopicPartition("a", 0): LogBounds(0, 10)},
            "me",
            "reset",
            _none,
            topic_ids={},
            isolation_level="read_committed",
        )
        await store.record_processors(["a", "b"], ["counts", "latest"])
        for other in (["counts"], ["counts", "latest", "windowed-counts"]):
            with pytest.raises(ProcessorError, match=r"topic a .* counts, latest, and this run"):
                await store.check_processors(["a"], other)
            with pytest.raises(ProcessorError, match=r"topic a .* counts, latest, and this run"):
                await store.record_processors(["a"], other)
        await store.record_processors(["b"], ["windowed-counts"])
    finally:
        await store.database.close()
    assert query(path, "SELECT topic, processor FROM topic_processors ORDER BY 1, 2") == [
        ("a", "counts"),
        ("a", "latest"),
        ("b", "windowed-counts"),
    ]


async def test_a_database_of_the_release_before_processors_keeps_counting(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    shutil.copyfile(RELEASE_DATABASE, path)
    before_counts = query(
        path, "SELECT topic, partition, key, count FROM key_counts ORDER BY 1, 2, 3"
    )
    before_positions = query(path, "SELECT topic, partition, next_offset FROM positions")
    assert sum(row[3] for row in before_counts) == 300
    store = await _store(path)
    try:
        # Counted by that release: its processors are the counts, and nothing else is accepted.
        with pytest.raises(ProcessorError, match="kept by processors counts"):
            await store.record_processors(["orders"], ["counts", "latest"])
        await store.record_processors(["orders"], ["counts"])
        bounds = {TopicPartition("orders", p): LogBounds(0, 200) for p in range(3)}
        counter = Processors([KeyCounter()])
        claims = (
            await store.claim(
                bounds,
                "new",
                "reset",
                counter.forget,
                topic_ids={},
                isolation_level="read_committed",
            )
        ).claims
        assert {tp.partition: claim.next_offset for tp, claim in claims.items()} == {
            0: 100,
            1: 100,
            2: 100,
        }
        records = [record(TP, 100 + i, b"user-1") for i in range(5)]
        (outcome,) = await store.commit_batch(
            [PartitionBatch(TP, claims[TP], 105, None, 5, counter.statements(TP, records))]
        )
        assert outcome == Committed(TP, Claim(105, claims[TP].epoch), 5)
    finally:
        await store.database.close()
    after = query(path, "SELECT topic, partition, key, count FROM key_counts ORDER BY 1, 2, 3")
    grown = [(t, p, k, c + 5 if (p, k) == (0, "user-1") else c) for t, p, k, c in before_counts]
    assert after == grown
    assert query(path, "SELECT * FROM topic_processors")[0][:2] == ("orders", "counts")
    assert sorted(query(path, "SELECT topic, partition, next_offset FROM positions")) == sorted(
        [(t, p, 105 if p == 0 else n) for t, p, n in before_positions]
    )
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
    conn.close()


def test_a_processor_that_raises_is_reported_by_name() -> None:
    processors = Processors([OrderTotals()])
    with pytest.raises(ProcessorError, match=r"order-totals failed on orders-0 offsets 3-4: JSON"):
        processors.statements(TP, [record(TP, 3, b"k", "{}"), record(TP, 4, b"k", "not json")])


async def test_processor_counters_come_back_with_the_commit(tmp_path: Path) -> None:
    windowed = WindowedCounts(window_ms=1_000, retention_ms=10_000)
    times = [50_000, 100, 60_000, 200]
    batch = [record(TP, i, b"k", order("c", 1), t) for i, t in enumerate(times)]
    counters = await fold(tmp_path / "s.db", [windowed, OrderTotals()], [batch])
    # 100 is too old once 50,000 was seen; 200 once 60,000 was.
    assert counters == {"windowed-counts:too_old": 2}


async def test_the_example_processor_totals_orders(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    values = [order("c-1", 100), order("c-2", 5), "[1]", None, order("c-1", 20), '{"customer": 1}']
    batches = [
        [record(TP, i, b"k", value) for i, value in enumerate(values[:3])],
        [record(TP, i + 3, b"k", value) for i, value in enumerate(values[3:])],
    ]
    await fold(path, [OrderTotals()], batches)
    assert query(path, "SELECT * FROM customer_totals ORDER BY 1") == [
        ("c-1", 2, 120),
        ("c-2", 1, 5),
    ]


async def _store(path: Path) -> Store:
    database = await Database.open(path, busy_timeout_s=5.0)
    await migrate.apply_pending(database)
    return Store(database)


def _none(tp: TopicPartition) -> Sequence[Statement]:
    return []
