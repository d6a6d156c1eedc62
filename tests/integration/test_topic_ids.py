"""The requests sqlstate sends beyond aiokafka's public calls, against the real broker: topic IDs
(Metadata 10-13, encoded and decoded against bytes in tests/unit/test_kafka_protocol.py) and the
log's end whatever the isolation level."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from sqlstate.kafka.client import high_watermarks, topic_ids
from sqlstate.kafka.protocol import TopicsRequest, topics_of
from tests.support.kafka import TopicFactory, produce, recreate_topic, started


def id_bytes(text: str) -> bytes:
    """The 16 bytes that Kafka's text form of a topic ID (URL-safe base64, no padding) stands
    for."""
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    assert len(raw) == 16, f"topic ID {text!r} is {len(raw)} bytes"
    return raw


@pytest.fixture
async def consumer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer outside any group, reading only committed records, as the daemon does."""
    client = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    async with started(client):
        yield client


async def test_a_topic_has_an_id_that_changes_when_it_is_created_again(
    kafka_bootstrap: str, topic_factory: TopicFactory, consumer: AIOKafkaConsumer
) -> None:
    topic = await topic_factory(partitions=2)
    first = await topic_ids(consumer, [topic, "no-such-topic-at-all"])
    assert list(first) == [topic], "a topic that does not exist is left out"
    first_id = first[topic]
    assert first_id is not None
    assert id_bytes(first_id) != bytes(16), "Kafka's zero UUID stands for no ID"
    assert await topic_ids(consumer, [topic]) == first, "the same topic, the same ID"

    await recreate_topic(kafka_bootstrap, topic, 2)
    second_id = (await topic_ids(consumer, [topic]))[topic]
    assert second_id is not None
    assert second_id != first_id
    assert id_bytes(second_id) != bytes(16)


class Exactly:
    """A request that is sent in one given version, whatever else the broker speaks."""

    def __init__(self, struct: Any) -> None:
        self._struct = struct

    def prepare(self, versions: dict[int, tuple[int, int]]) -> Any:
        return self._struct


@pytest.mark.parametrize("version", [10, 11, 12, 13])
async def test_every_version_reads_the_same_id(
    version: int, topic_factory: TopicFactory, consumer: AIOKafkaConsumer
) -> None:
    topic = await topic_factory(partitions=1)
    expected = await topic_ids(consumer, [topic])
    request = Exactly(TopicsRequest([topic]).prepare({3: (version, version)}))
    client = consumer._client
    response = await client.send(client.get_random_node(), request)
    answered_in = response.API_VERSION
    assert answered_in == version
    assert topics_of(response) == expected


async def test_the_log_end_reaches_past_an_open_transaction(
    kafka_bootstrap: str, topic_factory: TopicFactory, consumer: AIOKafkaConsumer
) -> None:
    topic = await topic_factory(partitions=1)
    tp = TopicPartition(topic, 0)
    await produce(kafka_bootstrap, topic, [(b"k", b"v", 0)] * 5)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic}-tx")
    async with started(producer):
        await producer.begin_transaction()
        for _ in range(3):
            await producer.send_and_wait(topic, b"v", key=b"k", partition=0)
        try:
            # read_committed: the last stable offset stops at the open transaction; the log
            # itself holds its three records.
            assert await consumer.end_offsets([tp]) == {tp: 5}
            assert await high_watermarks(consumer, [tp]) == {tp: 8}
        finally:
            await producer.abort_transaction()
