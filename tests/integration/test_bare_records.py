"""aiokafka's bare records against the real broker: what a ConsumerRecord would have said, no less.

The daemon's consumer (with the built-in processors and keys and values as bytes) and the
changelogs' consumers read aiokafka's bare records (``sqlstate.kafka.client``): the objects its
parser makes, without the ``ConsumerRecord`` copy. Everything else stays aiokafka's: which
records a read_committed reader is given (aborted transactions and commit markers left out),
where its position ends. Here a log holding plain and compressed records, headers, a
tombstone, a committed and an aborted transaction is read by both kinds of consumer in one
process, and by an ordinary consumer, which must still be given ConsumerRecords.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from sqlstate.kafka.client import build_changelog_consumer, build_consumer
from sqlstate.settings import Settings
from tests.support.kafka import (
    TopicFactory,
    log_end_offsets,
    plain_consumer,
    produce_transaction,
    started,
)

Seen = tuple[int, int, bytes | None, bytes | None, tuple[tuple[str, bytes | None], ...]]


async def _produce(bootstrap: str, topic: str, first: int, headers: bool, gzip: bool) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type="gzip" if gzip else None,
    )
    async with started(producer):
        for i in range(first, first + 50):
            await producer.send(
                topic,
                None if i % 17 == 0 else b"value-%d" % i,
                key=None if i % 23 == 1 else b"key-%d" % (i % 9),
                partition=0,
                headers=[("h", b"%d" % i), ("empty", None)] if headers and i % 2 else [],
            )
        await producer.flush()


async def _read_all(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> list[Any]:
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    read: list[Any] = []
    deadline = time.monotonic() + 30
    while await consumer.position(tp) < end:
        assert time.monotonic() < deadline, f"read only to {await consumer.position(tp)} of {end}"
        batch = await consumer.getmany(tp, timeout_ms=200)
        read += batch.get(tp, [])
    return read


def _seen(records: list[Any]) -> list[Seen]:
    return [(r.offset, r.timestamp, r.key, r.value, tuple(r.headers)) for r in records]


@pytest.mark.parametrize("timestamps", ["CreateTime", "LogAppendTime"])
async def test_bare_records_say_what_consumer_records_say(
    kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str, timestamps: str
) -> None:
    topic = await topic_factory(1, config={"message.timestamp.type": timestamps})
    tp = TopicPartition(topic, 0)
    await _produce(kafka_bootstrap, topic, 0, headers=True, gzip=False)
    await produce_transaction(kafka_bootstrap, topic, [(b"kept", b"1", 0), (b"kept", b"2", 0)])
    await produce_transaction(kafka_bootstrap, topic, [(b"aborted", b"x", 0)] * 5, commit=False)
    await _produce(kafka_bootstrap, topic, 50, headers=False, gzip=True)
    end = (await log_end_offsets(kafka_bootstrap, topic, isolation_level="read_committed"))[0]

    settings = Settings(topics=(topic,), group_id=group_id, bootstrap_servers=kafka_bootstrap)
    bare = build_consumer(settings, bare_records=True)
    changelog = build_changelog_consumer(settings)
    ordinary = plain_consumer(kafka_bootstrap)
    async with started(bare), started(changelog), started(ordinary):
        from_bare, from_changelog, from_ordinary = await asyncio.gather(
            _read_all(bare, tp, end), _read_all(changelog, tp, end), _read_all(ordinary, tp, end)
        )
        positions = [await c.position(tp) for c in (bare, changelog, ordinary)]

    assert all(isinstance(r, ConsumerRecord) for r in from_ordinary)
    assert not any(isinstance(r, ConsumerRecord) for r in from_bare + from_changelog)
    assert _seen(from_bare) == _seen(from_changelog) == _seen(from_ordinary)
    assert positions == [end] * 3
    keys = [r.key for r in from_ordinary]
    assert keys.count(b"kept") == 2
    assert b"aborted" not in keys
    assert len(from_ordinary) == 102  # every record but the aborted five, no commit marker
    if timestamps == "LogAppendTime":
        assert all(r.timestamp_type == 1 for r in from_bare)
