"""A full disk: the daemon stops with a clear error, commits no partial batch, and recovers.

The disk is made "full" through ``PRAGMA max_page_count`` on the daemon's own connection (the
pragma is per connection, so the fault wrapper sets it right after the daemon opens the database):
the file may grow by a few pages only. Large distinct keys fill those pages within a few batches.
SQLITE_FULL rolls the batch back; the daemon exits with code 3 (database unusable) and says why.
Once there is room again (a restart without the limit), it catches up and the oracle holds.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import AIOKafkaProducer

from tests.support.faults import caught_up, daemon
from tests.support.kafka import TopicFactory
from tests.support.oracle import assert_exactly_once

ROOM_PAGES = 200  # a batch of 50 such keys takes about 50 pages (rows and index)


async def produce_large_keys(bootstrap: str, topic: str, count: int, start: int) -> None:
    """Records with distinct 2 KB keys: each is a new row, and fills the file fast."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, b"v", key=f"{i:06d}".encode() * 340, partition=i % 2)
            for i in range(start, start + count)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def test_full_disk_stops_cleanly_and_recovers_after_restart(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = await topic_factory(partitions=2)
    database = tmp_path / "state.db"
    await produce_large_keys(kafka_bootstrap, topic, 400, start=0)
    full = daemon(
        kafka_bootstrap,
        topic,
        group_id,
        database,
        name="full",
        wrapper_args=["--max-page-count-slack", str(ROOM_PAGES)],
    ).start()
    again = daemon(kafka_bootstrap, topic, group_id, database, name="again")
    try:
        assert await full.wait(60) == 3, full.log()[-3000:]
        log = full.log()
        assert "database or disk is full" in log
        assert "the transaction was rolled back" in log
        assert "Traceback" not in log.split("sqlstate: error:")[-1]
        # What was committed before the disk filled is whole: state and positions agree.
        stopped_at = await assert_exactly_once(kafka_bootstrap, database, topic)
        assert 0 < stopped_at.read_back < 400

        again.start()
        await produce_large_keys(kafka_bootstrap, topic, 100, start=400)
        verdict = await caught_up(kafka_bootstrap, database, topic, [full, again])
        assert verdict.read_back == 500
        assert await again.terminate() == 0
    finally:
        await full.stop_quietly()
        await again.stop_quietly()
