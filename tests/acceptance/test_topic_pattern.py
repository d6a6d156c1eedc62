"""``--topic-pattern``: every topic whose whole name matches, also those created while running.

The daemon runs as users run it, against the real broker, with a short ``--metadata-max-age``
(the refresh at which aiokafka matches the pattern again). Topics get names of the test's own, so
that the pattern takes nothing else on the shared broker.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka.errors import TopicAlreadyExistsError

from sqlstate.changelog.topics import changelog_topic
from tests.acceptance.test_operations import endpoint, eventually, health, scrape
from tests.support.daemon import Daemon, stored_positions, wait_for_positions
from tests.support.kafka import create_topic, delete_topics, plain_consumer
from tests.support.oracle import Latest, assert_exactly_once
from tests.support.workload import db_counts, end_offsets, expected, keyed_messages, produce_keyed

NamedTopic = Callable[[str, int], Awaitable[str]]
FAST = ("--metadata-max-age", "2", "--metrics-port", "0")


@pytest.fixture
def prefix() -> str:
    return f"pattern-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def named_topic(kafka_bootstrap: str) -> AsyncIterator[NamedTopic]:
    """Create topics with the given names; those left are deleted after the test."""
    created: list[str] = []

    async def create(name: str, partitions: int) -> str:
        created.append(name)
        return await create_topic(kafka_bootstrap, name, partitions)

    yield create
    try:
        await delete_topics(kafka_bootstrap, created)
    except Exception:
        for name in created:
            try:
                await delete_topics(kafka_bootstrap, [name])
            except Exception:
                continue


async def test_a_pattern_takes_new_topics_and_reports_a_deleted_one(
    kafka_bootstrap: str,
    named_topic: NamedTopic,
    prefix: str,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    first = await named_topic(f"{prefix}-a", 2)
    second = await named_topic(f"{prefix}-b", 1)
    # Not whole matches: a longer name and a name with something before it.
    longer = await named_topic(f"{prefix}-bb", 1)
    before = await named_topic(f"x{prefix}-c", 1)
    produced = {
        first: keyed_messages(600, 2, seed=1),
        second: keyed_messages(300, 1, seed=2),
        longer: keyed_messages(50, 1, seed=3),
        before: keyed_messages(50, 1, seed=4),
    }
    for topic, messages in produced.items():
        await produce_keyed(kafka_bootstrap, topic, messages)
    database = tmp_path / "state.db"
    pattern = f"{re.escape(prefix)}-[a-z]"
    daemon = Daemon(
        kafka_bootstrap, [], group_id, database, "--topic-pattern", pattern, *FAST
    ).start()
    daemons.append(daemon)
    base = await endpoint(daemon)
    for topic in (first, second):
        await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 30, [daemon])

    # A topic created while running is taken at the next metadata refresh, from its start.
    third = await named_topic(f"{prefix}-c", 2)
    produced[third] = keyed_messages(400, 2, seed=5)
    await produce_keyed(kafka_bootstrap, third, produced[third])
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, third), 30, [daemon])
    assert f"topic {third} matches --topic-pattern" in daemon.current_log()

    # A matching topic deleted while running: reported, its state left as it was.
    second_positions = {tp: n for tp, n in stored_positions(database).items() if tp[0] == second}
    await delete_topics(kafka_bootstrap, [second])
    await daemon.wait_for_log(f"topic {second}, matched by --topic-pattern, was deleted", 30)

    async def degraded() -> bool:
        _, answer = await health(base)
        return second in (answer.get("degraded") or "")

    await eventually(degraded, 10, "/healthz to name the deleted topic", daemon)
    assert (await scrape(base))[("sqlstate_topics_deleted_total", ())] == 1
    # The others are consumed on; the deleted topic's rows and positions stay as they were.
    more = keyed_messages(200, 2, seed=6)
    produced[first] += more
    await produce_keyed(kafka_bootstrap, first, more)
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, first), 30, [daemon])
    positions = stored_positions(database)
    assert {tp: n for tp, n in positions.items() if tp[0] == second} == second_positions
    assert db_counts(database, second) == expected(produced[second])

    # Created again under its name: a new topic ID, so its first claim discards the old state
    # (--out-of-range reset), as for a topic given with --topic.
    await create_again(kafka_bootstrap, second, 1)
    produced[second] = keyed_messages(150, 1, seed=8)
    await produce_keyed(kafka_bootstrap, second, produced[second])
    await daemon.wait_for_log("discarded the state of its", 30)
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, second), 30, [daemon])

    async def healthy_again() -> bool:
        _, answer = await health(base)
        return "degraded" not in answer

    await eventually(healthy_again, 10, "/healthz to forget the topic created again", daemon)
    assert await daemon.terminate() == 0

    for topic in (first, second, third):
        await assert_exactly_once(kafka_bootstrap, database, topic)
        assert db_counts(database, topic) == expected(produced[topic])
    assert {topic for topic, _ in stored_positions(database)} == {first, second, third}

    # The same pattern again: the file's topics keep their processors, and it goes on.
    daemon.start()
    again = keyed_messages(100, 2, seed=7)
    produced[third] += again
    await produce_keyed(kafka_bootstrap, third, again)
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, third), 30, [daemon])
    assert await daemon.terminate() == 0
    await assert_exactly_once(kafka_bootstrap, database, third)


async def test_two_hosts_under_changelog_take_a_new_topic_and_never_a_changelog(
    kafka_bootstrap: str,
    named_topic: NamedTopic,
    prefix: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    # The group's name starts like the topics, so that the pattern would take the group's own
    # changelog topics, were they not left out. Not the default processor: a file whose
    # standby brings a new topic's positions before its own claim must still record it.
    group_id = f"{prefix}-group"
    first = await named_topic(f"{prefix}-a", 2)
    produced = {first: keyed_messages(300, 2, seed=1)}
    await produce_keyed(kafka_bootstrap, first, produced[first])
    args = ("--topic-pattern", f"{re.escape(prefix)}.*", "--changelog", "--processor", "latest")
    databases = [tmp_path / f"host-{index}" / "state.db" for index in (0, 1)]
    hosts = []
    for database in databases:
        database.parent.mkdir()
        host = Daemon(kafka_bootstrap, [], group_id, database, *args, *FAST).start()
        daemons.append(host)
        hosts.append(host)
    for database in databases:
        await wait_for_positions(database, await end_offsets(kafka_bootstrap, first), 30, hosts)
    await asyncio.gather(*(host.wait_for_log("assigned partitions: ") for host in hosts))

    second = await named_topic(f"{prefix}-b", 2)
    produced[second] = keyed_messages(300, 2, seed=2)
    await produce_keyed(kafka_bootstrap, second, produced[second])
    for database in databases:
        for topic in (first, second):
            ends = await end_offsets(kafka_bootstrap, topic)
            await wait_for_positions(database, ends, 30, hosts)
    # A few more refreshes: a changelog topic, had it matched, would be claimed by now.
    await asyncio.sleep(3)
    for host in hosts:
        assert await host.terminate() == 0

    changelogs = [changelog_topic(group_id, topic) for topic in (first, second)]
    try:
        assert set(changelogs) <= await topic_names(kafka_bootstrap)
        for host, database in zip(hosts, databases, strict=True):
            assert {topic for topic, _ in stored_positions(database)} == {first, second}
            assert "changelog matches --topic-pattern" not in host.log()
            # With standbys, each file holds every partition's state.
            for topic in (first, second):
                await assert_exactly_once(kafka_bootstrap, database, topic, (Latest(),))
    finally:
        await delete_topics(kafka_bootstrap, changelogs)


async def create_again(bootstrap: str, topic: str, partitions: int) -> None:
    """Create a deleted topic again, once the broker has finished deleting it."""
    async with asyncio.timeout(30):
        while True:
            try:
                await create_topic(bootstrap, topic, partitions)
                return
            except TopicAlreadyExistsError:
                await asyncio.sleep(0.1)


async def topic_names(bootstrap: str) -> set[str]:
    consumer = plain_consumer(bootstrap)
    await consumer.start()
    try:
        return set(await consumer.topics())
    finally:
        await consumer.stop()
