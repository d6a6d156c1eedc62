"""What keeps a rebuild's state made by one set of processors, without Kafka: which rebuilds may
carry the live file's state over (``state/carry.py``: the definitions recorded per processor and
topic, the decision, the copy pruned to the new set); a work file made by other definitions
starting over; a file handed over from the input refusing another host's seed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sqlstate.app.processor_definitions import definitions
from sqlstate.app.rebuild_steps import work_store
from sqlstate.changelog.records import position_record
from sqlstate.changelog.seed import own_seed, seed_applied
from sqlstate.errors import ChangelogLostError
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.latest import Latest
from sqlstate.processors.registry import Processors
from sqlstate.processors.windowed_counts import WindowedCounts
from sqlstate.settings import Settings
from sqlstate.state import carry, recorded
from sqlstate.state.database import utc_now
from tests.support.db import query
from tests.unit.test_handover import filled
from tests.unit.test_store import TP

SETTINGS = Settings(topics=(TP.topic,), group_id="g")


def test_a_definition_is_the_processor_its_parameters_and_the_formats() -> None:
    first = definitions([KeyCounter(), WindowedCounts(60_000, 3_600_000)], SETTINGS)
    assert first == definitions([KeyCounter(), WindowedCounts(60_000, 3_600_000)], SETTINGS)
    assert (
        first["windowed-counts"]
        != definitions([WindowedCounts(1_000, 3_600_000)], SETTINGS)["windowed-counts"]
    )
    as_json = Settings(topics=(TP.topic,), group_id="g", value_format="json")
    assert first["counts"] != definitions([KeyCounter()], as_json)["counts"]


async def test_only_a_removal_with_the_same_definitions_is_carried(tmp_path: Path) -> None:
    live = tmp_path / "live.db"
    store = await filled(live, ["counts", "latest"], [b"a", b"b"])
    both = definitions([KeyCounter(), Latest()], SETTINGS)
    try:
        # Counted before definitions were recorded: not known, never carried.
        await store.record_definitions([TP.topic], both)
        assert query(live, "SELECT definition FROM processor_definitions") == [(None,), (None,)]
    finally:
        await store.database.close()
    with sqlite3.connect(live) as conn:
        conn.execute("DELETE FROM processor_definitions")
        for name, definition in both.items():
            conn.execute(
                "INSERT INTO processor_definitions VALUES (?, ?, ?, ?)",
                (TP.topic, name, definition, utc_now()),
            )
        counts = definitions([KeyCounter()], SETTINGS)
        assert carry.removed_if_carried(conn, [TP.topic], counts) == ["latest"]
        assert carry.removed_if_carried(conn, [TP.topic], both) == []
        # Added, or changed: every record must be folded again.
        windowed = definitions([WindowedCounts(60_000, 3_600_000)], SETTINGS)
        assert carry.removed_if_carried(conn, [TP.topic], {**counts, **windowed}) is None
        assert carry.removed_if_carried(conn, [TP.topic], {"counts": "other"}) is None
        # Another definition run on the same state since: not known any more.
        recorded.record_definitions(conn, [TP.topic], {"counts": "other"}, utc_now())
        assert carry.removed_if_carried(conn, [TP.topic], counts) is None
    conn.close()


async def test_a_removed_processors_dead_letters_keep_its_state_from_being_carried(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live.db"
    store = await filled(live, ["counts", "latest"], [b"a"])
    await store.database.close()
    both = definitions([KeyCounter(), Latest()], SETTINGS)
    with sqlite3.connect(live) as conn:
        for name, definition in both.items():
            conn.execute(
                "INSERT INTO processor_definitions VALUES (?, ?, ?, ?)",
                (TP.topic, name, definition, utc_now()),
            )
        conn.execute(
            "INSERT INTO rejected_records (topic, partition, offset, error, processor)"
            " VALUES (?, 0, 0, 'boom', 'latest')",
            (TP.topic,),
        )
        assert (
            carry.removed_if_carried(conn, [TP.topic], definitions([KeyCounter()], SETTINGS))
            is None
        )
    conn.close()


async def test_the_copy_keeps_only_what_the_new_set_has(tmp_path: Path) -> None:
    live = tmp_path / "live.db"
    store = await filled(live, ["counts", "latest"], [b"a"])
    await store.database.close()
    with sqlite3.connect(live) as conn:
        conn.execute("CREATE TABLE latest (k TEXT)")
        conn.execute("CREATE VIEW latest_keys AS SELECT k FROM latest")
        conn.execute("INSERT INTO schema_migrations VALUES ('latest/0001_x', 'now')")
        conn.execute("INSERT INTO changelog_offsets VALUES ('orders', 0, 5, 5)")
        conn.execute("INSERT OR REPLACE INTO state_settings VALUES ('changelog', 'on', 'now')")
        carry.prune(conn, [KeyCounter()], ["latest"])
    conn.close()
    names = {name for (name,) in query(live, "SELECT name FROM sqlite_master")}
    assert "latest" not in names
    assert "latest_keys" not in names
    assert {"key_counts", "positions", "progress"} <= names
    assert query(live, "SELECT processor FROM topic_processors") == [("counts",)]
    assert not query(live, "SELECT * FROM schema_migrations WHERE name LIKE 'latest/%'")
    assert not query(live, "SELECT * FROM changelog_offsets")
    assert not query(live, "SELECT * FROM state_settings WHERE name = 'changelog'")
    assert query(live, "SELECT count(*) FROM key_counts") == [(1,)]


async def test_a_file_handed_over_from_the_input_applies_only_its_own_seed(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live.db"
    store = await filled(live, ["counts"], [b"a"])
    await store.database.close()
    row = (b'["key_counts","orders",0,"a"]', b"{}", 0)
    mine = (*position_record(1, seed="mine"), 1)
    theirs = (*position_record(1, seed="theirs"), 1)
    with sqlite3.connect(live) as conn:
        assert not own_seed(conn, TP, [row, theirs])  # never handed over: applies as ever
        conn.execute("INSERT INTO changelog_seeds VALUES (?, ?, 'mine')", (TP.topic, 0))
        assert not own_seed(conn, TP, [])  # past a seed a kill aborted: nothing to tell
        assert own_seed(conn, TP, [row, mine])
        with pytest.raises(ChangelogLostError, match="another host"):
            own_seed(conn, TP, [row, theirs])
        with pytest.raises(ChangelogLostError):
            own_seed(conn, TP, [(*position_record(1), 0)])  # a batch, not a seed
        seed_applied(conn, TP)
        assert not own_seed(conn, TP, [row, theirs])  # seeded: the changelog continues it
    conn.close()


async def test_a_work_file_made_by_other_definitions_starts_over(tmp_path: Path) -> None:
    work = tmp_path / "live.db.rebuild"
    store = await filled(work, ["counts"], [b"a"])
    counts = definitions([KeyCounter()], SETTINGS)
    await store.record_definitions([TP.topic], {"counts": "made before"})
    await store.database.close()
    settings = Settings(topics=(TP.topic,), group_id="g", database=tmp_path / "live.db")
    processors = Processors.checked([KeyCounter()])
    try:
        again = await work_store(work, settings, processors)
        try:
            assert not query(work, "SELECT * FROM positions")  # started over
            assert query(work, "SELECT definition FROM processor_definitions") == [
                (counts["counts"],)
            ]
        finally:
            await again.database.close()
    finally:
        processors.close()
