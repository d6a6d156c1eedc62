"""sqlstate's positions and lag in Kafka's own tooling, checked with Kafka's own command.

The daemon copies every committed position to its group's offsets in Kafka, so that
``kafka-consumer-groups.sh --describe`` (and the lag exporters that read the same offsets) show
its lag. These tests run that very command (``tests/support/kafka_tools.py``) against the real
broker and compare what it prints with the ``positions`` table: while the daemon runs, caught up
and held back by an open transaction; after it stops; after an operator moves the group's offsets
in Kafka with the tool (a restart still seeks from the database, and the counts stay exact); and
when a zombie's copy arrives after another member took its partitions (the coordinator refuses
it). A daemon with ``--no-commit-offsets-to-kafka`` commits nothing there.

Each run of Kafka's command starts a JVM (about three seconds), and the first one may fetch its
jars with Maven: these tests get a longer timeout.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from sqlstate.app.group_offsets import OFFSET_METADATA
from tests.support.daemon import Daemon, stored_positions, wait_for_positions
from tests.support.db import query
from tests.support.faults import caught_up, daemon, produce, wait_for_log, wait_stopped
from tests.support.kafka import TopicFactory, committed_offsets, started
from tests.support.kafka_tools import (
    ONE_COMMAND_AT_A_TIME,
    GroupOffset,
    describe_offsets,
    reset_offsets,
)
from tests.support.oracle import assert_exactly_once
from tests.support.workload import produce_keyed

pytestmark = pytest.mark.timeout(300)

ASSIGNED = re.compile(r"assigned partitions: (.*)")
CLAIMED = re.compile(r"(\S+)-(\d+)@(\d+) \(epoch \d+\)")
SERVING = re.compile(r"serving (http://[0-9.]+:\d+)/metrics")


def positions_table(database: Path, topic: str) -> dict[int, int]:
    """{partition: next_offset} from the positions table, read as any SQLite client would."""
    rows = query(database, "SELECT partition, next_offset FROM positions WHERE topic = ?", (topic,))
    return {partition: next_offset for partition, next_offset in rows}


def evenly(per_partition: int, partitions: int, seed: int) -> list[tuple[int, bytes | None]]:
    """``per_partition`` keyed records on each partition: every log end moves by as much."""
    return [
        (partition, f"k{(i * 7 + seed) % 31}".encode())
        for i in range(per_partition)
        for partition in range(partitions)
    ]


async def kafka_copy_of_positions(
    bootstrap: str, group_id: str, topic: str, database: Path, timeout: float = 30.0
) -> dict[int, int]:
    """Wait until the group's offsets in Kafka equal the positions table; return them.

    The copy is committed after each SQLite transaction, asynchronously: it follows shortly.
    Every offset must carry the metadata that says it is only a copy.
    """
    deadline = time.monotonic() + timeout
    while True:
        stored = positions_table(database, topic)
        committed = await committed_offsets(bootstrap, group_id, topic)
        if stored and {p: offset for p, (offset, _) in committed.items()} == stored:
            assert {metadata for _, metadata in committed.values()} == {OFFSET_METADATA}
            return stored
        if time.monotonic() > deadline:
            raise AssertionError(
                f"Kafka's offsets of {group_id} {committed} never matched the positions {stored}"
            )
        await asyncio.sleep(0.2)


async def caught_up_daemon(
    bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    database: Path,
    daemons: list[Daemon],
    per_partition: int,
    *extra_args: str,
) -> tuple[str, Daemon]:
    """A new topic of 3 partitions holding ``per_partition`` records each, and a daemon that has
    counted them all."""
    topic = await topic_factory(partitions=3)
    await produce_keyed(bootstrap, topic, evenly(per_partition, 3, seed=per_partition))
    running = Daemon(bootstrap, [topic], group_id, database, *extra_args).start()
    daemons.append(running)
    ends = {(topic, partition): per_partition for partition in range(3)}
    await wait_for_positions(database, ends, 60, [running])
    return topic, running


def by_partition(rows: list[GroupOffset], topic: str) -> dict[int, GroupOffset]:
    assert {row.topic for row in rows} == {topic}, rows
    return {row.partition: row for row in rows}


@ONE_COMMAND_AT_A_TIME
async def test_kafka_tool_shows_the_stored_positions_and_the_lag(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    daemons: list[Daemon],
) -> None:
    database = tmp_path / "state.db"
    topic, running = await caught_up_daemon(
        kafka_bootstrap, topic_factory, group_id, database, daemons, 400
    )

    # Running and caught up: every partition at its stored position, no lag, a member owns it.
    stored = await kafka_copy_of_positions(kafka_bootstrap, group_id, topic, database)
    assert stored == {0: 400, 1: 400, 2: 400}
    _, rows = await describe_offsets(kafka_bootstrap, group_id)
    for partition, row in by_partition(rows, topic).items():
        assert (row.current_offset, row.log_end_offset, row.lag) == (stored[partition], 400, 0)
        assert row.group == group_id
        assert row.client_id == "sqlstate"
        assert row.consumer_id is not None
        assert row.consumer_id.startswith("sqlstate-")

    # Running and behind: a transaction left open on partition 0. A read_committed daemon stops
    # at its first record; Kafka's tool measures lag to the log end, so it shows those 40.
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        transactional_id=f"{group_id}-open",
        enable_idempotence=True,
    )
    async with started(producer):
        await producer.begin_transaction()
        for _ in range(40):
            await producer.send(topic, b"v", key=b"in-transaction", partition=0)
        await producer.flush()
        _, rows = await describe_offsets(kafka_bootstrap, group_id)
        behind = by_partition(rows, topic)
        assert positions_table(database, topic) == stored
        assert (behind[0].current_offset, behind[0].log_end_offset, behind[0].lag) == (400, 440, 40)
        assert [behind[p].lag for p in (1, 2)] == [0, 0]
        await producer.commit_transaction()

    # Committed: the daemon counts the 40 and steps over the commit marker.
    await wait_for_positions(database, {(topic, 0): 441}, 30, [running])
    stored = await kafka_copy_of_positions(kafka_bootstrap, group_id, topic, database)
    assert stored == {0: 441, 1: 400, 2: 400}
    _, rows = await describe_offsets(kafka_bootstrap, group_id)
    assert [(r.current_offset, r.lag) for r in rows] == [(441, 0), (400, 0), (400, 0)]

    # Stopped: the group has no member, its offsets stay at the stored positions, and new
    # records show as lag.
    assert await running.terminate() == 0
    await produce_keyed(kafka_bootstrap, topic, evenly(100, 3, seed=6))
    run, rows = await describe_offsets(kafka_bootstrap, group_id, explicit=True)
    assert f"Consumer group '{group_id}' has no active members." in run.stdout + run.stderr
    assert positions_table(database, topic) == stored
    for partition, row in by_partition(rows, topic).items():
        assert row.current_offset == stored[partition]
        assert row.log_end_offset == stored[partition] + 100
        assert row.lag == 100
        assert row.consumer_id is None
    await assert_exactly_once(kafka_bootstrap, database, topic)


@ONE_COMMAND_AT_A_TIME
@pytest.mark.parametrize("moved", ["older", "newer"])
async def test_a_restart_seeks_from_the_database_whatever_kafka_holds(
    moved: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    daemons: list[Daemon],
) -> None:
    database = tmp_path / "state.db"
    topic, worker = await caught_up_daemon(
        kafka_bootstrap, topic_factory, group_id, database, daemons, 500
    )
    await kafka_copy_of_positions(kafka_bootstrap, group_id, topic, database)
    assert await worker.terminate() == 0

    # 200 more records per partition while it is stopped; then an operator moves the group's
    # offsets in Kafka behind the stored positions, or past them to the log end.
    await produce_keyed(kafka_bootstrap, topic, evenly(200, 3, seed=7))
    target = 100 if moved == "older" else 700
    await reset_offsets(kafka_bootstrap, group_id, topic, target)
    _, rows = await describe_offsets(kafka_bootstrap, group_id)
    assert [(row.current_offset, row.lag) for row in rows] == [(target, 700 - target)] * 3
    assert positions_table(database, topic) == {0: 500, 1: 500, 2: 500}

    # The restart claims each partition at its stored position, not at Kafka's offset, and
    # counts the 200 new records of each exactly once.
    worker.start()
    await wait_for_positions(database, {(topic, p): 700 for p in range(3)}, 60, [worker])
    match = ASSIGNED.search(worker.current_log())
    assert match, worker.current_log()[-3000:]
    claimed = {int(p): int(offset) for _, p, offset in CLAIMED.findall(match.group(1))}
    assert claimed == {0: 500, 1: 500, 2: 500}
    verdict = await assert_exactly_once(kafka_bootstrap, database, topic)
    assert verdict.read_back == 2100

    # And Kafka's offsets are the database's again.
    assert await kafka_copy_of_positions(kafka_bootstrap, group_id, topic, database) == {
        0: 700,
        1: 700,
        2: 700,
    }
    _, rows = await describe_offsets(kafka_bootstrap, group_id)
    assert [(row.current_offset, row.lag) for row in rows] == [(700, 0)] * 3
    assert await worker.terminate() == 0


async def test_no_commit_offsets_to_kafka_leaves_the_group_offsets_alone(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    daemons: list[Daemon],
) -> None:
    database = tmp_path / "state.db"
    topic, quiet = await caught_up_daemon(
        kafka_bootstrap,
        topic_factory,
        group_id,
        database,
        daemons,
        100,
        "--no-commit-offsets-to-kafka",
    )
    assert await quiet.terminate() == 0
    assert await committed_offsets(kafka_bootstrap, group_id, topic) == {}
    await assert_exactly_once(kafka_bootstrap, database, topic)


def commit_failures(base_url: str) -> float:
    """``sqlstate_kafka_offset_commit_failures_total`` as the daemon's /metrics serves it."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sqlstate_kafka_offset_commit_failures_total":
                return float(sample.value)
    raise AssertionError(f"no sqlstate_kafka_offset_commit_failures_total in:\n{text}")


async def test_a_zombies_copy_is_refused_by_the_coordinator(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
) -> None:
    """A member frozen just before it sends positions to Kafka is expelled; another member
    takes the partitions, counts to the end and copies its positions to Kafka. When the frozen
    one resumes, the copy it was about to send goes out with its old membership: the coordinator
    refuses it, the refusal is counted and logged at DEBUG, and Kafka keeps the new owner's
    offsets."""
    topic = await topic_factory(partitions=2)
    database = tmp_path / "state.db"
    # Few enough to be counted before its second copy, a second after its first: frozen there,
    # it holds no transaction open (a SIGSTOP inside one would keep the write lock from all).
    await produce(kafka_bootstrap, topic, 200, partitions=2, seed=7)
    zombie = daemon(
        kafka_bootstrap,
        topic,
        group_id,
        database,
        "--metrics-port",
        "0",
        name="zombie",
        # Its second copy (the first is its claim's; copies go at most once a second).
        fault="before_kafka_commit",
        at=2,
        action="stop",
    ).start()
    owner = daemon(kafka_bootstrap, topic, group_id, database, name="owner")
    try:
        await wait_for_log(zombie, "serving http://")
        match = SERVING.search(zombie.log())
        assert match
        metrics = match.group(1)
        await wait_stopped(zombie)
        frozen_at = stored_positions(database)
        # More to count, for the new owner to move past where the zombie stopped.
        await produce(kafka_bootstrap, topic, 500, partitions=2, seed=9)

        owner.start()
        await caught_up(kafka_bootstrap, database, topic, [zombie, owner])
        owned = await kafka_copy_of_positions(kafka_bootstrap, group_id, topic, database)
        assert all(owned[p] > frozen_at[(topic, p)] for p in owned)

        assert zombie.process is not None
        zombie.process.send_signal(signal.SIGCONT)
        await wait_for_log(zombie, "committing positions to Kafka's group offsets failed")
        # Read at once: the zombie rejoins only after a rebalance, and until then nobody
        # commits again, so a copy that had been accepted would still be there.
        committed = await committed_offsets(kafka_bootstrap, group_id, topic)
        assert {p: offset for p, (offset, _) in committed.items()} == owned
        refusal = next(line for line in zombie.log().splitlines() if "group offsets failed" in line)
        assert " DEBUG " in refusal
        assert re.search(r"UnknownMemberIdError|IllegalGenerationError", refusal), refusal
        assert commit_failures(metrics) >= 1

        # Both go on as ordinary members; the counts stay exact and Kafka follows the database.
        await produce(kafka_bootstrap, topic, 500, partitions=2, seed=8)
        verdict = await caught_up(kafka_bootstrap, database, topic, [zombie, owner])
        assert verdict.read_back == 1200
        await kafka_copy_of_positions(kafka_bootstrap, group_id, topic, database)
        assert await zombie.terminate() == 0
        assert await owner.terminate() == 0
    finally:
        await zombie.stop_quietly()
        await owner.stop_quietly()
