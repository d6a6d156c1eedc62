"""--changelog: a file never applies another incarnation's log (docs/scaling.md).

A topic deleted and created again under the same name is a new log whose offsets start over; a
fetcher reads it by name, so once the new log has grown past a file's offsets, only the topic's
ID tells the two apart. Each scenario makes the new log long enough that no offset falls outside
it, and checks that the host stops with exit code 5 and its file is left as it was:

- the changelog topic recreated (and grown past the file's offset) while the host was down;
- the input topic recreated, then a host started on a new file: the changelog's positions count
  offsets of the old input, and must not be applied to the new one;
- the changelog recreated under a standby that follows it.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

from sqlstate.changelog.records import POSITION_KEY
from sqlstate.changelog.topics import changelog_topic
from tests.support.daemon import Daemon, wait_for_positions
from tests.support.db import query
from tests.support.faults import caught_up, daemon, produce
from tests.support.hosts import host, wait_for_assignments
from tests.support.kafka import (
    Message,
    TopicFactory,
    log_end_offsets,
    produce_transaction,
    recreate_topic,
)
from tests.support.oracle import read_committed

PARTITIONS = 2
COMPACTED = {"cleanup.policy": "compact"}
# What a refusal must leave as it was.
STATE = (
    "SELECT * FROM key_counts ORDER BY topic, partition, key",
    "SELECT topic, partition, next_offset FROM positions ORDER BY topic, partition",
    "SELECT * FROM changelog_offsets ORDER BY topic, partition",
)


def state(database: Path) -> list[list[tuple[object, ...]]]:
    return [query(database, statement) for statement in STATE]


async def replace_changelog(bootstrap: str, changelog: str, past: dict[int, int]) -> None:
    """Delete ``changelog`` and create it again, then fill each partition p with copies of its
    old records, every count 1,000 higher, in one committed transaction that reaches beyond
    offset ``past[p]``: a new incarnation whose offsets the file's all fall inside, and whose
    rows would change the file if it were applied."""
    ends = await log_end_offsets(bootstrap, changelog, isolation_level="read_committed")
    old = await read_committed(bootstrap, changelog, ends)
    await recreate_topic(bootstrap, changelog, len(ends), config=COMPACTED)
    for partition, offset in sorted(past.items()):
        copies = [
            Message(r.key, _counted_up(r.key, r.value), partition)
            for r in old
            if r.partition == partition and r.value is not None
        ]
        assert copies, f"the old changelog had nothing in partition {partition}"
        messages = copies * math.ceil((offset + 2) / len(copies))
        await produce_transaction(bootstrap, changelog, messages)


def _counted_up(key: bytes, value: bytes) -> bytes:
    if key == POSITION_KEY:
        return value
    row = json.loads(value)
    row["count"] += 1_000
    return json.dumps(row).encode()


def applied(database: Path) -> dict[int, int]:
    return dict(query(database, "SELECT partition, next_offset FROM changelog_offsets"))


async def counted_with_changelog(
    bootstrap: str, topic_factory: TopicFactory, group_id: str, database: Path, seed: int
) -> str:
    """A new topic's records counted into ``database`` under --changelog, by a daemon stopped
    since; the topic's name."""
    topic = await topic_factory(partitions=PARTITIONS)
    await produce(bootstrap, topic, 400, partitions=PARTITIONS, seed=seed)
    first = daemon(bootstrap, topic, group_id, database, "--changelog", name="first")
    try:
        first.start()
        await caught_up(bootstrap, database, topic, [first])
        assert await first.terminate() == 0
    finally:
        await first.stop_quietly()
    return topic


async def assert_refused(host: Daemon, message: str) -> None:
    """``host`` started stops with exit code 5 and ``message``."""
    try:
        host.start()
        assert await host.wait(60) == 5, host.log()[-3000:]
        assert message in host.log()
    finally:
        await host.stop_quietly()


async def test_a_changelog_recreated_past_the_files_offset_stops_the_restart(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    database = tmp_path / "state.db"
    topic = await counted_with_changelog(kafka_bootstrap, topic_factory, group_id, database, 21)
    before = state(database)
    changelog = changelog_topic(group_id, topic)
    await replace_changelog(kafka_bootstrap, changelog, applied(database))

    again = daemon(kafka_bootstrap, topic, group_id, database, "--changelog", name="again")
    await assert_refused(again, f"changelog topic {changelog} (of input topic {topic}) has ID")
    assert state(database) == before


async def test_a_new_host_never_restores_positions_of_a_recreated_input(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    database = tmp_path / "state.db"
    topic = await counted_with_changelog(kafka_bootstrap, topic_factory, group_id, database, 22)
    # The new input grows past every position the changelog carries: each would be a valid
    # offset of the new log.
    await recreate_topic(kafka_bootstrap, topic, PARTITIONS)
    await produce(kafka_bootstrap, topic, 1_000, partitions=PARTITIONS, seed=23)

    new_file = tmp_path / "new-host.db"
    new_host = daemon(kafka_bootstrap, topic, group_id, new_file, "--changelog", name="new-host")
    await assert_refused(new_host, f"carries positions of input topic {topic} with ID")
    assert state(new_file) == [[], [], []]


async def test_a_standby_stops_when_the_changelog_it_follows_is_recreated(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    # One partition: host 1 (the first member by id) owns it, host 2 only follows it. Host 2's
    # long session keeps it in the group while it is frozen, so no rebalance (and no claim's
    # restore) comes between: only its standby can notice.
    topic = await topic_factory(partitions=1)
    owner = host(kafka_bootstrap, topic, group_id, tmp_path, 1)
    standby = host(kafka_bootstrap, topic, group_id, tmp_path, 2, "--session-timeout-ms", "30000")
    hosts: list[Daemon] = [owner, standby]
    try:
        owner.start()
        await owner.wait_for_log("claimed partitions held since the rebalance")
        standby.start()
        await wait_for_assignments(hosts, topic, 1)
        await produce(kafka_bootstrap, topic, 400, partitions=1, seed=24)
        ends = await log_end_offsets(kafka_bootstrap, topic, isolation_level="read_committed")
        targets = {(topic, p): end for p, end in ends.items()}
        await wait_for_positions(standby.database, targets, 60, hosts)
        await wait_for_positions(owner.database, targets, 60, hosts)
        before = state(standby.database)

        os.kill(standby.pid, signal.SIGSTOP)
        try:
            changelog = changelog_topic(group_id, topic)
            await replace_changelog(kafka_bootstrap, changelog, applied(standby.database))
        finally:
            os.kill(standby.pid, signal.SIGCONT)
        assert await standby.wait(60) == 5, standby.log()[-3000:]
        assert f"changelog topic {changelog} (of input topic {topic}) has ID" in standby.log()
        assert "claimed partitions" not in standby.log(), "noticed by the standby, not a claim"
        assert state(standby.database) == before
    finally:
        for h in hosts:
            await h.stop_quietly()
