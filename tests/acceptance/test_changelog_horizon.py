"""--changelog: a file that catches up from an offset older than the changelog keeps its
tombstones (``delete.retention.ms``) is restored whole, not from its tail, so that no row
whose deletion compaction has since dropped from the log survives in it.

The changelog is created before the daemons with a retention of a few seconds. The old file is a
snapshot into which rows are written that nothing in the changelog names, as a row whose
deletion's tombstone compaction dropped: applied from its tail, the file keeps them and the
oracle finds them; restored whole, they are gone and the counts are exact. Each way in: a claim
(the new host alone, ``--standby none``), a standby that starts following (beside the first
host, every file complete), two processes sharing the old file, and a standby that runs and is
frozen for longer than that.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from sqlstate.changelog.topics import changelog_topic
from tests.acceptance.test_snapshot import take_snapshot
from tests.support.daemon import wait_for_positions
from tests.support.db import query, writing
from tests.support.faults import caught_up, daemon, produce, wait_stopped
from tests.support.kafka import TopicFactory, create_topic

RETENTION_MS = 3_000
# The frozen standby's: a standby reads records up to 0.9 of it old from their tail without
# restoring whole, so a slow start on a loaded machine does not restore it before its freeze.
FROZEN_RETENTION_MS = 8_000


async def _with_short_tombstones(
    bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    partitions: int,
    retention_ms: int = RETENTION_MS,
) -> str:
    """A new topic whose changelog, created before any daemon, keeps tombstones
    ``retention_ms``."""
    topic = await topic_factory(partitions=partitions)
    await create_topic(
        bootstrap,
        changelog_topic(group_id, topic),
        partitions,
        {"cleanup.policy": "compact", "delete.retention.ms": str(retention_ms)},
    )
    return topic


@pytest.mark.parametrize("way_in", ["claim", "standby", "shared"])
async def test_a_file_older_than_the_changelogs_tombstones_is_restored_whole(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    way_in: str,
) -> None:
    """``shared``: two processes start together on the one old file, each following the
    partitions the other owns: whichever forgets a partition first, the other never applies a
    chunk of it over the forgotten part."""
    topic = await _with_short_tombstones(kafka_bootstrap, topic_factory, group_id, 3)
    database, old = tmp_path / "state.db", tmp_path / "old.db"
    options = ("--changelog", "--standby", "none") if way_in == "claim" else ("--changelog",)
    first = daemon(kafka_bootstrap, topic, group_id, database, *options, name="first")
    later = [daemon(kafka_bootstrap, topic, group_id, old, *options, name="second")]
    if way_in == "shared":
        later.append(daemon(kafka_bootstrap, topic, group_id, old, *options, name="third"))
    try:
        first.start()
        await produce(kafka_bootstrap, topic, 600, partitions=3, seed=21)
        await caught_up(kafka_bootstrap, database, topic, [first])
        await take_snapshot(database, old)
        with writing(old) as conn:
            conn.executemany(
                "INSERT INTO key_counts (topic, partition, key, count) VALUES (?, ?, 'ghost', 7)",
                [(topic, partition) for partition in range(3)],
            )
        await produce(kafka_bootstrap, topic, 300, partitions=3, seed=22)
        await caught_up(kafka_bootstrap, database, topic, [first])
        if way_in != "standby":
            assert await first.terminate() == 0
        # Every record the old file lacks is now older than the tombstones are kept.
        await asyncio.sleep(RETENTION_MS / 1000 + 0.5)

        for host in later:
            host.start()
        await produce(kafka_bootstrap, topic, 300, partitions=3, seed=23)
        running = [first, *later] if way_in == "standby" else later
        verdict = await caught_up(kafka_bootstrap, old, topic, running)
        assert verdict.read_back == 1_200
        assert query(old, "SELECT count(*) FROM key_counts WHERE key = 'ghost'") == [(0,)]
        logs = "".join(host.log() for host in later)
        for partition in range(3):
            assert f"{topic}-{partition} is restored whole" in logs, logs[-4000:]
        if way_in == "standby":
            await caught_up(kafka_bootstrap, database, topic, running)
            # The first host's file stood at its changelogs' ends: nothing restored whole.
            assert "restored whole" not in first.log()
            assert await first.terminate() == 0
        for host in later:
            assert await host.terminate() == 0
    finally:
        await first.stop_quietly()
        for host in later:
            await host.stop_quietly()


async def test_a_standby_frozen_for_longer_than_the_tombstones_are_kept_restores_whole(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    """A standby that stops for longer than its changelog keeps tombstones (a process frozen, a
    machine suspended, a host cut off from Kafka) checks its partition against the horizon again
    before it applies what it reads on. The first host owns the one partition; the second,
    assigned nothing, follows it, and is frozen while the first counts on and its file gains
    rows nothing in the changelog names: applied from its tail, the file keeps them; restored
    whole, they are gone and the oracle is satisfied. (The freeze outlasts the second's session:
    the group drops it and takes it back, and the sticky assignor leaves the partition where it
    is.)"""
    topic = await _with_short_tombstones(
        kafka_bootstrap, topic_factory, group_id, 1, FROZEN_RETENTION_MS
    )
    owned, followed = tmp_path / "owner.db", tmp_path / "standby.db"
    first = daemon(kafka_bootstrap, topic, group_id, owned, "--changelog", name="first")
    second = daemon(kafka_bootstrap, topic, group_id, followed, "--changelog", name="second")
    try:
        first.start()
        await produce(kafka_bootstrap, topic, 300, partitions=1, seed=31)
        await caught_up(kafka_bootstrap, owned, topic, [first])
        second.start()
        await caught_up(kafka_bootstrap, followed, topic, [first, second])
        assert "restored whole" not in second.log()

        os.kill(second.pid, signal.SIGSTOP)
        await wait_stopped(second)
        with writing(followed, timeout=5) as conn:
            conn.execute(
                "INSERT INTO key_counts (topic, partition, key, count) VALUES (?, 0, 'ghost', 7)",
                (topic,),
            )
        await produce(kafka_bootstrap, topic, 300, partitions=1, seed=32)
        await caught_up(kafka_bootstrap, owned, topic, [first])
        # Every record the frozen file lacks is now older than the tombstones are kept.
        await asyncio.sleep(FROZEN_RETENTION_MS / 1000 + 0.5)
        second.resume()

        verdict = await caught_up(kafka_bootstrap, followed, topic, [first, second])
        assert verdict.read_back == 600
        assert query(followed, "SELECT count(*) FROM key_counts WHERE key = 'ghost'") == [(0,)]
        assert f"{topic}-0 is restored whole" in second.log(), second.log()[-4000:]
        assert "restored whole" not in first.log()
        assert await second.terminate() == 0
        assert await first.terminate() == 0
    finally:
        second.resume()
        await first.stop_quietly()
        await second.stop_quietly()


async def _changelog_keys(bootstrap: str, changelog: str) -> list[bytes]:
    """The keys of every committed record in partition 0 of ``changelog``, from its start."""
    tp = TopicPartition(changelog, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        keys: list[bytes] = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                keys += [record.key for record in records]
        return keys
    finally:
        await consumer.stop()


async def test_a_tombstone_that_compaction_dropped_is_not_missed(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    """The real thing: `latest` deletes a key, Kafka's log cleaner drops the deletion's
    tombstone from the changelog (short segments, a tombstone retention of 2 s), and a snapshot
    taken before the deletion then catches up: restored whole, it no longer holds the key. (A
    tail applied from the snapshot's offset would keep it: nothing in the log names it any
    more.)"""
    topic = await topic_factory(partitions=1)
    changelog = changelog_topic(group_id, topic)
    await create_topic(
        kafka_bootstrap,
        changelog,
        1,
        {
            "cleanup.policy": "compact",
            "delete.retention.ms": "2000",
            "segment.ms": "1000",
            "min.cleanable.dirty.ratio": "0.01",
            "min.compaction.lag.ms": "0",
        },
    )
    live, old = tmp_path / "live.db", tmp_path / "old.db"
    options = ("--changelog", "--standby", "none", "--processor", "latest")
    first = daemon(kafka_bootstrap, topic, group_id, live, *options, name="first")
    later = daemon(kafka_bootstrap, topic, group_id, old, *options, name="later")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    sent = 0

    async def send(key: bytes, value: bytes | None) -> None:
        nonlocal sent
        await producer.send_and_wait(topic, value, key=key, partition=0)
        sent += 1

    await producer.start()
    try:
        first.start()
        await send(b"k1", b"v")
        await send(b"k2", b"v")
        await wait_for_positions(live, {(topic, 0): sent}, 60, [first])
        await take_snapshot(live, old)
        await send(b"k1", None)
        # Records keep coming, so that segments roll and the cleaner runs (every 15 s): once
        # after the deletion, then again past the tombstone's retention, which drops it.
        deadline = time.monotonic() + 150
        while any(b'"k1"' in key for key in await _changelog_keys(kafka_bootstrap, changelog)):
            assert time.monotonic() < deadline, "the log cleaner did not drop the tombstone"
            for _ in range(4):
                await send(b"k3", b"tick")
                await asyncio.sleep(0.5)
        await wait_for_positions(live, {(topic, 0): sent}, 60, [first])
        assert await first.terminate() == 0
        expected = [("k2", "v"), ("k3", "tick")]
        assert query(live, "SELECT key, value FROM latest ORDER BY key") == expected

        later.start()
        await wait_for_positions(old, {(topic, 0): sent}, 60, [later])
        assert query(old, "SELECT key, value FROM latest ORDER BY key") == expected
        assert f"{topic}-0 is restored whole" in later.log(), later.log()[-4000:]
        assert await later.terminate() == 0
    finally:
        await producer.stop()
        await first.stop_quietly()
        await later.stop_quietly()
