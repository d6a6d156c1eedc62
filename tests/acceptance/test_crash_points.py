"""Crash at every step of the cycle: kill -9 at a named point, restart, and the oracle holds.

The fault wrapper kills the daemon from inside at exactly one point (see
``tests/support/faulty_daemon.py``): after a fetch, inside the batch transaction after the upsert,
right after COMMIT, inside the revoke and the assign callbacks (before and after the claim
transaction) and in the middle of the schema migration. A plain daemon is then started on the same
database; it must count everything exactly once.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_for_progress
from tests.support.db import query
from tests.support.faults import caught_up, daemon, produce, wait_for_log
from tests.support.kafka import TopicFactory

# point -> the hit at which to crash (batch points crash mid-stream, not on the first batch).
CYCLE_POINTS = {
    "after_fetch": 4,
    "after_upsert": 4,
    "after_commit": 4,
    "before_claim": 1,
    "after_claim": 1,
    "in_migration": 2,
}


async def crashed(victim: Daemon) -> None:
    """Wait for the daemon to die of its own SIGKILL."""
    code = await victim.wait(60)
    assert code == -signal.SIGKILL, victim.log()[-3000:]


@pytest.mark.parametrize("point", sorted(CYCLE_POINTS))
async def test_crash_at_a_point_of_the_cycle_then_restart(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    point: str,
) -> None:
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    await produce(kafka_bootstrap, topic, 600, partitions=3, seed=1)
    victim = daemon(
        kafka_bootstrap,
        topic,
        group_id,
        database,
        name="victim",
        fault=point,
        at=CYCLE_POINTS[point],
    ).start()
    survivor = daemon(kafka_bootstrap, topic, group_id, database, name="restarted")
    try:
        await crashed(victim)
        assert f"FAULT {point} {CYCLE_POINTS[point]}" in victim.log()
        if point == "in_migration":
            # The migration is one transaction: the crash left no half-made schema behind.
            assert query(database, "SELECT name FROM sqlite_master WHERE type = 'table'") == []

        survivor.start()
        await produce(kafka_bootstrap, topic, 300, partitions=3, seed=2)
        verdict = await caught_up(kafka_bootstrap, database, topic, [victim, survivor])
        assert verdict.read_back == 900
        assert await survivor.terminate() == 0
    finally:
        await victim.stop_quietly()
        await survivor.stop_quietly()


async def test_crash_inside_the_revoke_callback_then_restart(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
) -> None:
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    await produce(kafka_bootstrap, topic, 3000, partitions=3, seed=3)
    victim = daemon(
        kafka_bootstrap, topic, group_id, database, name="victim", fault="in_revoke", at=1
    ).start()
    other = daemon(kafka_bootstrap, topic, group_id, database, name="other")
    again = daemon(kafka_bootstrap, topic, group_id, database, name="restarted")
    try:
        await wait_for_log(victim, "assigned partitions:")
        await wait_for_progress(database, 200, timeout=60)
        # A second member joins: the rebalance revokes the victim's partitions mid-stream.
        other.start()
        await crashed(victim)
        assert "FAULT in_revoke 1" in victim.log()

        again.start()
        await produce(kafka_bootstrap, topic, 300, partitions=3, seed=4)
        verdict = await caught_up(kafka_bootstrap, database, topic, [victim, other, again])
        assert verdict.read_back == 3300
        assert await other.terminate() == 0
        assert await again.terminate() == 0
    finally:
        for process in (victim, other, again):
            await process.stop_quietly()
