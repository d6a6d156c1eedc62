"""``sqlstate run`` as users run it: a subprocess against the real broker, checked exactly."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sqlstate.cli import output
from tests.support.daemon import Daemon, wait_for_positions, wait_for_progress
from tests.support.kafka import TopicFactory, add_partitions
from tests.support.oracle import assert_exactly_once
from tests.support.workload import (
    db_counts,
    db_totals,
    end_offsets,
    expected,
    keyed_messages,
    produce_keyed,
)


async def test_counts_and_positions_are_exact(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=3)
    messages = keyed_messages(12_000, partitions=3)
    await produce_keyed(kafka_bootstrap, topic, messages)
    database = tmp_path / "state.db"
    daemon = Daemon(kafka_bootstrap, [topic], group_id, database).start()
    daemons.append(daemon)
    ends = await end_offsets(kafka_bootstrap, topic)
    await wait_for_positions(database, ends, timeout=90, daemons=[daemon])
    assert await daemon.terminate() == 0
    assert db_counts(database, topic) == expected(messages)
    totals = db_totals(database, topic)
    assert totals[None] == sum(1 for _, key in messages if key is None)
    assert totals[""] == sum(1 for _, key in messages if key == b"")
    assert totals[b"\xff\xfe\x00"] == sum(1 for _, key in messages if key == b"\xff\xfe\x00")
    assert sum(totals.values()) == len(messages)
    log = daemon.log()
    assert "record parser: C extension, records as parsed" in log
    assert "Traceback" not in log

    # The read-only commands read the same numbers.
    top = json.loads(sqlstate("counts", "--database", str(database), "--top", "400", "--json"))
    assert {(row["topic"], json.dumps(row["key"])): row["count"] for row in top} == {
        (topic, json.dumps(output.key_json(key))): count for key, count in totals.items()
    }
    offsets = json.loads(
        sqlstate(
            "offsets", "--database", str(database), "--json", "--bootstrap-servers", kafka_bootstrap
        )
    )
    assert {(r["topic"], r["partition"]): r["next_offset"] for r in offsets} == ends
    assert {r["lag"] for r in offsets} == {0}


async def test_partitions_added_to_a_topic_are_counted_within_seconds(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=2)
    before = keyed_messages(3_000, partitions=2, seed=5)
    await produce_keyed(kafka_bootstrap, topic, before)
    database = tmp_path / "state.db"
    daemon = Daemon(kafka_bootstrap, [topic], group_id, database, "--metadata-max-age", "3").start()
    daemons.append(daemon)
    ends = await end_offsets(kafka_bootstrap, topic)
    await wait_for_positions(database, ends, timeout=60, daemons=[daemon])

    await add_partitions(kafka_bootstrap, topic, total=4)
    # Keys on every partition, the two new ones (2 and 3) included.
    after = keyed_messages(3_000, partitions=4, seed=6)
    await produce_keyed(kafka_bootstrap, topic, after)
    ends = await end_offsets(kafka_bootstrap, topic)
    assert set(ends) == {(topic, partition) for partition in range(4)}
    # The daemon notices the new partitions at its next metadata refresh (3 s here), rebalances
    # and counts them from their first record; aiokafka alone would wait 5 minutes.
    await wait_for_positions(database, ends, timeout=20, daemons=[daemon])

    assert db_counts(database, topic) == expected(before + after)
    await assert_exactly_once(kafka_bootstrap, database, topic)
    assert await daemon.terminate() == 0
    assert "Traceback" not in daemon.log()


def sqlstate(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "sqlstate", *args], capture_output=True, check=True, timeout=60
    )
    return result.stdout.decode()


@pytest.mark.parametrize("how", ["sigterm", "kill"])
async def test_stopped_mid_stream_and_restarted_is_exact(
    how: str,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=3)
    messages = keyed_messages(20_000, partitions=3, seed=2)
    database = tmp_path / "state.db"
    daemon = Daemon(kafka_bootstrap, [topic], group_id, database, "--max-records", "500").start()
    daemons.append(daemon)
    producing = asyncio.create_task(produce_keyed(kafka_bootstrap, topic, messages, rate=8000))
    for round_ in range(3):
        await daemon.wait_for_log("assigned partitions: ")
        await wait_for_progress(database, 2_000 * (round_ + 1), timeout=60)
        if how == "sigterm":
            assert await daemon.terminate() == 0, daemon.log()[-2000:]
        else:
            await daemon.kill()
        daemon.start()
    await producing
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 90, [daemon])
    assert await daemon.terminate() == 0
    assert db_counts(database, topic) == expected(messages)


async def test_daemons_sharing_one_database_join_and_leave(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=6)
    messages = keyed_messages(24_000, partitions=6, seed=3)
    database = tmp_path / "state.db"

    def member(name: str) -> Daemon:
        daemon = Daemon(
            kafka_bootstrap, [topic], group_id, database, "--max-records", "500", name=name
        )
        daemons.append(daemon)
        return daemon

    first = member("first").start()
    producing = asyncio.create_task(produce_keyed(kafka_bootstrap, topic, messages, rate=6000))
    await wait_for_progress(database, 3_000)
    second = member("second").start()
    await wait_for_progress(database, 8_000)
    third = member("third").start()
    await wait_for_progress(database, 13_000)
    assert await first.terminate() == 0
    await wait_for_progress(database, 17_000)
    await second.kill()
    await producing
    await wait_for_positions(
        database, await end_offsets(kafka_bootstrap, topic), 90, [first, second, third]
    )
    assert await third.terminate() == 0
    assert db_counts(database, topic) == expected(messages)
    assert "fenced" not in third.log() or "dropped" in third.log()


async def test_reader_never_sees_a_half_applied_batch(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """Offsets here have no gaps, so a partition's counts must always add up to its position."""
    topic = await topic_factory(partitions=3)
    messages = keyed_messages(30_000, partitions=3, seed=4, odd=False)
    database = tmp_path / "state.db"
    daemon = Daemon(kafka_bootstrap, [topic], group_id, database, "--max-records", "300").start()
    daemons.append(daemon)
    reader = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        READER,
        str(database),
        topic,
        stdout=asyncio.subprocess.PIPE,
    )
    await produce_keyed(kafka_bootstrap, topic, messages, rate=10000)
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 90, [daemon])
    reader.send_signal(signal.SIGTERM)
    out, _ = await reader.communicate()
    reads, torn = map(int, out.split())
    assert reads > 100
    assert torn == 0
    assert await daemon.terminate() == 0


# Runs in its own process, as any SQLite client would: each read is one snapshot.
READER = """
import contextlib, signal, sqlite3, sys, time
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
database, topic = sys.argv[1], sys.argv[2]
reads = torn = 0
while not stop:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
            conn.execute("BEGIN")
            positions = dict(conn.execute(
                "SELECT partition, next_offset FROM positions WHERE topic = ?", (topic,)))
            sums = dict(conn.execute(
                "SELECT partition, sum(count) FROM key_counts WHERE topic = ? GROUP BY partition",
                (topic,)))
            conn.execute("COMMIT")
    except sqlite3.OperationalError:
        time.sleep(0.01)
        continue
    reads += 1
    torn += sum(1 for p, n in positions.items() if sums.get(p, 0) != n)
print(reads, torn)
"""
