"""The data every measurement reads: one topic, produced once, and the counts it must yield.

Keys are ``key-0000042``-style ASCII, drawn uniformly or from a Zipf distribution with a fixed
seed, so a run is repeatable and the bench knows the exact count of every key to check the
database against. Values are 100-byte JSON orders of the key as customer,
``{"customer":"key-0000042","amount_cents":1234,"sequence":17,"pad":"..."}``, so that the
processors that read values (``latest``, the SQL example summing ``amount_cents``) run on the
same topic; the bench knows each customer's total and each key's last value too. Records are
placed with aiokafka's default partitioner (murmur2 of the key), as a producer would place
them, and sent as whole record batches per partition: producing a million records one
``send()`` at a time would take longer than all the measurements together.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

VALUE_BYTES = 100
# Below the broker's default message.max.bytes (about 1 MiB), so no batch is refused.
PRODUCE_BATCH_BYTES = 512 * 1024


@dataclass(frozen=True)
class Workload:
    messages: int
    partitions: int
    keys: int
    zipf: float | None  # the Zipf exponent; None: uniform
    seed: int = 42

    def describe(self) -> str:
        spread = f"Zipf s={self.zipf:g}" if self.zipf else "uniform"
        return (
            f"{self.messages:,} messages of {VALUE_BYTES} bytes, {self.partitions} partitions,"
            f" {self.keys:,} distinct keys ({spread})"
        )


@dataclass(frozen=True)
class Produced:
    """The topic as produced: where each partition ends and what the counts must be."""

    topic: str
    end_offsets: dict[int, int]
    counts: dict[str, int]  # key (as stored: UTF-8 text) -> messages
    seconds: float
    amounts: dict[str, int]  # customer (the key) -> sum of amount_cents
    latest: dict[str, str]  # key -> its last value, as text


def order_value(name: bytes, sequence: int) -> bytes:
    """A JSON order of ``VALUE_BYTES`` bytes; its amount follows from the sequence number."""
    head = b'{"customer":"%s","amount_cents":%d,"sequence":%d,"pad":"' % (
        name,
        amount_cents(sequence),
        sequence,
    )
    return head + b"." * (VALUE_BYTES - len(head) - 2) + b'"}'


def amount_cents(sequence: int) -> int:
    return sequence * 7919 % 10_000


def key_name(index: int) -> bytes:
    return b"key-%07d" % index


def draw_keys(workload: Workload) -> list[int]:
    """The key index of each message, in production order."""
    rng = random.Random(workload.seed)
    population = range(workload.keys)
    if workload.zipf is None:
        return rng.choices(population, k=workload.messages)
    weights = (1.0 / (rank**workload.zipf) for rank in range(1, workload.keys + 1))
    return rng.choices(
        population, cum_weights=list(itertools.accumulate(weights)), k=workload.messages
    )


def partition_of(key: bytes, partitions: int) -> int:
    """aiokafka's (and the Java client's) default partitioner for a non-null key."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])
    finally:
        await admin.close()
    # Metadata reaches every broker component a moment after creation; wait until a client
    # sees all partitions so that nothing later races it.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        for _ in range(100):
            if len(consumer.partitions_for_topic(topic) or ()) == partitions:
                return
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {topic} did not show {partitions} partitions")
    finally:
        await consumer.stop()


async def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def produce(
    bootstrap: str,
    topic: str,
    workload: Workload,
    value_of: Callable[[bytes, int], bytes] = order_value,
) -> Produced:
    """Produce the workload into ``topic`` (which must exist and be empty), each value
    ``value_of(key, sequence)`` (a JSON order; another encoding of it for the Avro run)."""
    indices = draw_keys(workload)
    names = [key_name(i) for i in range(workload.keys)]
    placement = [partition_of(name, workload.partitions) for name in names]
    per_partition: list[list[int]] = [[] for _ in range(workload.partitions)]
    for index in indices:
        per_partition[placement[index]].append(index)

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, max_batch_size=PRODUCE_BATCH_BYTES
    )
    await producer.start()
    started = time.perf_counter()
    try:
        await asyncio.gather(
            *(
                produce_partition(producer, topic, partition, keys, names, value_of)
                for partition, keys in enumerate(per_partition)
            )
        )
    finally:
        await producer.stop()
    seconds = time.perf_counter() - started

    ends = await end_offsets(bootstrap, topic, workload.partitions)
    expected = {p: len(keys) for p, keys in enumerate(per_partition)}
    if ends != expected:
        raise RuntimeError(f"topic {topic} ends at {ends}, expected {expected}")
    counts = {names[i].decode(): n for i, n in Counter(indices).items()}
    amounts: Counter[str] = Counter()
    latest: dict[str, str] = {}
    for keys in per_partition:  # a key lives in one partition: its records in offset order
        for sequence, index in enumerate(keys):
            name = names[index].decode()
            amounts[name] += amount_cents(sequence)
            latest[name] = order_value(names[index], sequence).decode()
    return Produced(topic, ends, counts, seconds, dict(amounts), latest)


async def produce_partition(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    keys: list[int],
    names: list[bytes],
    value_of: Callable[[bytes, int], bytes] = order_value,
) -> None:
    """Send one partition's records as full batches; one batch in flight per partition."""
    deliveries = []
    batch = producer.create_batch()
    for sequence, index in enumerate(keys):
        value = value_of(names[index], sequence)
        while batch.append(key=names[index], value=value, timestamp=None) is None:
            deliveries.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
    if batch.record_count():
        deliveries.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*deliveries)
