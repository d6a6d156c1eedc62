"""A topic deleted and created again under the same name is a new log: its counts start afresh.

Kafka gives every topic an ID that changes when the topic is created again. sqlstate records it at
the first claim; a different ID, at a claim or while running, is the out-of-range case for every
partition of the topic. These tests run the scenario of the issue: T-0 stored at 1,000, T deleted
and created again, 1,500 records with other keys produced; before topic IDs the daemon went on at
1,000, keeping the old counts of [0, 1,000) and never counting the new ones.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.support.daemon import Daemon, wait_for_positions
from tests.support.db import query
from tests.support.kafka import TopicFactory, recreate_topic
from tests.support.oracle import assert_exactly_once
from tests.support.workload import db_counts, end_offsets, expected, produce_keyed

# T-0 at 1,000 and T-1 at 400 before; 1,500 and 600 records with other keys after, so that no
# stored position falls outside the new log: only the topic's ID tells the two logs apart.
OLD = [(0, f"old-{i % 40}".encode()) for i in range(1_000)] + [
    (1, f"old-{i % 40}".encode()) for i in range(400)
]
NEW = [(0, f"new-{i % 60}".encode()) for i in range(1_500)] + [
    (1, f"new-{i % 60}".encode()) for i in range(600)
]


def topic_ids(database: Path) -> list[tuple[str, str]]:
    return [
        (topic, topic_id)
        for topic, topic_id in query(database, "SELECT topic, topic_id FROM topics")
    ]


async def count_old_topic(
    bootstrap: str, topic_factory: TopicFactory, daemon_args: tuple[str, ...], tmp_path: Path
) -> tuple[str, Path, Daemon]:
    """T with the old records, counted by a daemon that is left running."""
    topic = await topic_factory(partitions=2)
    await produce_keyed(bootstrap, topic, OLD)
    database = tmp_path / "state.db"
    daemon = Daemon(bootstrap, [topic], f"g-{topic}", database, *daemon_args).start()
    await wait_for_positions(database, await end_offsets(bootstrap, topic), 90, [daemon])
    return topic, database, daemon


async def test_a_topic_recreated_while_stopped_is_counted_afresh(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, daemons: list[Daemon]
) -> None:
    topic, database, daemon = await count_old_topic(kafka_bootstrap, topic_factory, (), tmp_path)
    daemons.append(daemon)
    assert await daemon.terminate() == 0
    [(_, old_id)] = topic_ids(database)

    await recreate_topic(kafka_bootstrap, topic, 2)
    await produce_keyed(kafka_bootstrap, topic, NEW)
    daemon.start()
    await daemon.wait_for_log("discarded the state of its")
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 90, [daemon])
    assert await daemon.terminate() == 0

    assert db_counts(database, topic) == expected(NEW)
    await assert_exactly_once(kafka_bootstrap, database, topic)
    [(_, new_id)] = topic_ids(database)
    assert new_id != old_id
    # The warning gives the numbers: both IDs and every stored position.
    warning = next(
        line for line in daemon.current_log().splitlines() if "deleted and created again" in line
    )
    assert old_id in warning
    assert new_id in warning
    assert f"{topic}-0@1000" in warning
    assert f"{topic}-1@400" in warning


async def test_a_topic_recreated_while_running_is_counted_afresh(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, daemons: list[Daemon]
) -> None:
    # A short metadata refresh: that is when a running daemon asks for the topic's ID again.
    # A long session: the daemon is frozen while the topic is recreated, and must stay in its
    # group, so that no rebalance (and its claim) notices the new topic in its place.
    args = ("--metadata-max-age", "2", "--session-timeout-ms", "30000")
    topic, database, daemon = await count_old_topic(kafka_bootstrap, topic_factory, args, tmp_path)
    daemons.append(daemon)
    await daemon.wait_for_log("assigned partitions")
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        await recreate_topic(kafka_bootstrap, topic, 2)
        await produce_keyed(kafka_bootstrap, topic, NEW)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    await daemon.wait_for_log("discarded the state of its", timeout=60)
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 90, [daemon])
    assert await daemon.terminate() == 0

    assert db_counts(database, topic) == expected(NEW)
    await assert_exactly_once(kafka_bootstrap, database, topic)
    # Noticed while running, not by a new assignment.
    assert daemon.current_log().count("rebalance: assigned partitions") == 1
