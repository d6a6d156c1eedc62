"""A partition held back does not stall the others led by the same broker.

sqlstate holds a partition (stops fetching it without counting it) when another consumer claimed
it, or when a rebalance could not claim it in time. aiokafka's fetcher, for an assigned partition
without a position, asks Kafka for its committed offset every round and meanwhile fetches nothing
from the broker that leads it, paused or not. ``ownership.hold`` therefore seeks before it
pauses. Here a group consumer built as the daemon builds it holds one partition of three on the
test broker (which leads all three) and must still read the other two at once; the same consumer
that pauses without a position reads nothing, which shows what the test guards against.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import NoOffsetForPartitionError

from sqlstate.app.ownership import hold
from sqlstate.kafka.client import build_consumer
from sqlstate.settings import Settings
from tests.support.kafka import TopicFactory, produce

PER_PARTITION = 300
READ_FOR_S = 6.0

Hold = Callable[[AIOKafkaConsumer, TopicPartition], None]


class HoldFirst(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seeks every assigned partition to 0 except partition 0, which ``hold_first`` holds."""

    def __init__(self, consumer: AIOKafkaConsumer, hold_first: Hold) -> None:
        self.consumer = consumer
        self.hold_first = hold_first
        self.assigned = asyncio.Event()
        self.assigned_at = 0.0

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            if tp.partition == 0:
                self.hold_first(self.consumer, tp)
            else:
                self.consumer.seek(tp, 0)
        self.assigned_at = time.monotonic()
        self.assigned.set()


async def read_while_one_is_held(
    bootstrap: str, topic: str, group_id: str, hold_first: Hold
) -> Counter[int]:
    """Records read per partition within ``READ_FOR_S`` of the assignment."""
    consumer = build_consumer(
        Settings(topics=(topic,), group_id=group_id, bootstrap_servers=bootstrap)
    )
    listener = HoldFirst(consumer, hold_first)
    read: Counter[int] = Counter()
    await consumer.start()
    try:
        consumer.subscribe([topic], listener=listener)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(read.values()) < 2 * PER_PARTITION:
            if listener.assigned.is_set():
                deadline = min(deadline, listener.assigned_at + READ_FOR_S)
            try:
                batches = await consumer.getmany(timeout_ms=200)
            except NoOffsetForPartitionError:
                # A partition without a position: before the listener ran, or held by a bare
                # pause (the stall below), aiokafka raises this for it again and again.
                continue
            for tp, records in batches.items():
                read[tp.partition] += len(records)
        assert listener.assigned.is_set(), "never assigned"
    finally:
        await consumer.stop()
    return read


async def test_a_held_partition_does_not_stall_the_others(
    kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = await topic_factory(partitions=3)
    await produce(kafka_bootstrap, topic, [(b"k", b"v", i % 3) for i in range(3 * PER_PARTITION)])

    def sqlstate_hold(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        hold(consumer, tp, 0)

    read = await read_while_one_is_held(kafka_bootstrap, topic, f"{group_id}-a", sqlstate_hold)
    assert read == Counter({1: PER_PARTITION, 2: PER_PARTITION})

    def pause_only(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        consumer.pause(tp)

    stalled = await read_while_one_is_held(kafka_bootstrap, topic, f"{group_id}-b", pause_only)
    assert stalled == Counter(), "a paused partition without a position no longer stalls the others"
