"""The changelog's Kafka side against the real broker: its topics, the owner's transactional
producer and its fencing, the restore reader and the standby's follower. No SQLite here: rows
are the (key, value) bytes the capture hands over."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import ProducerFenced

from sqlstate.changelog.producers import ChangelogProducer, publish_all
from sqlstate.changelog.reader import ChangelogChunk, ChangelogFollower, ChangelogReader
from sqlstate.changelog.records import POSITION_KEY, position_record
from sqlstate.changelog.topics import changelog_topic, ensure_changelogs, transactional_id
from sqlstate.errors import ChangelogError, ChangelogFenced, ChangelogTopicError
from sqlstate.settings import Settings
from sqlstate.state.model import Row
from tests.support.kafka import (
    TopicFactory,
    add_partitions,
    admin_client,
    create_topic,
    delete_topics,
    log_end_offsets,
    partitions_of,
    produce_transaction,
    started,
)

WAIT_S = 20.0


@pytest.fixture
async def settings(
    kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> AsyncIterator[Settings]:
    """Settings for an input topic of 2 partitions; its changelog is deleted after the test."""
    topic = await topic_factory(2)
    yield Settings(topics=(topic,), group_id=group_id, bootstrap_servers=kafka_bootstrap)
    with contextlib.suppress(Exception):
        await delete_topics(kafka_bootstrap, [changelog_topic(group_id, topic)])


@pytest.fixture
async def changelog(settings: Settings) -> str:
    """The input topic's changelog, created."""
    (topic,) = settings.topics
    names = await ensure_changelogs(settings, {topic: 2})
    return names[topic]


def rows(prefix: str, count: int) -> list[Row]:
    return [(f'["t","{prefix}{i}"]'.encode(), f'{{"n":{i}}}'.encode()) for i in range(count)]


async def read_all(
    reader: ChangelogReader,
    tp: TopicPartition,
    from_offset: int = 0,
    batch_size: int = 10_000,
    *,
    stable_end: int | None = None,
) -> list[ChangelogChunk]:
    """Every chunk ``read_to_end`` gives. With ``stable_end``, first wait until the partition's
    last stable offset has reached it.

    A commit returns once the coordinator has recorded it; the commit markers reach the
    partitions a moment later, and until then the last stable offset stays before the
    transaction. The daemon reads a partition only after its own producer started, which
    completes every earlier transaction first; a test that reads right after a publish has to
    wait for the markers itself.
    """
    async with asyncio.timeout(WAIT_S):
        if stable_end is not None:
            await stable_at(reader, tp, stable_end)
        return [chunk async for chunk in reader.read_to_end(tp, from_offset, batch_size)]


async def stable_at(reader: ChangelogReader, tp: TopicPartition, offset: int) -> None:
    """Poll ``tp``'s last stable offset until it has reached ``offset``."""
    while True:
        if await reader.end_offset(tp) >= offset:
            return
        await asyncio.sleep(0.05)


async def cleanup_policy(bootstrap: str, topic: str) -> str:
    async with admin_client(bootstrap) as admin:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"cleanup.policy": None})]
        )
    ((entry,),) = [r["config_entries"] for r in response.to_object()["resources"]]
    value: str = entry["config_value"]
    return value


# --------------------------------------------------------------------------------------
# Topics


async def test_the_changelog_is_created_compacted_and_grows_with_its_input(
    kafka_bootstrap: str, settings: Settings
) -> None:
    (topic,) = settings.topics
    names = await ensure_changelogs(settings, {topic: 2})
    name = names[topic]
    assert name == f"{settings.group_id}.{topic}.changelog"
    assert await partitions_of(kafka_bootstrap, name) == [0, 1]
    assert await cleanup_policy(kafka_bootstrap, name) == "compact"

    assert await ensure_changelogs(settings, {topic: 2}) == names, "a second run changes nothing"

    await add_partitions(kafka_bootstrap, topic, 4)
    await ensure_changelogs(settings, {topic: 4})
    assert await partitions_of(kafka_bootstrap, name) == [0, 1, 2, 3]

    await ensure_changelogs(settings, {topic: 3})
    assert await partitions_of(kafka_bootstrap, name) == [0, 1, 2, 3], "never fewer"


async def test_several_processes_ensuring_at_once_all_succeed(
    kafka_bootstrap: str, settings: Settings
) -> None:
    (topic,) = settings.topics
    answers = await asyncio.gather(*(ensure_changelogs(settings, {topic: 2}) for _ in range(3)))
    assert len({answers[0][topic], answers[1][topic], answers[2][topic]}) == 1
    assert await partitions_of(kafka_bootstrap, answers[0][topic]) == [0, 1]


async def test_a_topic_of_that_name_that_deletes_records_is_refused(
    kafka_bootstrap: str, settings: Settings
) -> None:
    (topic,) = settings.topics
    name = changelog_topic(settings.group_id, topic)
    await create_topic(kafka_bootstrap, name, 2, {"cleanup.policy": "compact,delete"})
    with pytest.raises(ChangelogTopicError, match=r"cleanup.policy=compact,delete"):
        await ensure_changelogs(settings, {topic: 2})


# --------------------------------------------------------------------------------------
# The owner's producer


async def test_publish_returns_offsets_that_the_reader_reads_back_in_order(
    settings: Settings, changelog: str
) -> None:
    (topic,) = settings.topics
    tp = TopicPartition(changelog, 1)
    published = [rows("a", 3), [*rows("b", 1), (b'["t","a0"]', None)], []]
    ends = []
    async with started(ChangelogProducer(settings, topic, 1)) as producer:
        assert producer.tp == tp
        for number, batch in enumerate(published):
            ends.append(await producer.publish(batch, next_offset=100 * (number + 1)))
    async with started(ChangelogReader(settings)) as reader:
        chunks = await read_all(reader, tp, stable_end=ends[-1] + 1)
    records = [record for chunk in chunks for record in chunk.records]
    expected = [
        (key, value)
        for number, batch in enumerate(published)
        for key, value in (*batch, position_record(100 * (number + 1)))
    ]
    assert [(r.key, r.value) for r in records] == expected
    offsets = [r.offset for r in records]
    assert offsets == sorted(offsets)
    # Each publish answers the offset after its position record (the commit marker's).
    positions = [r.offset for r in records if r.key == POSITION_KEY]
    assert ends == [offset + 1 for offset in positions]
    # The reader's end is after the last commit marker.
    assert chunks[-1].next_offset == ends[-1] + 1
    assert await reader_is_empty_from(settings, tp, ends[-1])


async def reader_is_empty_from(settings: Settings, tp: TopicPartition, offset: int) -> bool:
    """Reading from a publish's answer finds nothing more (the marker holds no record)."""
    async with started(ChangelogReader(settings)) as reader:
        chunks = await read_all(reader, tp, offset)
    return all(not chunk.records for chunk in chunks)


async def test_several_partitions_publish_at_once(settings: Settings, changelog: str) -> None:
    (topic,) = settings.topics
    async with (
        started(ChangelogProducer(settings, topic, 0)) as first,
        started(ChangelogProducer(settings, topic, 1)) as second,
    ):
        outcomes = await publish_all(
            [(first, rows("x", 50), 50, None), (second, rows("y", 7), 7, None)]
        )
    assert outcomes == [51, 8]


async def test_a_batch_larger_than_one_record_batch_is_one_transaction(
    settings: Settings, changelog: str
) -> None:
    (topic,) = settings.topics
    big = [(f'["t",{i}]'.encode(), b"v" * 1000) for i in range(3000)]  # about 3 MB
    async with started(ChangelogProducer(settings, topic, 0)) as producer:
        end = await producer.publish(big, next_offset=3000)
    assert end == 3001
    async with started(ChangelogReader(settings)) as reader:
        chunks = await read_all(
            reader, TopicPartition(changelog, 0), batch_size=1000, stable_end=end + 1
        )
    # Fetches of 1,000 records stop inside the transaction: the chunk waits for its end, so a
    # restore never commits part of a batch.
    assert [len(chunk.records) for chunk in chunks] == [3001]
    assert chunks[0].records[-1].key == POSITION_KEY
    assert chunks[0].next_offset == end + 1  # past the commit marker: nothing is carried


async def test_a_new_owner_fences_the_old_one_and_aborts_its_open_transaction(
    settings: Settings, changelog: str
) -> None:
    (topic,) = settings.topics
    tp = TopicPartition(changelog, 0)
    old = ChangelogProducer(settings, topic, 0)
    await old.start()
    try:
        assert await old.publish(rows("old", 2), next_offset=2) == 3
        # A zombie of the same partition, paused mid-transaction: its records are written.
        zombie = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            transactional_id=transactional_id(settings.group_id, topic, 0),
        )
        async with started(zombie):
            await zombie.begin_transaction()
            sent = await zombie.send_and_wait(
                changelog, b'{"n":-1}', key=b'["t","zombie"]', partition=0
            )
            assert sent.offset > 0
            async with started(ChangelogProducer(settings, topic, 0)) as new:
                with pytest.raises(ProducerFenced):
                    await zombie.commit_transaction()
                with pytest.raises(ChangelogFenced):
                    await old.publish(rows("late", 1), next_offset=3)
                assert not old.usable
                assert old.fenced
                with pytest.raises(ChangelogFenced):
                    await old.publish(rows("later", 1), next_offset=3)
                end = await new.publish(rows("new", 1), next_offset=3)
    finally:
        await old.stop()
    async with started(ChangelogReader(settings)) as reader:
        chunks = await read_all(reader, tp, stable_end=end + 1)
    keys = [record.key for chunk in chunks for record in chunk.records]
    assert b'["t","zombie"]' not in keys
    assert not any(b"late" in key for key in keys)
    assert keys == [b'["t","old0"]', b'["t","old1"]', POSITION_KEY, b'["t","new0"]', POSITION_KEY]
    assert chunks[-1].next_offset == end + 1


async def test_a_start_while_kafka_names_no_broker_fails_as_a_changelog_error_then_succeeds(
    settings: Settings, changelog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker its controller fenced a moment ago (after a long pause, say) answers a fresh
    client's first Metadata request with no broker; aiokafka then fails the transaction
    coordinator lookup with an AssertionError. The claim must see a ChangelogError, which it
    waits out like any other failed start, never an AssertionError that stops the daemon."""
    (topic,) = settings.topics
    no_broker_yet = [True]
    random_node = AIOKafkaClient.get_random_node

    def no_broker_once(client: AIOKafkaClient) -> int | None:
        if no_broker_yet.pop() if no_broker_yet else False:
            return None
        node: int | None = random_node(client)
        return node

    monkeypatch.setattr(AIOKafkaClient, "get_random_node", no_broker_once)
    refused = ChangelogProducer(settings, topic, 0)
    with pytest.raises(ChangelogError, match="named no broker"):
        await refused.start()
    assert not refused.usable
    async with started(ChangelogProducer(settings, topic, 0)) as producer:
        assert await producer.publish(rows("after", 1), next_offset=1) == 2


# --------------------------------------------------------------------------------------
# The restore reader


async def test_read_to_end_skips_aborted_transactions_and_stops_at_the_stable_end(
    kafka_bootstrap: str, settings: Settings, changelog: str
) -> None:
    (topic,) = settings.topics
    tp = TopicPartition(changelog, 0)
    await produce_transaction(kafka_bootstrap, changelog, [(b"aborted-1", b"v", 0)], commit=False)
    async with started(ChangelogProducer(settings, topic, 0)) as producer:
        end = await producer.publish(rows("c", 2), next_offset=2)
    await produce_transaction(kafka_bootstrap, changelog, [(b"aborted-2", b"v", 0)], commit=False)
    # A transaction left open: the stable end stops before it, and the read must not wait.
    stuck = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{changelog}-open"
    )
    async with started(stuck):
        await stuck.begin_transaction()
        open_at = (await stuck.send_and_wait(changelog, b"v", key=b"open", partition=0)).offset
        async with started(ChangelogReader(settings)) as reader:
            # Stable up to the open transaction: the aborted ones before it have their markers.
            chunks = await read_all(reader, tp, stable_end=open_at)
            stable_end = await reader.end_offset(tp)
            assert stable_end == open_at
        await stuck.abort_transaction()
    keys = [record.key for chunk in chunks for record in chunk.records]
    assert keys == [b'["t","c0"]', b'["t","c1"]', POSITION_KEY]
    assert chunks[-1].next_offset == stable_end
    assert end < stable_end  # past the commit marker and the second aborted transaction
    high_watermark = (await log_end_offsets(kafka_bootstrap, changelog))[0]
    assert stable_end < high_watermark


async def test_read_to_end_of_an_empty_range_gives_nothing(
    settings: Settings, changelog: str
) -> None:
    async with started(ChangelogReader(settings)) as reader:
        assert await read_all(reader, TopicPartition(changelog, 1)) == []


async def test_an_offset_beyond_the_log_is_read_again_from_its_start(
    settings: Settings, changelog: str
) -> None:
    (topic,) = settings.topics
    tp = TopicPartition(changelog, 0)
    async with started(ChangelogProducer(settings, topic, 0)) as producer:
        end = await producer.publish(rows("r", 2), next_offset=2)
    async with started(ChangelogReader(settings)) as reader:
        chunks = await read_all(reader, tp, from_offset=1000, stable_end=end + 1)
    assert all(chunk.rewound for chunk in chunks)
    assert [r.offset for chunk in chunks for r in chunk.records] == [0, 1, 2]


# --------------------------------------------------------------------------------------
# The standby's follower


async def poll_until(
    follower: ChangelogFollower,
    done: Callable[[dict[TopicPartition, list[ChangelogChunk]]], bool],
    max_records: int | None = None,
) -> dict[TopicPartition, list[ChangelogChunk]]:
    """Poll until ``done(everything polled so far)``; return it."""
    polled: dict[TopicPartition, list[ChangelogChunk]] = {}
    async with asyncio.timeout(WAIT_S):
        while not done(polled):
            for tp, chunk in (await follower.poll(200, max_records)).items():
                polled.setdefault(tp, []).append(chunk)
    return polled


def keys_of(chunks: list[ChangelogChunk]) -> list[bytes]:
    return [record.key for chunk in chunks for record in chunk.records]


async def test_the_follower_pauses_resumes_and_reports_its_lag(
    settings: Settings, changelog: str
) -> None:
    (topic,) = settings.topics
    tp0, tp1 = TopicPartition(changelog, 0), TopicPartition(changelog, 1)
    async with (
        started(ChangelogFollower(settings)) as follower,
        started(ChangelogProducer(settings, topic, 0)) as owner0,
        started(ChangelogProducer(settings, topic, 1)) as owner1,
    ):
        follower.follow({tp0: 0, tp1: 0})
        end0 = await owner0.publish(rows("p", 4), next_offset=4)
        end1 = await owner1.publish(rows("q", 4), next_offset=4)

        # One record at a time: the fetch already told the end, so the lag shows; each chunk
        # still holds a whole transaction, its rows and its position record.
        first = await poll_until(follower, lambda polled: bool(polled), max_records=1)
        assert any(lag for lag in follower.lag().values())
        assert all(
            len(chunk.records) == 5 and chunk.records[-1].key == POSITION_KEY
            for chunks in first.values()
            for chunk in chunks
        )
        await poll_until(follower, lambda _: follower.followed == {tp0: end0 + 1, tp1: end1 + 1})
        assert follower.lag() == {tp0: 0, tp1: 0}

        # This process claims partition 0: it stops following it.
        follower.pause([tp0])
        assert follower.paused == {tp0}
        await owner0.publish(rows("while-paused", 2), next_offset=6)
        end1 = await owner1.publish(rows("r", 1), next_offset=5)
        polled = await poll_until(follower, lambda _: follower.followed[tp1] == end1 + 1)
        assert tp0 not in polled
        assert follower.lag()[tp0] is None
        assert follower.followed[tp0] == end0 + 1

        # Partition 0 moves away again: follow it from what the file applied meanwhile.
        follower.resume({tp0: end0 + 1})
        polled = await poll_until(follower, lambda polled: tp0 in polled)
        assert keys_of(polled[tp0]) == [
            b'["t","while-paused0"]',
            b'["t","while-paused1"]',
            POSITION_KEY,
        ]
        assert follower.paused == frozenset()


async def test_the_follower_rereads_a_partition_whose_offset_is_beyond_its_log(
    settings: Settings, changelog: str
) -> None:
    (topic,) = settings.topics
    tp = TopicPartition(changelog, 1)
    async with started(ChangelogProducer(settings, topic, 1)) as owner:
        end = await owner.publish(rows("s", 2), next_offset=2)
    async with started(ChangelogFollower(settings)) as follower:
        follower.follow({tp: end + 100})  # a changelog created again: the file is ahead
        polled = await poll_until(follower, lambda polled: tp in polled)
    assert polled[tp][0].rewound
    assert keys_of(polled[tp])[:3] == [b'["t","s0"]', b'["t","s1"]', POSITION_KEY]
    assert not any(chunk.rewound for chunk in polled[tp][1:])
