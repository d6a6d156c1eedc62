"""The copy of the positions in Kafka's group offsets (``GroupOffsets``), against the real broker.

A real group member (the daemon's own consumer settings) is given the topic's partitions; the
test plays the batch loop and the listener: it sets the claims in ``Ownership`` and publishes
them, and reads back what the group has committed in Kafka.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from sqlstate.app.group_offsets import OFFSET_METADATA, GroupOffsets
from sqlstate.app.ownership import Ownership
from sqlstate.kafka.client import build_consumer, in_group
from sqlstate.observe.stats import Stats
from sqlstate.settings import Settings
from sqlstate.state.model import Claim
from tests.support.kafka import TopicFactory, committed_offsets, started


@pytest.fixture
async def member(
    kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer that is the only member of a new group and owns both partitions of a topic."""
    topic = await topic_factory(partitions=2)
    settings = Settings(topics=(topic,), group_id=group_id, bootstrap_servers=kafka_bootstrap)
    consumer = build_consumer(settings)
    async with started(consumer):
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while not (in_group(consumer) and len(consumer.assignment()) == 2):
            assert time.monotonic() < deadline, "the consumer never joined its group"
            await asyncio.sleep(0.05)
        yield consumer


async def kafka_offsets(
    bootstrap: str, group_id: str, consumer: AIOKafkaConsumer
) -> dict[int, int]:
    """{partition: offset} the group has committed in Kafka for the member's topic."""
    (topic,) = consumer.subscription()
    committed = await committed_offsets(bootstrap, group_id, topic)
    assert {metadata for _, metadata in committed.values()} <= {OFFSET_METADATA}
    return {partition: offset for partition, (offset, _) in committed.items()}


def claim(
    ownership: Ownership, offsets: GroupOffsets, tp: TopicPartition, next_offset: int
) -> None:
    """What a committed transaction does: the claim moves on, and is published."""
    ownership.advance({tp: Claim(next_offset, 1)})
    offsets.publish({tp: Claim(next_offset, 1)})


def partitions(consumer: AIOKafkaConsumer) -> tuple[TopicPartition, TopicPartition]:
    first, second = sorted(consumer.assignment())
    return first, second


async def test_the_newest_claims_are_sent_and_a_commit_in_flight_coalesces_the_rest(
    member: AIOKafkaConsumer, kafka_bootstrap: str, group_id: str
) -> None:
    first, second = partitions(member)
    ownership, stats = Ownership(member), Stats()
    offsets = GroupOffsets(member, ownership, stats, enabled=True)

    # Published before the sender runs: one request, with the newest claim.
    for next_offset in (10, 20, 30):
        claim(ownership, offsets, first, next_offset)
    claim(ownership, offsets, second, 5)
    await offsets.close(10)
    assert stats.kafka_offset_commits == 1
    assert await kafka_offsets(kafka_bootstrap, group_id, member) == {0: 30, 1: 5}

    # One commit in flight: what is published meanwhile waits for it, newest only, and goes
    # out in one more request.
    offsets = GroupOffsets(member, ownership, stats, enabled=True)
    claim(ownership, offsets, first, 40)
    await asyncio.sleep(0)  # the sender takes the claim and sends it
    for next_offset in (50, 60, 70):
        claim(ownership, offsets, first, next_offset)
    await offsets.close(10)
    assert stats.kafka_offset_commits == 3
    assert stats.kafka_offset_commit_failures == 0
    assert await kafka_offsets(kafka_bootstrap, group_id, member) == {0: 70, 1: 5}


async def test_only_claims_still_held_when_sending_are_committed(
    member: AIOKafkaConsumer, kafka_bootstrap: str, group_id: str
) -> None:
    first, second = partitions(member)
    ownership, stats = Ownership(member), Stats()
    offsets = GroupOffsets(member, ownership, stats, enabled=True)
    claim(ownership, offsets, first, 100)
    claim(ownership, offsets, second, 100)
    await offsets.close(10)
    assert await kafka_offsets(kafka_bootstrap, group_id, member) == {0: 100, 1: 100}

    offsets = GroupOffsets(member, ownership, stats, enabled=True)
    # Revoked after its batch committed, before the copy went out: not this member's to send.
    claim(ownership, offsets, first, 150)
    ownership.release([first])
    # Fenced and claimed anew meanwhile (another epoch): the old claim is not sent either.
    offsets.publish({second: Claim(170, 1)})
    ownership.claim({second: Claim(160, 2)}, {})
    await offsets.close(10)
    assert stats.kafka_offset_commits == 1
    assert await kafka_offsets(kafka_bootstrap, group_id, member) == {0: 100, 1: 100}


async def test_nothing_is_committed_when_turned_off_or_stopped(
    member: AIOKafkaConsumer, kafka_bootstrap: str, group_id: str
) -> None:
    first, _ = partitions(member)
    ownership, stats = Ownership(member), Stats()
    ownership.advance({first: Claim(10, 1)})
    turned_off = GroupOffsets(member, ownership, stats, enabled=False)
    turned_off.publish(dict(ownership.claims))
    await turned_off.close(10)

    stopped = GroupOffsets(member, ownership, stats, enabled=True)
    await stopped.close(10)
    stopped.publish(dict(ownership.claims))
    await asyncio.sleep(0.5)
    assert stats.kafka_offset_commits == 0
    assert await kafka_offsets(kafka_bootstrap, group_id, member) == {}
