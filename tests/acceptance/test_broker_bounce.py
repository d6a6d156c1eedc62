"""The broker killed with kill -9 and restarted while the daemon runs.

The daemon must ride it out (aiokafka reconnects; a batch whose commit raced the crash is either
in the database with its position or not at all), then catch up with what is produced after the
restart, with the oracle holding. The broker is down for several seconds, longer than the
session timeout, so the group itself is rebuilt on the restarted broker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.broker import AsyncBrokerControl
from tests.support.daemon import wait_for_progress
from tests.support.faults import caught_up, daemon, produce, wait_for_log
from tests.support.kafka import TopicFactory

DOWN_S = 8.0


async def test_broker_kill_and_restart_while_running(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    broker_control: AsyncBrokerControl,
) -> None:
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    await produce(kafka_bootstrap, topic, 3000, partitions=3, seed=1)
    first = daemon(kafka_bootstrap, topic, group_id, database, name="first").start()
    second = daemon(kafka_bootstrap, topic, group_id, database, name="second").start()
    try:
        # Kill the broker once both members run (a start that cannot reach Kafka exits with
        # code 4 by design) and are still working through the backlog.
        await wait_for_log(first, "assigned partitions:")
        await wait_for_log(second, "assigned partitions:")
        await wait_for_progress(database, 300, timeout=60)
        await broker_control.kill()
        await asyncio.sleep(DOWN_S)
        assert first.running(), first.log()[-3000:]
        assert second.running(), second.log()[-3000:]
        await broker_control.start()

        await produce(kafka_bootstrap, topic, 600, partitions=3, seed=2)
        verdict = await caught_up(kafka_bootstrap, database, topic, [first, second], timeout=120)
        assert verdict.read_back == 3600
        assert first.running()
        assert second.running()
        assert await first.terminate() == 0
        assert await second.terminate() == 0
    finally:
        await first.stop_quietly()
        await second.stop_quietly()


async def test_daemon_started_while_the_broker_is_down_waits_for_it(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    broker_control: AsyncBrokerControl,
) -> None:
    """A daemon (re)started during a broker restart keeps trying for --connect-timeout."""
    topic = await topic_factory(partitions=2)
    database = tmp_path / "state.db"
    await produce(kafka_bootstrap, topic, 300, partitions=2, seed=3)
    sqlstate = daemon(kafka_bootstrap, topic, group_id, database, "--connect-timeout", "120")
    try:
        await broker_control.kill()
        sqlstate.start()
        # Its first try failed; it keeps trying while the broker starts again (seconds).
        await wait_for_log(sqlstate, "cannot reach Kafka at")
        assert sqlstate.running(), sqlstate.log()[-3000:]
        await broker_control.start()

        verdict = await caught_up(kafka_bootstrap, database, topic, [sqlstate], timeout=120)
        assert verdict.read_back == 300
        assert "retrying" in sqlstate.log()
        assert await sqlstate.terminate() == 0
    finally:
        await sqlstate.stop_quietly()
