"""``--start-from``: where a partition the database has never seen starts, against the real
broker, with the CLI as users run it.

A topic with history: ``latest`` reads only what is written after its claim, and a partition
added to the topic later from its first record; a restart with another ``--start-from`` moves
no partition that has a position; a record time (``-2h`` and an ISO 8601 time) starts at the
first record at or after it, the default at the first offset, as before. Each run is checked
by the oracle over the range it applied, ``[start_offset, next_offset)``, and its start is read
back from ``sqlstate offsets --json``. Under ``--changelog``, two hosts: the host that first
claims a partition decides its start, and the other takes it from the changelog.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

from tests.support.daemon import Daemon, stored_positions, wait_for_positions
from tests.support.db import query_value
from tests.support.hosts import converged, host, wait_for_assignments
from tests.support.kafka import TopicFactory, add_partitions, create_topic, delete_topics, started
from tests.support.oracle import assert_exactly_once
from tests.support.workload import (
    db_counts,
    end_offsets,
    expected,
    keyed_messages,
    produce_keyed,
)

HOUR_MS = 3_600_000


def starts(database: Path) -> dict[int, tuple[str | None, int | None]]:
    """{partition: (start_from, start_offset)}, as ``sqlstate offsets --json`` prints them."""
    return {p: start for (_, p), start in _starts(database).items()}


def starts_of(database: Path, topic: str) -> dict[int, tuple[str | None, int | None]]:
    """``starts`` of ``topic`` in a file that holds several topics."""
    return {p: start for (t, p), start in _starts(database).items() if t == topic}


def _starts(database: Path) -> dict[tuple[str, int], tuple[str | None, int | None]]:
    result = subprocess.run(
        [sys.executable, "-m", "sqlstate", "offsets", "--database", str(database), "--json"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return {
        (r["topic"], r["partition"]): (r["start_from"], r["start_offset"])
        for r in json.loads(result.stdout)
    }


def verify(bootstrap: str, database: Path, topic: str) -> tuple[int, str]:
    """``sqlstate verify`` of ``topic`` in ``database``: its exit code and what it printed."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "sqlstate", "verify", "--database", str(database)),
            *("--topic", topic, "--bootstrap-servers", bootstrap),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, result.stdout + result.stderr


def stored_total(database: Path, topic: str) -> int:
    """Every record counted, as the counts view says."""
    total = query_value(database, "SELECT sum(count) FROM counts WHERE topic = ?", (topic,))
    return int(total or 0)


async def claimed(database: Path, partitions: int, daemon: Daemon) -> dict[int, int]:
    """Wait until the daemon claimed ``partitions`` partitions; their positions."""
    deadline = time.monotonic() + 60
    while len(positions := stored_positions(database)) < partitions:
        assert daemon.running(), daemon.log()[-3000:]
        assert time.monotonic() < deadline, daemon.log()[-3000:]
        await asyncio.sleep(0.1)
    return {partition: offset for (_, partition), offset in positions.items()}


async def test_latest_reads_only_what_comes_after_and_a_restart_keeps_positions(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=2)
    await produce_keyed(kafka_bootstrap, topic, keyed_messages(2_000, partitions=2, seed=3))
    history = {p: end for (_, p), end in (await end_offsets(kafka_bootstrap, topic)).items()}
    database = tmp_path / "state.db"
    latest = ("--start-from", "latest", "--metadata-max-age", "3")
    daemon = Daemon(kafka_bootstrap, [topic], group_id, database, *latest).start()
    daemons.append(daemon)
    assert await claimed(database, 2, daemon) == history

    after = keyed_messages(1_000, partitions=2, seed=4)
    await produce_keyed(kafka_bootstrap, topic, after)
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 60, [daemon])
    assert stored_total(database, topic) == len(after)
    assert starts(database) == {p: ("latest", end) for p, end in history.items()}
    started = f"first claim of {topic}-0@{history[0]} (latest), {topic}-1@{history[1]} (latest)"
    assert started in daemon.log()

    # Partitions added to the topic after the file first claimed it start at their first
    # record: nothing written to them before the daemon noticed them is missed.
    await add_partitions(kafka_bootstrap, topic, total=4)
    added = keyed_messages(1_000, partitions=4, seed=5)
    await produce_keyed(kafka_bootstrap, topic, added)
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 30, [daemon])
    assert stored_total(database, topic) == len(after) + len(added)
    assert {p: s for p, s in starts(database).items() if p >= 2} == {
        2: ("earliest", 0),
        3: ("earliest", 0),
    }
    assert await daemon.terminate() == 0

    # Restarted with another --start-from: every partition has a position, and keeps it.
    again = Daemon(
        kafka_bootstrap, [topic], group_id, database, "--start-from", "earliest", name="again"
    ).start()
    daemons.append(again)
    more = keyed_messages(500, partitions=4, seed=6)
    await produce_keyed(kafka_bootstrap, topic, more)
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 60, [again])
    assert stored_total(database, topic) == len(after) + len(added) + len(more)
    assert starts(database) == {
        **{p: ("latest", end) for p, end in history.items()},
        2: ("earliest", 0),
        3: ("earliest", 0),
    }
    await assert_exactly_once(kafka_bootstrap, database, topic)
    assert await again.terminate() == 0
    assert "Traceback" not in daemon.log() + again.log()
    # verify recomputes each partition from where its start put it, not from the history.
    code, report = verify(kafka_bootstrap, database, topic)
    assert code == 0, report


async def test_a_record_time_starts_at_the_first_record_at_or_after_it(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """Per partition, 30 records three hours old, then 20 one hour old: ``-2h`` and the ISO
    8601 time two hours ago both start at the 31st; the default, at the first."""
    topic = await topic_factory(partitions=2)
    now_ms = round(time.time() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    async with started(producer):
        for partition in (0, 1):
            for i in range(50):
                age_ms = 3 * HOUR_MS if i < 30 else HOUR_MS
                await producer.send(
                    topic,
                    b"v",
                    key=f"k{i % 7}".encode(),
                    partition=partition,
                    timestamp_ms=now_ms - age_ms + i,
                )
        await producer.flush()
    two_hours_ago = datetime.fromtimestamp((now_ms - 2 * HOUR_MS) / 1000, UTC)
    runs = {
        "relative": ("--start-from", "-2h"),
        "iso": ("--start-from", two_hours_ago.isoformat().replace("+00:00", "Z")),
        "default": (),
    }
    ends = await end_offsets(kafka_bootstrap, topic)
    for name, args in runs.items():
        database = tmp_path / f"{name}.db"
        daemon = Daemon(
            kafka_bootstrap, [topic], f"{group_id}-{name}", database, *args, name=name
        ).start()
        daemons.append(daemon)
    for daemon in daemons:
        await wait_for_positions(daemon.database, ends, 60, [daemon])
        assert await daemon.terminate() == 0
    for name in ("relative", "iso"):
        database = tmp_path / f"{name}.db"
        assert stored_total(database, topic) == 2 * 20
        assert {p: offset for p, (_, offset) in starts(database).items()} == {0: 30, 1: 30}
        await assert_exactly_once(kafka_bootstrap, database, topic)
    recorded = {p: policy for p, (policy, _) in starts(tmp_path / "iso.db").items()}
    assert recorded == {
        p: two_hours_ago.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" for p in (0, 1)
    }
    assert starts(tmp_path / "default.db") == {0: ("earliest", 0), 1: ("earliest", 0)}
    assert stored_total(tmp_path / "default.db", topic) == 2 * 50


async def test_under_changelog_the_first_owner_decides_the_start(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """Host 1 claims both partitions under ``latest`` and commits no batch; host 2, under
    ``earliest``, takes one over: it restores host 1's start from the changelog and never
    reads the history. Both files hold exactly what came after host 1's claim."""
    topic = await topic_factory(partitions=2)
    await produce_keyed(kafka_bootstrap, topic, keyed_messages(600, partitions=2, seed=7))
    history = {p: end for (_, p), end in (await end_offsets(kafka_bootstrap, topic)).items()}
    first = host(kafka_bootstrap, topic, group_id, tmp_path, 1, "--start-from", "latest")
    daemons.append(first.start())
    assert await claimed(first.database, 2, first) == history

    second = host(kafka_bootstrap, topic, group_id, tmp_path, 2, "--start-from", "earliest")
    daemons.append(second.start())
    await wait_for_assignments([first, second], topic, 2)
    after = keyed_messages(400, partitions=2, seed=8)
    await produce_keyed(kafka_bootstrap, topic, after)
    await converged(kafka_bootstrap, topic, [first, second])
    for database in (first.database, second.database):
        assert starts(database) == {p: ("latest", end) for p, end in history.items()}
        assert stored_total(database, topic) == len(after)


async def test_a_topic_created_while_running_starts_at_its_first_record(
    kafka_bootstrap: str, group_id: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Under ``--topic-pattern``, a topic that matches at start starts at its end; one created
    while running, at its first record: every record of it was written after the daemon
    started, as for a partition added later."""
    prefix = f"pattern-{uuid.uuid4().hex[:8]}"
    first = await create_topic(kafka_bootstrap, f"{prefix}-a", 1)
    later = f"{prefix}-b"
    try:
        await produce_keyed(kafka_bootstrap, first, keyed_messages(100, 1, seed=1))
        database = tmp_path / "state.db"
        pattern = ("--topic-pattern", f"{re.escape(prefix)}-[a-z]")
        fast = ("--start-from", "latest", "--metadata-max-age", "3")
        daemon = Daemon(kafka_bootstrap, [], group_id, database, *pattern, *fast).start()
        daemons.append(daemon)
        await wait_for_positions(database, await end_offsets(kafka_bootstrap, first), 30, [daemon])
        # Written before the next metadata refresh: the daemon cannot know of the topic yet.
        await create_topic(kafka_bootstrap, later, 1)
        messages = keyed_messages(300, 1, seed=2)
        await produce_keyed(kafka_bootstrap, later, messages)
        await wait_for_positions(database, await end_offsets(kafka_bootstrap, later), 30, [daemon])
        assert await daemon.terminate() == 0
        assert starts_of(database, first) == {0: ("latest", 100)}
        assert starts_of(database, later) == {0: ("earliest", 0)}
        assert db_counts(database, later) == expected(messages)
    finally:
        await delete_topics(kafka_bootstrap, [first, later])


async def test_a_partition_added_later_starts_at_earliest_on_a_standby_host(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """Host 1 owns the topic's one partition, host 2 only follows it; a partition added later
    goes to host 2, whose first claim of the topic this is. It starts at its first record:
    host 2 took the topic's partition count from host 1's position records, not from its own
    first claim (which would count the added partition in, and start it at ``latest``)."""
    topic = await topic_factory(partitions=1)
    await produce_keyed(kafka_bootstrap, topic, keyed_messages(100, partitions=1, seed=1))
    args = ("--start-from", "latest", "--metadata-max-age", "3")
    first = host(kafka_bootstrap, topic, group_id, tmp_path, 1, *args)
    daemons.append(first.start())
    await wait_for_assignments([first], topic, 1)
    await asyncio.sleep(2)
    second = host(kafka_bootstrap, topic, group_id, tmp_path, 2, *args)
    daemons.append(second.start())
    assert await wait_for_assignments([first, second], topic, 1) == [{0}, set()]
    await asyncio.sleep(2)
    await add_partitions(kafka_bootstrap, topic, total=2)
    added = keyed_messages(400, partitions=2, seed=2)
    await produce_keyed(kafka_bootstrap, topic, added)
    assert await wait_for_assignments([first, second], topic, 2) == [{0}, {1}]
    await converged(kafka_bootstrap, topic, [first, second])
    for h in (first, second):
        assert starts(h.database)[1] == ("earliest", 0)


async def test_under_changelog_a_first_claim_at_earliest_decides_the_start_too(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """Host 1, under ``earliest``, claims the partition and dies before its first batch; host
    2, under ``latest``, takes it over: it restores host 1's start from the changelog and
    counts the history, as it would have had host 1 committed a batch."""
    topic = await topic_factory(partitions=1)
    history = keyed_messages(300, partitions=1, seed=9)
    await produce_keyed(kafka_bootstrap, topic, history)
    first = host(kafka_bootstrap, topic, group_id, tmp_path, 1, fault="after_fetch")
    daemons.append(first.start())
    assert await first.wait(60) != 0
    assert "FAULT after_fetch 1" in first.log()
    second = host(kafka_bootstrap, topic, group_id, tmp_path, 2, "--start-from", "latest")
    daemons.append(second.start())
    await converged(kafka_bootstrap, topic, [second])
    assert starts(second.database) == {0: ("earliest", 0)}
    assert stored_total(second.database, topic) == len(history)
