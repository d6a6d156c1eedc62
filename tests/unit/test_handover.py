"""The hand-over of ``sqlstate rebuild`` on two files, without Kafka: the live file takes the work
file's state objects and rows, its processors and migration records, keeps its own positions
(their epochs bumped, their owner the hand-over's), and refuses it all unless the two files
stand at the same positions. A daemon with the old processors can claim nothing afterwards."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from sqlstate.app.rebuild import RebuildOptions, rebuild
from sqlstate.errors import ConfigError, DatabaseError, HandedOverError
from sqlstate.settings import Settings
from sqlstate.state.handover import HANDED_OVER, HandOver
from sqlstate.state.model import Claim
from sqlstate.state.store import Store
from tests.support.db import query
from tests.unit.test_store import COUNTER, TP, batch, bounds, open_store

EXTRA = [
    "CREATE TABLE extra (topic TEXT, partition INTEGER, n INTEGER, PRIMARY KEY (topic, partition))",
    "CREATE INDEX extra_n ON extra (n)",
    "CREATE VIEW extra_total (n) AS SELECT sum(n) FROM extra",
    "CREATE TRIGGER extra_no_delete BEFORE DELETE ON extra BEGIN SELECT raise(ABORT, 'no'); END",
    "INSERT INTO extra VALUES ('orders', 0, 7)",
]


async def filled(path: Path, processors: list[str], keys: list[bytes]) -> Store:
    store = await open_store(path)
    await store.record_processors([TP.topic], processors)
    claimed = await store.claim(
        bounds(TP), "o", "fail", COUNTER.forget, topic_ids={}, isolation_level="read_committed"
    )
    await store.commit_batch([batch(TP, claimed.claims[TP], keys)])
    return store


def add_extra(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        for statement in EXTRA:
            conn.execute(statement)
    conn.close()


async def hand_over(live: Path, work: Path, *, followed: bool = False) -> None:
    """One hand-over, committed, or rolled back on any failure; ``followed``: of a work file
    that followed a new group's changelogs."""
    handing = await HandOver.open(live, work, 5.0)
    try:
        offsets = await handing.lock()
        await (handing.swap_followed(offsets) if followed else handing.swap(offsets))
        await handing.commit()
    except BaseException:
        await handing.rollback()
        raise
    finally:
        await handing.close()


async def test_the_live_file_takes_the_work_files_state_and_keeps_its_positions(
    tmp_path: Path,
) -> None:
    live, work = tmp_path / "live.db", tmp_path / "live.db.rebuild"
    old = await filled(live, ["counts"], [b"a", b"b"])
    new = await filled(work, ["counts", "extra"], [b"a", b"a"])
    await new.database.close()
    add_extra(work)
    await old.database.note_hand_over()  # as the daemon does at its start
    try:
        await hand_over(live, work)
        assert query(live, "SELECT key, count FROM counts ORDER BY key") == [("a", 2)]
        assert query(live, "SELECT n FROM extra_total") == [(7,)]
        assert query(live, "SELECT name FROM sqlite_master WHERE type = 'trigger'") == [
            ("extra_no_delete",)
        ]
        assert query(live, "SELECT next_offset, epoch, owner FROM positions") == [
            (2, 2, HANDED_OVER)
        ]
        assert query(live, "SELECT processor FROM topic_processors ORDER BY 1") == [
            ("counts",),
            ("extra",),
        ]
        # The daemon started before the hand-over claims nothing, whatever its processors.
        with pytest.raises(HandedOverError, match="sqlstate rebuild handed"):
            await old.claim(
                bounds(TP),
                "o",
                "fail",
                COUNTER.forget,
                topic_ids={},
                isolation_level="read_committed",
                processors=["counts", "extra"],
            )
        await old.database.note_hand_over()  # restarted, with the new processors
        claimed = await old.claim(
            bounds(TP),
            "o",
            "fail",
            COUNTER.forget,
            topic_ids={},
            isolation_level="read_committed",
            processors=["counts", "extra"],
        )
        assert claimed.claims[TP] == Claim(2, 3)
    finally:
        await old.database.close()


@pytest.mark.parametrize(
    ("followed", "refusal"),
    [
        (False, "does not stand at the live file's positions"),
        (True, "at or past the live file's positions"),
    ],
)
async def test_a_work_file_behind_the_live_positions_is_refused_and_nothing_changes(
    tmp_path: Path, followed: bool, refusal: str
) -> None:
    live, work = tmp_path / "live.db", tmp_path / "live.db.rebuild"
    old = await filled(live, ["counts"], [b"a", b"b"])
    new = await filled(work, ["counts", "extra"], [b"a"])
    await new.database.close()
    try:
        before = query(live, "SELECT * FROM positions"), query(live, "SELECT * FROM key_counts")
        with pytest.raises(DatabaseError, match=refusal):
            await hand_over(live, work, followed=followed)
        after = query(live, "SELECT * FROM positions"), query(live, "SELECT * FROM key_counts")
        assert after == before
    finally:
        await old.database.close()


async def test_rebuild_of_a_changelog_file_wants_a_new_group_before_touching_kafka(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live.db"
    store = await filled(live, ["counts"], [b"a"])
    await store.database.close()
    with sqlite3.connect(live) as conn:
        conn.execute("UPDATE state_settings SET value = 'on' WHERE name = 'changelog'")
        conn.execute(
            "INSERT INTO changelog_topics VALUES (?, ?, NULL, '2000-01-01')",
            (TP.topic, f"g.{TP.topic}.changelog"),
        )
    conn.close()
    settings = Settings(topics=(TP.topic,), database=live, group_id="g")
    with pytest.raises(ConfigError, match="Give --group-id a name"):
        await rebuild(settings, RebuildOptions())
    with pytest.raises(ConfigError, match="already applies changelog"):
        await rebuild(settings, RebuildOptions(group_id="g"))
    assert not (tmp_path / "live.db.rebuild").exists()


def changelog_bookkeeping(path: Path, changelog: str, offset: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO changelog_topics VALUES (?, ?, 'id', 'now')", (TP.topic, changelog)
        )
        conn.execute(
            "INSERT INTO changelog_offsets VALUES (?, ?, ?, ?)",
            (TP.topic, TP.partition, offset, offset),
        )
    conn.close()


async def test_a_followed_work_file_at_or_past_the_live_positions_brings_them_along(
    tmp_path: Path,
) -> None:
    live, work = tmp_path / "live.db", tmp_path / "live.db.rebuild"
    old = await filled(live, ["counts"], [b"a", b"b"])
    changelog_bookkeeping(live, "g1.orders.changelog", 40)
    new = await filled(work, ["counts", "extra"], [b"a", b"a", b"c"])
    await new.database.close()
    changelog_bookkeeping(work, "g2.orders.changelog", 7)
    try:
        await hand_over(live, work, followed=True)
        assert query(live, "SELECT key, count FROM counts ORDER BY key") == [("a", 2), ("c", 1)]
        assert query(live, "SELECT next_offset, epoch, owner FROM positions") == [
            (3, 2, HANDED_OVER)
        ]
        assert query(live, "SELECT changelog FROM changelog_topics") == [("g2.orders.changelog",)]
        assert query(live, "SELECT next_offset FROM changelog_offsets") == [(7,)]
    finally:
        await old.database.close()


KILLED_BEFORE_COMMIT = """
import asyncio, os, signal, sys
from pathlib import Path
from sqlstate.state.handover import HandOver

async def main() -> None:
    handing = await HandOver.open(Path(sys.argv[1]), Path(sys.argv[2]), 5.0)
    await handing.swap(await handing.lock())
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_a_hand_over_killed_before_its_commit_leaves_the_old_state(tmp_path: Path) -> None:
    live, work = tmp_path / "live.db", tmp_path / "live.db.rebuild"
    old = await filled(live, ["counts"], [b"a", b"b"])
    new = await filled(work, ["counts", "extra"], [b"a", b"a"])
    await new.database.close()
    add_extra(work)
    try:
        before = [query(live, f"SELECT * FROM {table}") for table in ("positions", "key_counts")]
        killed = await asyncio.create_subprocess_exec(
            sys.executable, "-c", KILLED_BEFORE_COMMIT, str(live), str(work)
        )
        assert await killed.wait() == -signal.SIGKILL
        after = [query(live, f"SELECT * FROM {table}") for table in ("positions", "key_counts")]
        assert after == before
        assert not query(live, "SELECT name FROM sqlite_master WHERE name = 'extra'")
        await hand_over(live, work)  # and it can be run again
        assert query(live, "SELECT key, count FROM counts") == [("a", 2)]
    finally:
        await old.database.close()


async def test_a_hand_over_to_a_new_group_names_its_changelogs(tmp_path: Path) -> None:
    """The file then belongs to the new group: a daemon of the old one is refused (identity)."""
    live, work = tmp_path / "live.db", tmp_path / "live.db.rebuild"
    old = await filled(live, ["counts"], [b"a", b"b"])
    await old.database.close()
    changelog_bookkeeping(live, "g1.orders.changelog", 40)
    new = await filled(work, ["counts", "extra"], [b"a", b"a"])
    await new.database.close()
    handing = await HandOver.open(live, work, 5.0)
    try:
        await handing.swap(await handing.lock(), changelogs={TP.topic: "g2.orders.changelog"})
        await handing.commit()
    finally:
        await handing.close()
    assert query(live, "SELECT topic, changelog, topic_id FROM changelog_topics") == [
        (TP.topic, "g2.orders.changelog", None)
    ]
    assert not query(live, "SELECT * FROM changelog_offsets")
