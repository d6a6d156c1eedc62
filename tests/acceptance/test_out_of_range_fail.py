"""``--out-of-range fail`` changes nothing, ever: every way to exit 5 leaves the database file and
its -wal byte for byte as they were.

At a claim: records deleted below a stored position, the topic deleted and created again (empty,
or with records enough to hold the stored positions), and a recreated empty topic whose ID was
not recorded (a stored position past the end of the new log, under read_committed). While
running: the fetcher finds a position outside the log, and the topic is deleted and created
again. The first daemon is killed (kill -9) where it can be, so that its last batches are still
in the -wal: a read-write connection that closed normally would copy them into the main file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.support.daemon import Daemon, stored_positions, wait_for_positions
from tests.support.kafka import TopicFactory, delete_records, recreate_topic, started
from tests.support.workload import database_digests, end_offsets, keyed_messages, produce_keyed

OLD = keyed_messages(2_000, partitions=2, seed=11)


async def counted(
    bootstrap: str,
    topic_factory: TopicFactory,
    tmp_path: Path,
    daemons: list[Daemon],
    *extra_args: str,
) -> tuple[str, Path, Daemon]:
    """A topic with records, counted to its end by a daemon that is still running."""
    topic = await topic_factory(partitions=2)
    await produce_keyed(bootstrap, topic, OLD)
    database = tmp_path / "state.db"
    daemon = Daemon(
        bootstrap, [topic], f"first-{topic}", database, "--out-of-range", "fail", *extra_args
    )
    daemons.append(daemon.start())
    await wait_for_positions(database, await end_offsets(bootstrap, topic), 90, [daemon])
    return topic, database, daemon


async def killed_after_counting(
    bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, daemons: list[Daemon]
) -> tuple[str, Path]:
    topic, database, daemon = await counted(bootstrap, topic_factory, tmp_path, daemons)
    await daemon.kill()
    assert "state.db-wal" in database_digests(database), "the last batches are in the -wal"
    return topic, database


def write(database: Path, statement: str) -> None:
    conn = sqlite3.connect(database)
    try:
        with conn:
            conn.execute(statement)
    finally:
        conn.close()


async def refused_at_the_claim(
    bootstrap: str, topic: str, database: Path, daemons: list[Daemon]
) -> str:
    """Start a daemon under --out-of-range fail: it must exit 5 and leave the files alone."""
    before = database_digests(database)
    daemon = Daemon(
        bootstrap, [topic], f"second-{topic}", database, "--out-of-range", "fail", name="second"
    )
    daemons.append(daemon.start())
    assert await daemon.wait(60) == 5, daemon.log()[-3000:]
    assert database_digests(database) == before
    return daemon.log()


async def test_records_deleted_below_the_position_at_the_claim(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, daemons: list[Daemon]
) -> None:
    topic, database = await killed_after_counting(kafka_bootstrap, topic_factory, tmp_path, daemons)
    await produce_keyed(kafka_bootstrap, topic, keyed_messages(1_000, partitions=2, seed=12))
    stored = stored_positions(database)[(topic, 0)]
    await delete_records(kafka_bootstrap, topic, {0: stored + 300})
    log = await refused_at_the_claim(kafka_bootstrap, topic, database, daemons)
    assert f"stored position {stored} of {topic}-0 is outside the log" in log


@pytest.mark.parametrize("new_records", [0, 3_000])
async def test_a_topic_recreated_before_the_claim(
    new_records: int,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic, database = await killed_after_counting(kafka_bootstrap, topic_factory, tmp_path, daemons)
    await recreate_topic(kafka_bootstrap, topic, 2)
    # With 3,000 records the new log holds both stored positions: only the topic's ID tells.
    await produce_keyed(kafka_bootstrap, topic, keyed_messages(new_records, partitions=2, seed=13))
    log = await refused_at_the_claim(kafka_bootstrap, topic, database, daemons)
    assert f"topic {topic} was deleted and created again" in log


async def test_a_recreated_empty_topic_whose_id_was_not_recorded(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Without the ID, a stored position past the end of the new, empty log tells: the end read
    under read_committed (the last stable offset) is checked against the log's real end."""
    topic, database, daemon = await counted(kafka_bootstrap, topic_factory, tmp_path, daemons)
    assert await daemon.terminate() == 0
    write(database, "DELETE FROM topics")
    await recreate_topic(kafka_bootstrap, topic, 2)
    log = await refused_at_the_claim(kafka_bootstrap, topic, database, daemons)
    assert "is outside the log [0, 0)" in log


async def refused_while_running(daemon: Daemon, database: Path, before: dict[str, str]) -> str:
    assert await daemon.wait(60) == 5, daemon.log()[-3000:]
    assert database_digests(database) == before
    return daemon.log()


async def idle(database: Path) -> dict[str, str]:
    """The files once the daemon, caught up, has nothing left to commit."""
    await asyncio.sleep(1.0)
    before = database_digests(database)
    assert "state.db-wal" in before, "the batches so far are in the -wal"
    return before


async def test_a_position_found_outside_the_log_while_running(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, daemons: list[Daemon]
) -> None:
    topic, database, daemon = await counted(kafka_bootstrap, topic_factory, tmp_path, daemons)
    stored = stored_positions(database)[(topic, 0)]
    # Records beyond the position that a read_committed daemon cannot read yet (a transaction
    # left open), then deleted up to past the position: its next fetch is out of range, and it
    # has read nothing new meanwhile.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic}-tx")
    async with started(producer):
        await producer.begin_transaction()
        try:
            for _ in range(600):
                await producer.send(topic, b"v", key=b"k", partition=0)
            await producer.flush()
            before = await idle(database)
            await delete_records(kafka_bootstrap, topic, {0: stored + 300})
            log = await refused_while_running(daemon, database, before)
        finally:
            await producer.abort_transaction()
    assert f"stored position {stored} of {topic}-0 is outside the log" in log


@pytest.mark.parametrize("new_records", [0, 200])
async def test_a_topic_recreated_while_running(
    new_records: int,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    # A running daemon asks for the topic's ID again at its next metadata refresh: every 2 s
    # rather than the default 30 s, which this test would otherwise spend waiting.
    topic, database, daemon = await counted(
        kafka_bootstrap, topic_factory, tmp_path, daemons, "--metadata-max-age", "2"
    )
    before = await idle(database)
    await recreate_topic(kafka_bootstrap, topic, 2)
    # Fewer records than the stored positions: none of them is fetched from there.
    await produce_keyed(kafka_bootstrap, topic, keyed_messages(new_records, partitions=2, seed=14))
    log = await refused_while_running(daemon, database, before)
    assert f"topic {topic} was deleted and created again" in log
