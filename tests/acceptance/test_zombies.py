"""Zombie fencing, made deterministic by freezing a daemon at a chosen point of its cycle.

A "zombie" holds a batch it has fetched and processed but not committed, and is removed from the
group meanwhile (here: frozen with SIGSTOP past the session timeout, as a paused VM or a stalled
process would be). The fault wrapper stops the process itself right before the batch transaction
begins, so the test knows exactly what it holds; SIGCONT lets it carry on from that very point.

- Zombie second: the new owner claims (bumping the epoch) and commits first; the zombie's commit
  then fails the position compare-and-set, is logged as fenced and dropped.
- Zombie first: the zombie commits after leaving the group but before the new owner claims (the
  new owner is frozen just before its claim transaction); the claim then reads the moved position.
  The claim bumps the epoch and reads the position in one transaction, so a zombie can never
  commit *between* a claim and the first commit of the new owner.
- The same-epoch branch of the fencing: the position moves under a daemon without a new claim
  (a writer with the same epoch); its commit misses, it re-reads the position and re-seeks there.

Each test ends with the oracle.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from sqlstate.processors.keys import stored_key
from tests.support.daemon import (
    Daemon,
    stored_positions,
    wait_for_positions,
    wait_for_progress,
)
from tests.support.db import writing
from tests.support.faults import (
    caught_up,
    daemon,
    produce,
    wait_for_log,
    wait_stopped,
)
from tests.support.kafka import TopicFactory, log_end_offsets

ASSIGNED = re.compile(r"assigned partitions: (.*)")
CLAIMED = re.compile(r"(\S+)-(\d+)@(\d+) \(epoch (\d+)\)")


def first_claims(log: str) -> dict[int, int]:
    """{partition: offset} of the first non-empty "assigned partitions" line of a daemon log."""
    for match in ASSIGNED.finditer(log):
        claims = {int(p): int(offset) for _, p, offset, _ in CLAIMED.findall(match.group(1))}
        if claims:
            return claims
    raise AssertionError(f"no partitions were ever assigned:\n{log[-3000:]}")


async def resume(process: Daemon) -> None:
    assert process.process is not None
    process.process.send_signal(signal.SIGCONT)
    await asyncio.sleep(0)


async def test_zombie_commits_after_the_new_owner_and_is_fenced(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
) -> None:
    topic = await topic_factory(partitions=2)
    database = tmp_path / "state.db"
    await produce(kafka_bootstrap, topic, 2000, partitions=2, seed=1)
    zombie = daemon(
        kafka_bootstrap,
        topic,
        group_id,
        database,
        name="zombie",
        fault="before_commit",
        at=3,
        action="stop",
    ).start()
    owner = daemon(kafka_bootstrap, topic, group_id, database, name="owner")
    try:
        await wait_stopped(zombie)
        frozen_at = stored_positions(database)

        # The new member's join waits for the frozen one, which the coordinator then expels
        # (session timeout): the new owner claims every partition and works through the topic.
        owner.start()
        ends = await log_end_offsets(kafka_bootstrap, topic, isolation_level="read_committed")
        await wait_for_positions(
            database, {(topic, p): end for p, end in ends.items()}, 90, [zombie, owner]
        )
        claims = first_claims(owner.log())
        assert sorted(claims) == [0, 1]
        assert all(claims[p] == frozen_at[(topic, p)] for p in claims)

        await resume(zombie)
        await wait_for_log(zombie, "fenced on ")
        assert zombie.running()
        # The batch it held (50 records, from one partition or both) is dropped, and so is any
        # batch it had already fetched for the other partition before it learns it lost both.
        dropped = re.findall(r"fenced on .* dropped a batch of (\d+) records", zombie.log())
        assert sum(map(int, dropped)) >= 50

        # Both go on as ordinary members: more traffic, split between them, counted once.
        await produce(kafka_bootstrap, topic, 500, partitions=2, seed=2)
        verdict = await caught_up(kafka_bootstrap, database, topic, [zombie, owner])
        assert verdict.read_back == 2500
        assert await zombie.terminate() == 0
        assert await owner.terminate() == 0
    finally:
        await zombie.stop_quietly()
        await owner.stop_quietly()


async def test_zombie_commits_before_the_new_owner_claims(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
) -> None:
    topic = await topic_factory(partitions=2)
    database = tmp_path / "state.db"
    await produce(kafka_bootstrap, topic, 2000, partitions=2, seed=3)
    zombie = daemon(
        kafka_bootstrap,
        topic,
        group_id,
        database,
        name="zombie",
        fault="before_commit",
        at=3,
        action="stop",
    ).start()
    owner = daemon(
        kafka_bootstrap,
        topic,
        group_id,
        database,
        name="owner",
        fault="before_claim",
        at=1,
        action="stop",
    )
    try:
        await wait_stopped(zombie)
        frozen_at = stored_positions(database)

        # The new owner is given the partitions once the zombie is expelled, and freezes just
        # before its claim transaction.
        owner.start()
        await wait_stopped(owner, timeout=90)
        assert "assigned partitions:" not in owner.log()

        # The zombie, no longer a member, commits the batch it held: nobody has claimed since,
        # so its compare-and-set holds and the position moves.
        await resume(zombie)
        # At least its held batch of 50; it may commit more before it notices it was expelled.
        await wait_for_progress(database, sum(frozen_at.values()) + 50, timeout=30)
        moved = stored_positions(database)
        assert "fenced on " not in zombie.log()

        # The new owner's claim reads the moved position (or a later one: the zombie rejoins and
        # may own and advance the partitions while the new owner is still frozen).
        await resume(owner)
        await wait_for_log(owner, "assigned partitions:")
        claims = first_claims(owner.log())
        assert all(claims[p] >= moved[(topic, p)] for p in claims)

        await produce(kafka_bootstrap, topic, 500, partitions=2, seed=4)
        verdict = await caught_up(kafka_bootstrap, database, topic, [zombie, owner])
        assert verdict.read_back == 2500
        assert await zombie.terminate() == 0
        assert await owner.terminate() == 0
    finally:
        await zombie.stop_quietly()
        await owner.stop_quietly()


async def count_range(
    bootstrap: str, tp: TopicPartition, start: int, end: int
) -> Counter[str | bytes | None]:
    """Keys of the records [start, end) of one partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    counts: Counter[str | bytes | None] = Counter()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        async with asyncio.timeout(30):
            while await consumer.position(tp) < end:
                for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                    counts.update(stored_key(r.key) for r in records if r.offset < end)
    finally:
        await consumer.stop()
    return counts


async def test_position_moved_under_the_same_epoch_is_followed(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
) -> None:
    topic = await topic_factory(partitions=1)
    tp = TopicPartition(topic, 0)
    database = tmp_path / "state.db"
    await produce(kafka_bootstrap, topic, 1000, partitions=1, seed=5)
    sqlstate = daemon(
        kafka_bootstrap, topic, group_id, database, fault="before_commit", at=3, action="stop"
    ).start()
    try:
        await wait_stopped(sqlstate)
        # It holds the records from its position on (its third batch). Another writer with the
        # same epoch counts the next 20 and moves the position, in one transaction, behind its back.
        held_from = stored_positions(database)[(topic, 0)]
        moved_to = held_from + 20
        counts = await count_range(kafka_bootstrap, tp, held_from, moved_to)
        with writing(database, isolation_level=None) as conn:
            conn.execute("BEGIN IMMEDIATE")
            (epoch,) = conn.execute("SELECT epoch FROM positions").fetchone()
            changed = conn.execute(
                "UPDATE positions SET next_offset = ? WHERE next_offset = ? AND epoch = ?",
                (moved_to, held_from, epoch),
            ).rowcount
            assert changed == 1
            conn.executemany(
                "INSERT INTO key_counts (topic, partition, key, count) VALUES (?, 0, ?, ?)"
                " ON CONFLICT (topic, partition, ifnull(key, 0))"
                " DO UPDATE SET count = count + excluded.count",
                [(topic, key, count) for key, count in counts.items()],
            )
            conn.execute("COMMIT")

        await resume(sqlstate)
        await wait_for_log(
            sqlstate, f"position of {topic}-0 moved to {moved_to} while we expected {held_from}"
        )
        verdict = await caught_up(kafka_bootstrap, database, topic, [sqlstate])
        assert verdict.read_back == 1000
        assert "fenced on " not in sqlstate.log()
        assert await sqlstate.terminate() == 0
    finally:
        await sqlstate.stop_quietly()
