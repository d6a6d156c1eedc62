"""A locked database: another process holds a write transaction longer than the busy timeout.

The daemon must wait, retry with a warning, lose and double-count nothing, and catch up once the
lock is released. The lock is held by the test process itself, through its own SQLite connection,
which for the daemon is exactly another process holding ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tests.support.daemon import wait_for_progress
from tests.support.faults import caught_up, daemon, produce, wait_for_log
from tests.support.kafka import TopicFactory

LOCK_HELD_S = 5.0


async def test_locked_database_is_waited_for_then_caught_up(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
) -> None:
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    await produce(kafka_bootstrap, topic, 600, partitions=3, seed=1)
    sqlstate = daemon(kafka_bootstrap, topic, group_id, database, "--busy-timeout", "1").start()
    try:
        await wait_for_progress(database, 600, timeout=60)

        locker = sqlite3.connect(database, isolation_level=None, timeout=10)
        try:
            locker.execute("BEGIN IMMEDIATE")
            await produce(kafka_bootstrap, topic, 900, partitions=3, seed=2)
            await wait_for_log(sqlstate, "is locked by another connection", timeout=30)
            await asyncio.sleep(LOCK_HELD_S)
            assert sqlstate.running(), sqlstate.log()[-3000:]
        finally:
            locker.execute("ROLLBACK")
            locker.close()

        verdict = await caught_up(kafka_bootstrap, database, topic, [sqlstate])
        assert verdict.read_back == 1500
        assert "retrying" in sqlstate.log()
        assert await sqlstate.terminate() == 0
    finally:
        await sqlstate.stop_quietly()
