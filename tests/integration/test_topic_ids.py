"""The requests sqlstate sends beyond aiokafka's public calls, against the real broker: topic IDs
(Metadata 10-13, encoded and decoded against bytes in tests/unit/test_kafka_protocol.py) and
ListOffsets (the log's start, its end as either isolation level reads, an offset by time). They
answer what aiokafka's own calls answer, and never wait behind a fetch that the broker holds
for want of new records."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from sqlstate.kafka.bounds import read_bounds
from sqlstate.kafka.client import EARLIEST, LATEST, list_offsets, topic_ids
from sqlstate.kafka.protocol import TopicsRequest, topics_of
from tests.support.kafka import TopicFactory, produce, recreate_topic, started


def id_bytes(text: str) -> bytes:
    """The 16 bytes that Kafka's text form of a topic ID (URL-safe base64, no padding) stands
    for."""
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    assert len(raw) == 16, f"topic ID {text!r} is {len(raw)} bytes"
    return raw


# How long the broker holds a fetch of partitions read to their end, here: far longer than a
# lookup's round trip, so that a lookup queued behind one shows.
FETCH_HOLD_MS = 5_000


@pytest.fixture
async def consumer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer outside any group, reading only committed records, as the daemon does, whose
    fetches the broker holds for ``FETCH_HOLD_MS`` when they find nothing new."""
    client = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_wait_ms=FETCH_HOLD_MS,
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


async def test_the_lookups_answer_what_aiokafka_answers(
    kafka_bootstrap: str, topic_factory: TopicFactory, consumer: AIOKafkaConsumer
) -> None:
    topic = await topic_factory(partitions=2)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    await produce(kafka_bootstrap, topic, [(b"k", b"v", 0)] * 5 + [(b"k", b"v", 1)] * 2)
    # A time after every committed record and before the open transaction's.
    await asyncio.sleep(0.01)
    between = round(time.time() * 1000)
    await asyncio.sleep(0.01)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic}-tx")
    async with started(producer):
        await producer.begin_transaction()
        for _ in range(3):
            await producer.send_and_wait(topic, b"v", key=b"k", partition=0)
        try:
            firsts = await list_offsets(consumer, tps, EARLIEST)
            assert firsts == await consumer.beginning_offsets(tps) == {tps[0]: 0, tps[1]: 0}
            # read_committed stops at the open transaction; the log holds its three records.
            stable = await list_offsets(consumer, tps, LATEST, "read_committed")
            assert stable == await consumer.end_offsets(tps) == {tps[0]: 5, tps[1]: 2}
            ends = await list_offsets(consumer, tps, LATEST)
            assert ends == {tps[0]: 8, tps[1]: 2}
            # By time: the first record at or after it; none (-1) after the last one.
            at_start = await list_offsets(consumer, tps, 0, "read_committed")
            assert at_start == {
                tp: found.offset
                for tp, found in (await consumer.offsets_for_times(dict.fromkeys(tps, 0))).items()
            }
            assert at_start == {tps[0]: 0, tps[1]: 0}
            # Only the open transaction's records come after ``between``: read_committed finds
            # none of them.
            assert await list_offsets(consumer, tps, between, "read_committed") == {
                tps[0]: -1,
                tps[1]: -1,
            }
            assert await list_offsets(consumer, tps, between) == {tps[0]: 5, tps[1]: -1}
            an_hour_on = round(time.time() * 1000) + 3_600_000
            assert await list_offsets(consumer, tps, an_hour_on, "read_committed") == {
                tps[0]: -1,
                tps[1]: -1,
            }
            bounds = await read_bounds(consumer, tps, "read_committed")
            assert [(b.first, b.end, b.log_end) for b in (bounds[tp] for tp in tps)] == [
                (0, 5, 8),
                (0, 2, 2),
            ]
        finally:
            await producer.abort_transaction()


async def test_a_lookup_never_waits_behind_a_held_fetch(
    kafka_bootstrap: str, topic_factory: TopicFactory, consumer: AIOKafkaConsumer
) -> None:
    topic = await topic_factory(partitions=1)
    tp = TopicPartition(topic, 0)
    await produce(kafka_bootstrap, topic, [(b"k", b"v", 0)] * 3)
    consumer.assign([tp])
    consumer.seek(tp, 3)

    async def poll() -> None:
        while True:
            await consumer.getmany(timeout_ms=FETCH_HOLD_MS)

    polling = asyncio.create_task(poll())
    try:
        # The fetcher sends its fetch at once; the broker holds it, the partition read whole.
        await asyncio.sleep(1.0)
        began = time.monotonic()
        bounds = await read_bounds(consumer, [tp], "read_committed")
        ids = await topic_ids(consumer, [topic], all_exist=True)
        took = time.monotonic() - began
        # The control: aiokafka's own lookup, on the fetch connection, waits for the held fetch.
        began = time.monotonic()
        assert await consumer.end_offsets([tp]) == {tp: 3}
        held = time.monotonic() - began
    finally:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
    assert (bounds[tp].first, bounds[tp].end) == (0, 3)
    assert ids[topic] is not None
    assert held > 1.0, f"no fetch was held ({held:.3f} s): the test shows nothing"
    # Behind the fetch, the first lookup alone would wait as long as the control, and each one
    # after it for the whole hold.
    assert took < held / 2, f"the lookups took {took:.3f} s, the control {held:.3f} s"
