"""Rebalances while the database is locked: one rebalance stays one rebalance.

aiokafka sends no heartbeat from JoinGroup until ``on_partitions_assigned`` returns, and the group
waits for a member's revoke only up to the rebalance timeout. A claim that waits for another
process's write lock longer than that got the member expelled right after its assignment, and
every rejoin started the same wait again. The callbacks now bound their waits: what cannot be
claimed in time stays paused and is claimed from the batch loop once the database is free.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path

from tests.support.daemon import Daemon
from tests.support.faults import caught_up, daemon, produce, wait_for_log
from tests.support.kafka import TopicFactory

LOCK_HELD_S = 15.0
# Longer than two session timeouts (6 s): a member expelled after the lock was released would
# have rejoined, and rebalanced the group once more, by then.
SETTLE_S = 14.0


ASSIGNED = re.compile(r"sqlstate\.rebalance: assigned .*; generation (\d+)$", re.MULTILINE)


def generations(member: Daemon) -> list[int]:
    """The group generation of each assignment the member received, claimed at once or not."""
    return [int(generation) for generation in ASSIGNED.findall(member.log())]


async def test_a_database_locked_across_a_rebalance_gives_one_rebalance(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=6)
    database = tmp_path / "state.db"
    await produce(kafka_bootstrap, topic, 2400, partitions=6, seed=1)
    first, second, third = members = [
        daemon(kafka_bootstrap, topic, group_id, database, "--busy-timeout", "1", name=name).start()
        for name in ("first", "second", "third")
    ]
    daemons.extend(members)
    for member in members:
        await wait_for_log(member, "assigned partitions:")
    await caught_up(kafka_bootstrap, database, topic, members)
    # Every member's assignment of the last generation is logged (a claim that took longer
    # than the callback's budget is logged once the batch loop has made it).
    settled_by = time.monotonic() + 30
    while True:
        before = [generations(member) for member in members]
        if len({gens[-1] for gens in before}) == 1 or time.monotonic() > settled_by:
            break
        await asyncio.sleep(0.2)
    assert before[0][-1] == before[1][-1] == before[2][-1], before
    before = before[:2]

    locker = sqlite3.connect(database, isolation_level=None, timeout=10)
    try:
        locker.execute("BEGIN IMMEDIATE")
        locked_at = time.monotonic()
        # Batches arrive that cannot commit; then a member dies, and the group rebalances once
        # its session times out: the other two revoke with a batch in flight and claim their
        # new partitions while the file is still locked, for longer than a session timeout.
        await produce(kafka_bootstrap, topic, 1200, partitions=6, seed=2)
        await third.kill()
        await asyncio.sleep(max(0.0, LOCK_HELD_S - (time.monotonic() - locked_at)))
        for member in (first, second):
            assert member.running(), member.log()[-3000:]
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    verdict = await caught_up(kafka_bootstrap, database, topic, [first, second], timeout=120)
    assert verdict.read_back == 3600
    await asyncio.sleep(SETTLE_S)
    # One rebalance: each member received exactly one assignment, in the generation right after
    # the one before the lock. A member expelled while it waited would have been assigned in a
    # later generation (the group rebalances again without it, then again when it rejoins).
    after = [generations(m)[len(gens) :] for m, gens in zip((first, second), before, strict=True)]
    logs = "\n".join(f"== {m.log_path.name}\n{m.log()[-5000:]}" for m in (first, second))
    assert after == [[before[0][-1] + 1]] * 2, logs
    for member in (first, second):
        assert await member.terminate() == 0
