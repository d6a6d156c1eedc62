"""Records gone below the stored position, aborted transactions, and bad input at start."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from sqlstate.processors.keys import stored_key
from tests.support.daemon import Daemon, stored_positions, wait_for_positions
from tests.support.faults import caught_up, daemon, out_of_range_while_running
from tests.support.kafka import TopicFactory, produce
from tests.support.workload import (
    db_counts,
    end_offsets,
    expected,
    file_digest,
    keyed_messages,
    produce_keyed,
)


async def delete_below(bootstrap: str, tp: TopicPartition, offset: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=offset)}, timeout_ms=10_000)
    finally:
        await admin.close()


async def catch_up(daemon: Daemon, bootstrap: str, topic: str) -> None:
    await wait_for_positions(daemon.database, await end_offsets(bootstrap, topic), 90, [daemon])


@pytest.mark.parametrize("policy", ["reset", "fail"])
async def test_records_deleted_below_the_stored_position(
    policy: str,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=3)
    first = keyed_messages(3_000, partitions=3, seed=5)
    await produce_keyed(kafka_bootstrap, topic, first)
    database = tmp_path / "state.db"
    daemon = Daemon(kafka_bootstrap, [topic], group_id, database, "--out-of-range", policy).start()
    daemons.append(daemon)
    await catch_up(daemon, kafka_bootstrap, topic)
    assert await daemon.terminate() == 0

    # While it is stopped: more records arrive, and partition 0 loses everything below an offset
    # beyond the stored position.
    second = keyed_messages(3_000, partitions=3, seed=6)
    await produce_keyed(kafka_bootstrap, topic, second)
    stored = stored_positions(database)[(topic, 0)]
    cut = stored + 500
    await delete_below(kafka_bootstrap, TopicPartition(topic, 0), cut)
    before = file_digest(database)

    daemon.start()
    if policy == "fail":
        assert await daemon.wait(60) == 5
        assert "outside the log" in daemon.log()
        assert file_digest(database) == before
        return
    await catch_up(daemon, kafka_bootstrap, topic)
    assert await daemon.terminate() == 0
    assert "discarded the partition's state" in daemon.log()
    everything = list(first) + list(second)
    want = expected(everything)
    # Partition 0 now holds only the records from the cut on.
    in_p0 = [key for partition, key in everything if partition == 0]
    survivors = Counter((0, stored_key(key)) for key in in_p0[cut:])
    want = Counter({k: v for k, v in want.items() if k[0] != 0}) + survivors
    assert db_counts(database, topic) == want


@pytest.mark.parametrize("mode", [(), ("--changelog",)], ids=["one-file", "changelog"])
async def test_records_deleted_past_the_position_while_running(
    mode: tuple[str, ...],
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """The running daemon's next fetch of partition 0 is out of range: the partition is claimed
    again, and its claim discards its state and rebuilds it from the log's first offset."""
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    traffic = [(f"k{i % 20}".encode(), b"v", i % 3) for i in range(600)]
    await produce(kafka_bootstrap, topic, traffic)
    sqlstate = daemon(kafka_bootstrap, topic, group_id, database, *mode)
    daemons.append(sqlstate.start())
    await caught_up(kafka_bootstrap, database, topic, [sqlstate])
    await out_of_range_while_running(kafka_bootstrap, topic, database, sqlstate, traffic[:300])
    await caught_up(kafka_bootstrap, database, topic, [sqlstate])
    log = sqlstate.log()
    assert "reported out of range" in log, log[-3000:]
    assert log.count("discarded the partition's state") == 1, log[-3000:]
    assert await sqlstate.terminate() == 0


async def test_aborted_transactions_are_not_counted(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=2)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{group_id}-tx"
    )
    await producer.start()
    committed: Counter[tuple[int, str | bytes | None]] = Counter()
    try:
        for n in range(10):
            await producer.begin_transaction()
            for i in range(50):
                await producer.send(topic, b"v", key=f"k{i % 7}".encode(), partition=i % 2)
            if n % 3 == 0:
                await producer.abort_transaction()
                continue
            await producer.commit_transaction()
            for i in range(50):
                committed[(i % 2, f"k{i % 7}")] += 1
    finally:
        await producer.stop()
    database = tmp_path / "state.db"
    daemon = Daemon(kafka_bootstrap, [topic], group_id, database).start()
    daemons.append(daemon)
    ends = await end_offsets(kafka_bootstrap, topic)
    await wait_for_positions(database, ends, 60, [daemon])
    assert await daemon.terminate() == 0
    assert db_counts(database, topic) == committed
    # Positions stand exactly at the log end, past the last transaction marker.
    assert {tp: n for tp, n in stored_positions(database).items()} == ends


async def test_unreachable_broker_fails_fast(tmp_path: Path) -> None:
    daemon = Daemon("127.0.0.1:1", ["t"], "g", tmp_path / "s.db", "--connect-timeout", "5")
    started = time.monotonic()
    daemon.start()
    assert await daemon.wait(30) == 4
    assert time.monotonic() - started < 25
    assert "cannot reach Kafka" in daemon.log()


async def test_sigterm_while_kafka_is_unreachable_stops_at_once(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A signal during the start-up connect retries is a clean stop, not a wait for
    --connect-timeout and exit 4; the database stays as it was."""
    database = tmp_path / "s.db"
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "sqlstate", "migrate", "--database", str(database)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    before = file_digest(database)
    # Nothing listens on port 1: every connect is refused, and retried.
    daemon = Daemon("127.0.0.1:1", ["t"], "g", database, "--connect-timeout", "120")
    daemons.append(daemon.start())
    await daemon.wait_for_log("cannot reach Kafka at 127.0.0.1:1 yet", timeout=30)
    await asyncio.sleep(2)
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert await daemon.wait(30) == 0, daemon.log()
    assert time.monotonic() - signalled < 2, daemon.log()
    assert file_digest(database) == before


async def test_missing_topic(kafka_bootstrap: str, group_id: str, tmp_path: Path) -> None:
    daemon = Daemon(kafka_bootstrap, ["no-such-topic-here"], group_id, tmp_path / "s.db").start()
    assert await daemon.wait(30) == 4
    assert "topic no-such-topic-here does not exist" in daemon.log()


async def test_not_a_database_and_newer_schema_are_left_untouched(
    kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=1)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"definitely not SQLite " * 1000)
    before = file_digest(junk)
    daemon = Daemon(kafka_bootstrap, [topic], group_id, junk).start()
    assert await daemon.wait(30) == 3
    assert "not a usable SQLite database" in daemon.log()
    assert file_digest(junk) == before

    newer = tmp_path / "newer.db"
    process = await asyncio.create_subprocess_exec(
        "sqlite3",
        str(newer),
        "CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL);"
        " INSERT INTO schema_migrations VALUES ('0999_future.sql', 'x');",
    )
    assert await process.wait() == 0
    before = file_digest(newer)
    daemon = Daemon(kafka_bootstrap, [topic], group_id, newer, name="newer").start()
    assert await daemon.wait(30) == 3
    assert "newer sqlstate" in daemon.log()
    assert file_digest(newer) == before
