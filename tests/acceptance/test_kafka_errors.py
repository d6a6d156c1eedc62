"""Kafka's errors while running, from a real broker: waited out when transient, exit 7 when not.

Authorization is not here: the test broker has no ACLs, so the authorization errors are checked
where they are classified (tests/unit/test_kafka_errors.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

from sqlstate.processors.keys import stored_key
from tests.support.broker import AsyncBrokerControl
from tests.support.daemon import Daemon, stored_positions
from tests.support.faults import caught_up, daemon, out_of_range_while_running, wait_for_log
from tests.support.kafka import TopicFactory, delete_topics, produce
from tests.support.oracle import assert_exactly_once
from tests.support.workload import db_counts


def keys(count: int, seed: int) -> list[tuple[bytes, bytes, int]]:
    """``count`` (key, value, partition) records over 3 partitions and 20 keys."""
    return [(f"k{(i * 7 + seed) % 20}".encode(), b"v", i % 3) for i in range(count)]


async def test_a_topic_deleted_while_running_exits_7(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    sent = await produce(kafka_bootstrap, topic, keys(600, seed=1))
    # Metadata every second: aiokafka notices the deletion at its next refresh.
    sqlstate = daemon(kafka_bootstrap, topic, group_id, database, "--metadata-max-age", "1")
    daemons.append(sqlstate.start())
    await caught_up(kafka_bootstrap, database, topic, [sqlstate])

    await delete_topics(kafka_bootstrap, [topic])
    started = time.monotonic()
    # Before: it sat idle for ever, its partitions taken out of its assignment without a word.
    assert await sqlstate.wait(60) == 7, sqlstate.log()[-3000:]
    assert time.monotonic() - started < 30
    assert f"topic {topic} no longer exists in Kafka" in sqlstate.log()
    # Everything produced was counted before, and the database stays as it was.
    assert db_counts(database, topic) == Counter((s.partition, stored_key(s.key)) for s in sent)
    assert sum(stored_positions(database).values()) == 600


async def test_a_corrupt_record_exits_7_without_counting_past_it(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    broker_control: AsyncBrokerControl,
    daemons: list[Daemon],
) -> None:
    """A byte flipped in the broker's log segment: the batch fails its CRC check in the client.

    The broker serves a segment as it is on disk (it does not check CRCs when serving a fetch),
    so the damage reaches the consumer exactly as a disk fault on the broker would.
    """
    topic = await topic_factory(partitions=1)
    database = tmp_path / "state.db"
    counted = await produce(
        kafka_bootstrap, topic, [(f"k{i % 5}".encode(), b"v", 0) for i in range(25)]
    )
    sqlstate = daemon(kafka_bootstrap, topic, group_id, database)
    daemons.append(sqlstate.start())
    await caught_up(kafka_bootstrap, database, topic, [sqlstate])
    assert await sqlstate.terminate() == 0
    # One batch per send, so that the damaged batch holds one record: offset 25.
    for i in range(15):
        value = b"CORRUPT-ME" if i == 0 else b"v"
        await produce(kafka_bootstrap, topic, [(f"k{i % 5}".encode(), value, 0)])
    segment = broker_control.sync.data_dir / f"{topic}-0" / "00000000000000000000.log"
    at = segment.read_bytes().index(b"CORRUPT-ME")
    with segment.open("r+b") as file:
        file.seek(at)
        file.write(b"X")

    sqlstate.start()
    assert await sqlstate.wait(60) == 7, sqlstate.log()[-3000:]
    log = sqlstate.current_log()
    assert "failed its CRC check" in log
    assert "Traceback" not in log.rpartition("sqlstate: error:")[2]
    # Everything before the damaged record is counted, exactly; nothing at or past it.
    assert stored_positions(database) == {(topic, 0): 25}
    assert db_counts(database, topic) == Counter((0, stored_key(s.key)) for s in counted)


async def lookup_with_kafka_down(
    bootstrap: str,
    topic: str,
    group_id: str,
    database: Path,
    broker: AsyncBrokerControl,
    daemons: list[Daemon],
) -> Daemon:
    """A running daemon looking up the log's bounds of a partition found out of range, with the
    broker stopped just before the lookup."""
    await produce(bootstrap, topic, keys(600, seed=1))
    # Frozen when it starts to look up the bounds; let go once the broker is down.
    sqlstate = daemon(
        bootstrap,
        topic,
        group_id,
        database,
        "--shutdown-timeout",
        "3",
        fault="out_of_range_bounds",
        action="stop",
    )
    daemons.append(sqlstate.start())
    await caught_up(bootstrap, database, topic, [sqlstate])
    await out_of_range_while_running(bootstrap, topic, database, sqlstate, keys(300, seed=2))
    await wait_for_log(sqlstate, "FAULT out_of_range_bounds 1")
    # A clean stop: after kill -9 the broker may forget a delete_records made less than a
    # minute before (it checkpoints log start offsets once a minute).
    await broker.stop()
    os.kill(sqlstate.pid, signal.SIGCONT)
    return sqlstate


async def test_kafka_down_during_an_out_of_range_lookup_is_waited_out(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    broker_control: AsyncBrokerControl,
    daemons: list[Daemon],
) -> None:
    """Before, the lookup waited for aiokafka's request timeout (40 s), then exited 1."""
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    sqlstate = await lookup_with_kafka_down(
        kafka_bootstrap, topic, group_id, database, broker_control, daemons
    )
    await wait_for_log(sqlstate, "retrying with backoff until Kafka answers again", timeout=30)
    await asyncio.sleep(5)
    assert sqlstate.running(), sqlstate.log()[-3000:]
    await broker_control.start()

    await wait_for_log(sqlstate, "Kafka answers again after", timeout=60)
    await caught_up(kafka_bootstrap, database, topic, [sqlstate], timeout=90)
    log = sqlstate.log()
    # One line when the episode starts, one when it ends, however many errors in between.
    assert log.count("retrying with backoff until Kafka answers again") == 1, log[-4000:]
    assert log.count("Kafka answers again after") == 1, log[-4000:]
    assert "discarded the partition's state" in log
    assert await sqlstate.terminate() == 0
    await assert_exactly_once(kafka_bootstrap, database, topic)


async def test_sigterm_while_kafka_is_down_during_a_lookup_stops_at_once(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    broker_control: AsyncBrokerControl,
    daemons: list[Daemon],
) -> None:
    """Before, the lookup held up the stop for aiokafka's request timeout (40 s)."""
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    sqlstate = await lookup_with_kafka_down(
        kafka_bootstrap, topic, group_id, database, broker_control, daemons
    )
    # SIGTERM once the lookup has failed and is being retried.
    await wait_for_log(sqlstate, "retrying with backoff until Kafka answers again", timeout=30)
    started = time.monotonic()
    assert await sqlstate.terminate(timeout=30) == 0, sqlstate.log()[-3000:]
    # The shutdown timeout (3 s) bounds leaving the group; the rest is the interpreter.
    assert time.monotonic() - started < 3 + 5
