"""``sqlstate verify`` as users run it: a daemon's file is identical to what Kafka's records make of
it, also while the daemon writes, and so is a snapshot taken meanwhile; a copy with a row
changed or a position moved is named different, down to the partition and the key; records
deleted from Kafka leave a partition not fully checked, except for the latest values whose
records Kafka still has.

The file is made by a real daemon with four processors at once (``counts``, ``latest``,
``windowed-counts`` and the SQL example ``customer_totals.sql``) over order events that hold
every kind of record a topic holds: tombstones, null and non-UTF-8 keys, values that are not
JSON (dead-lettered), late records past the window's retention.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from tests.support.daemon import Daemon, stored_positions, wait_for_positions
from tests.support.db import writing
from tests.support.kafka import (
    TopicFactory,
    delete_records,
    log_end_offsets,
    produce,
    recreate_topic,
)
from tests.support.orders import RETENTION, WINDOW, produce_orders

ROOT = Path(__file__).resolve().parents[2]
SQL_EXAMPLE = ROOT / "examples" / "customer_totals.sql"
PROCESSING = [
    "--processor",
    "counts",
    "--processor",
    "latest",
    "--processor",
    "windowed-counts",
    "--sql",
    str(SQL_EXAMPLE),
    "--value-format",
    "json",
    "--on-bad-record",
    "dead-letter",
    "--window",
    WINDOW,
    "--retention",
    RETENTION,
]
EXIT_DIFFERENT, EXIT_NOT_FULLY_CHECKED = 9, 10


async def run_verify(
    bootstrap: str, topic: str, database: Path, *options: str
) -> tuple[int, dict[str, Any]]:
    """``sqlstate verify --json``: its exit code and its report."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sqlstate",
        "verify",
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        topic,
        "--database",
        str(database),
        "--connect-timeout",
        "20",
        *PROCESSING,
        "--json",
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    assert out, err.decode()
    [report] = json.loads(out)
    return process.returncode, dict(report)


def by_partition(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {p["partition"]: p for p in report["partitions"]}


def copy_of(database: Path, name: str) -> Path:
    """A copy of a file no daemon writes any more (its WAL checkpointed at the daemon's stop)."""
    copy = database.parent / name
    shutil.copyfile(database, copy)
    return copy


async def test_verify_finds_the_file_identical_and_names_each_corruption(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=2)
    await produce_orders(kafka_bootstrap, topic, 600, partitions=2, seed=3)
    database = tmp_path / "orders.db"
    daemon = Daemon(
        kafka_bootstrap, [topic], group_id, database, "--max-records", "50", *PROCESSING
    )
    daemons.append(daemon.start())
    ends = await log_end_offsets(kafka_bootstrap, topic)
    await wait_for_positions(
        database, {(topic, p): end for p, end in ends.items()}, daemons=daemons
    )

    # While the daemon runs and commits new records: verify reads one snapshot of the file
    # (never the write lock), and the daemon goes on meanwhile.
    producing = asyncio.create_task(
        produce_orders(kafka_bootstrap, topic, 600, partitions=2, seed=4, first=600, rate=400)
    )
    before = sum(stored_positions(database).values())
    code, report = await run_verify(kafka_bootstrap, topic, database)
    assert code == 0, report
    assert report["status"] == "identical"
    # The daemon committed while verify had the file open.
    assert sum(stored_positions(database).values()) > before
    # A snapshot taken meanwhile is checked as it stands: its own positions, its own rows.
    snapshot = tmp_path / "snapshot.db"
    taken = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sqlstate", "snapshot", "--database", str(database), str(snapshot)
    )
    assert await asyncio.wait_for(taken.wait(), 60) == 0
    await producing
    code, report = await run_verify(kafka_bootstrap, topic, snapshot)
    assert code == 0, report
    ends = await log_end_offsets(kafka_bootstrap, topic)
    await wait_for_positions(
        database, {(topic, p): end for p, end in ends.items()}, daemons=daemons
    )
    assert await daemon.terminate() == 0

    code, report = await run_verify(kafka_bootstrap, topic, database)
    assert code == 0, report
    assert report["records"] > 0
    assert {p["status"] for p in report["partitions"]} == {"identical"}
    assert [(p["recomputed_offset"], p["stored_offset"]) for p in report["partitions"]] == [
        (ends[0], ends[0]),
        (ends[1], ends[1]),
    ]

    # Another bad-record policy than the run's: the file's positions stand past records that
    # verify would stop at.
    code, report = await run_verify(kafka_bootstrap, topic, database, "--on-bad-record", "fail")
    assert code == EXIT_DIFFERENT, report
    assert "does not decode: value is not JSON" in by_partition(report)[0]["problems"][0]

    # One row's count changed: that key, that partition, both values.
    changed = copy_of(database, "changed.db")
    with writing(changed) as conn:
        [(count,)] = conn.execute(
            "SELECT count FROM key_counts WHERE topic = ? AND partition = 1 AND key = 'c-03'",
            (topic,),
        ).fetchall()
        conn.execute("UPDATE key_counts SET count = count + 1 WHERE partition = 1 AND key = 'c-03'")
    code, report = await run_verify(kafka_bootstrap, topic, changed)
    assert code == EXIT_DIFFERENT, report
    partitions = by_partition(report)
    assert partitions[0]["status"] == "identical"
    assert partitions[1]["status"] == "different"
    [table] = partitions[1]["tables"]
    assert (table["table"], table["missing"], table["extra"], table["different"]) == (
        "key_counts",
        0,
        0,
        1,
    )
    assert table["samples"] == [
        {
            "kind": "different",
            "key": {"key": "c-03"},
            "file": {"count": count + 1},
            "recomputed": {"count": count},
        }
    ]

    # A position moved back: the file's state holds records past it.
    moved = copy_of(database, "moved.db")
    with writing(moved) as conn:
        conn.execute("UPDATE positions SET next_offset = next_offset - 5 WHERE partition = 0")
    code, report = await run_verify(kafka_bootstrap, topic, moved)
    assert code == EXIT_DIFFERENT, report
    partitions = by_partition(report)
    assert partitions[1]["status"] == "identical"
    assert partitions[0]["status"] == "different"
    assert partitions[0]["stored_offset"] == partitions[0]["recomputed_offset"] == ends[0] - 5
    assert {t["table"] for t in partitions[0]["tables"]} >= {"key_counts", "latest"}

    # A position moved past the log's end: the file claims records Kafka does not have.
    ahead = copy_of(database, "ahead.db")
    with writing(ahead) as conn:
        conn.execute("UPDATE positions SET next_offset = next_offset + 7 WHERE partition = 1")
    code, report = await run_verify(kafka_bootstrap, topic, ahead)
    assert code == EXIT_DIFFERENT, report
    [problem] = by_partition(report)[1]["problems"]
    assert f"position {ends[1] + 7} is past the log's end {ends[1]}" in problem

    # Records the file's state was made from, deleted from Kafka (as retention does): the
    # partition cannot be recomputed from scratch, and says which offsets it could not read.
    assert await delete_records(kafka_bootstrap, topic, {0: 100}) == {0: 100}
    code, report = await run_verify(kafka_bootstrap, topic, database)
    assert code == EXIT_NOT_FULLY_CHECKED, report
    partitions = by_partition(report)
    assert partitions[0]["status"] == "not fully checked"
    assert "offsets 0-99 were deleted from Kafka" in partitions[0]["unchecked"]
    assert partitions[1]["status"] == "identical"
    code, report = await run_verify(kafka_bootstrap, topic, database, "--allow-unchecked")
    assert code == 0, report
    assert report["status"] == "not fully checked"
    # Still checked there: a key's latest value whose record Kafka still has.
    stale = copy_of(database, "stale.db")
    with writing(stale) as conn:
        [(key, offset)] = conn.execute(
            "SELECT key, offset FROM latest WHERE partition = 0 AND offset >= 100"
            " AND typeof(key) = 'text' ORDER BY offset LIMIT 1"
        ).fetchall()
        conn.execute("UPDATE latest SET value = '{}' WHERE partition = 0 AND key = ?", (key,))
    code, report = await run_verify(kafka_bootstrap, topic, stale, "--allow-unchecked")
    assert code == EXIT_DIFFERENT, report
    tables = {t["table"]: t for t in by_partition(report)[0]["tables"]}
    assert (tables["latest"]["different"], tables["latest"]["certain"]) == (1, True)
    assert tables["latest"]["samples"][0]["key"] == {"key": key}
    assert tables["latest"]["samples"][0]["recomputed"]["offset"] == offset
    assert tables["key_counts"]["certain"] is False
    assert stored_positions(database) == {(topic, 0): ends[0], (topic, 1): ends[1]}


async def test_a_topic_created_again_with_fewer_partitions_is_not_fully_checked(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """Kafka has no offsets of a partition that is gone: verify says so at once, rather than
    waiting out the request timeout and failing."""
    topic = await topic_factory(partitions=2)
    await produce(kafka_bootstrap, topic, [(b"a", b"{}", 0), (b"b", b"{}", 1)])
    database = tmp_path / "orders.db"
    daemon = Daemon(kafka_bootstrap, [topic], group_id, database, *PROCESSING)
    daemons.append(daemon.start())
    await wait_for_positions(database, {(topic, 0): 1, (topic, 1): 1}, daemons=daemons)
    assert await daemon.terminate() == 0
    await recreate_topic(kafka_bootstrap, topic, partitions=1)

    code, report = await asyncio.wait_for(run_verify(kafka_bootstrap, topic, database), 20)
    assert code == EXIT_NOT_FULLY_CHECKED, report
    assert {p["status"] for p in report["partitions"]} == {"not fully checked"}
    assert "deleted and created again" in by_partition(report)[1]["unchecked"]
