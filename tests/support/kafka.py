"""Kafka helpers for tests: topics, producing, offsets, and the counting oracle.

Every helper opens its own aiokafka client and closes it before returning: an unclosed
client is a ResourceWarning, and warnings are errors in this test suite. Every helper
that waits is bounded by a timeout.

Partitions are plain ints throughout; the topic is always an argument. So the output of
``log_end_offsets`` can go straight into ``delete_records``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic, RecordsToDelete
from aiokafka.errors import NodeNotReadyError, TopicAlreadyExistsError, for_code

DEFAULT_TIMEOUT = 30.0


class Message(NamedTuple):
    """One record to produce. ``partition=None`` lets the key choose (murmur2, as Java)."""

    key: bytes | None
    value: bytes = b""
    partition: int | None = None


class Sent(NamedTuple):
    """Where a produced record landed."""

    partition: int
    offset: int
    key: bytes | None


class Received(NamedTuple):
    """A consumed record, reduced to what tests compare."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


#: {(partition, key): count}; a null key is None, distinct from the empty key b"".
Counts: TypeAlias = Counter[tuple[int, bytes | None]]

MessageLike: TypeAlias = (
    Message | tuple[bytes | None, bytes] | tuple[bytes | None, bytes, int | None]
)


class TopicFactory(Protocol):
    """The ``topic_factory`` fixture: ``await topic_factory(partitions, config=...)``."""

    def __call__(
        self, partitions: int = 3, *, config: Mapping[str, str] | None = None
    ) -> Awaitable[str]: ...


def counts_of(records: Iterable[Sent | Received]) -> Counts:
    """The oracle's shape for records we sent or received ourselves."""
    return Counter((record.partition, record.key) for record in records)


# --------------------------------------------------------------------------------------
# Clients that are always closed


@contextlib.asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def started(client: Any) -> AsyncIterator[Any]:
    """Start an AIOKafkaProducer or AIOKafkaConsumer and stop it whatever happens.

    ``stop()`` also after a failed ``start()``: that is what closes the connections a
    half-done bootstrap opened.
    """
    try:
        await client.start()
        yield client
    finally:
        await client.stop()


def plain_consumer(bootstrap: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer without a group, reading only committed records unless told otherwise."""
    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": None,
        "enable_auto_commit": False,
        "isolation_level": "read_committed",
        "auto_offset_reset": "earliest",
    }
    settings.update(options)
    return AIOKafkaConsumer(**settings)


# --------------------------------------------------------------------------------------
# Topics


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 3,
    config: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Create a topic and wait until every partition has a leader; return its name."""
    async with asyncio.timeout(timeout), admin_client(bootstrap) as admin:
        new_topic = NewTopic(name, partitions, 1, topic_configs=dict(config or {}))
        response = await admin.create_topics([new_topic])
        for topic, error_code, *rest in response.topic_errors:
            if error_code:
                message = rest[0] if rest and isinstance(rest[0], str) else ""
                raise for_code(error_code)(f"creating topic {topic}: {message}")
        await _wait_until_led(admin, name, partitions)
    return name


async def add_partitions(
    bootstrap: str, topic: str, total: int, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Grow ``topic`` to ``total`` partitions, as an operator would, and wait until all are led."""
    async with asyncio.timeout(timeout), admin_client(bootstrap) as admin:
        # Raises when the broker refuses (e.g. fewer partitions than the topic has).
        await admin.create_partitions({topic: NewPartitions(total)})
        await _wait_until_led(admin, topic, total)


async def _wait_until_led(admin: Any, topic: str, partitions: int) -> None:
    """The controller has the partitions; wait until the broker's metadata shows them led, so
    that the first produce or assign does not race the metadata update."""
    while True:
        (described,) = await admin.describe_topics([topic])
        led = [p for p in described["partitions"] if p["error_code"] == 0 and p["leader"] >= 0]
        if described["error_code"] == 0 and len(led) == partitions:
            return
        await asyncio.sleep(0.05)


async def delete_topics(bootstrap: str, names: list[str], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout), admin_client(bootstrap) as admin:
        await admin.delete_topics(names)


async def recreate_topic(
    bootstrap: str,
    name: str,
    partitions: int = 3,
    timeout: float = DEFAULT_TIMEOUT,
    config: Mapping[str, str] | None = None,
) -> None:
    """Delete ``name`` and create it again, as an operator would: a new, empty topic under the
    old name (with a new topic ID). The broker refuses the creation until the deletion is done,
    so it is retried until then."""
    await delete_topics(bootstrap, [name])
    async with asyncio.timeout(timeout):
        while True:
            try:
                await create_topic(bootstrap, name, partitions, config)
                return
            except TopicAlreadyExistsError:
                await asyncio.sleep(0.1)


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    async with asyncio.timeout(DEFAULT_TIMEOUT):
        while True:
            try:
                async with admin_client(bootstrap) as admin:
                    (described,) = await admin.describe_topics([topic])
                break
            except NodeNotReadyError:
                # aiokafka's admin client sends to a random broker of its metadata, and asks
                # with none (node id None) when that metadata names no broker yet: ask again.
                await asyncio.sleep(0.1)
    if described["error_code"]:
        raise for_code(described["error_code"])(f"describing topic {topic}")
    return sorted(p["partition"] for p in described["partitions"])


# --------------------------------------------------------------------------------------
# Producing


def _as_message(message: MessageLike) -> Message:
    return message if isinstance(message, Message) else Message(*message)


async def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[MessageLike],
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Sent]:
    """Produce ``messages`` (``Message`` or ``(key, value[, partition])``), in order.

    Idempotent with acks=all, so a retry inside the client never duplicates a record:
    tests count exactly. Sends are pipelined (``send`` only queues) and awaited together
    after ``flush``; awaiting each one would cost a round trip per record.
    """
    batch = [_as_message(message) for message in messages]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    async with asyncio.timeout(timeout), started(producer):
        futures = [
            await producer.send(topic, m.value, key=m.key, partition=m.partition) for m in batch
        ]
        await producer.flush()
        results = await asyncio.gather(*futures)
    return [Sent(r.partition, r.offset, m.key) for r, m in zip(results, batch, strict=True)]


async def produce_transaction(
    bootstrap: str,
    topic: str,
    messages: Iterable[MessageLike],
    *,
    commit: bool = True,
    transactional_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Sent]:
    """Produce ``messages`` in one transaction, then commit it or (``commit=False``) abort.

    The records are written to the log before an abort, so an aborted transaction leaves
    records and a marker that a read_committed consumer must skip, as in production.
    """
    batch = [_as_message(message) for message in messages]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=transactional_id or f"test-tx-{uuid.uuid4().hex}",
        enable_idempotence=True,
        linger_ms=5,
    )
    async with asyncio.timeout(timeout), started(producer):
        await producer.begin_transaction()
        futures = [
            await producer.send(topic, m.value, key=m.key, partition=m.partition) for m in batch
        ]
        await producer.flush()
        results = await asyncio.gather(*futures)
        if commit:
            await producer.commit_transaction()
        else:
            await producer.abort_transaction()
    return [Sent(r.partition, r.offset, m.key) for r, m in zip(results, batch, strict=True)]


# --------------------------------------------------------------------------------------
# Offsets


async def log_end_offsets(
    bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted"
) -> dict[int, int]:
    """{partition: offset after the last record}. Under read_committed: the last stable
    offset, which stops before the first open transaction."""
    return await _offsets(bootstrap, topic, isolation_level, end=True)


async def beginning_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """{partition: earliest offset still in the log} (moves with retention and
    delete_records)."""
    return await _offsets(bootstrap, topic, "read_uncommitted", end=False)


async def _offsets(bootstrap: str, topic: str, isolation_level: str, end: bool) -> dict[int, int]:
    partitions = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
    consumer = plain_consumer(bootstrap, isolation_level=isolation_level)
    async with asyncio.timeout(DEFAULT_TIMEOUT), started(consumer):
        if end:
            offsets = await consumer.end_offsets(partitions)
        else:
            offsets = await consumer.beginning_offsets(partitions)
    return {tp.partition: offset for tp, offset in offsets.items()}


async def committed_offsets(
    bootstrap: str, group_id: str, topic: str
) -> dict[int, tuple[int, str]]:
    """{partition: (offset, metadata)} that group ``group_id`` has committed in Kafka for
    ``topic``, as Kafka's tools read them; partitions with nothing committed are left out."""
    async with asyncio.timeout(DEFAULT_TIMEOUT), admin_client(bootstrap) as admin:
        offsets = await admin.list_consumer_group_offsets(group_id)
    return {
        tp.partition: (committed.offset, committed.metadata)
        for tp, committed in offsets.items()
        if tp.topic == topic and committed.offset >= 0
    }


async def delete_records(bootstrap: str, topic: str, before: Mapping[int, int]) -> dict[int, int]:
    """Delete the records before ``before[partition]``, as retention would; return the
    new {partition: log start offset}."""
    request = {TopicPartition(topic, p): RecordsToDelete(offset) for p, offset in before.items()}
    async with asyncio.timeout(DEFAULT_TIMEOUT), admin_client(bootstrap) as admin:
        low_watermarks = await admin.delete_records(request)
    return {tp.partition: offset for tp, offset in low_watermarks.items()}


# --------------------------------------------------------------------------------------
# Consuming


async def expected_counts(bootstrap: str, topic: str, *, timeout: float = 60.0) -> Counts:
    """The oracle: {(partition, key): count} of every committed record now in ``topic``.

    A plain read_committed consumer (no group, nothing committed anywhere) reads each
    partition from its log start to the last stable offset taken at the start. Aborted
    records and transaction markers are skipped, as sqlstate must skip them.
    """
    partitions = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
    counts: Counts = Counter()
    consumer = plain_consumer(bootstrap, max_partition_fetch_bytes=16 * 1024 * 1024)
    async with asyncio.timeout(timeout), started(consumer):
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batches.items():
                counts.update((tp.partition, r.key) for r in records if r.offset < ends[tp])
            # The position also steps over markers and aborted batches, so it reaches
            # the end even when the last records of a partition were aborted.
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    return counts


async def consume_in_group(
    bootstrap: str,
    topic: str,
    group_id: str,
    count: int,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    settle_ms: int = 500,
) -> list[Received]:
    """Consume ``count`` records in consumer group ``group_id`` and commit them.

    Then wait ``settle_ms`` more for records beyond ``count``, and return them too, so
    that a test comparing against ``count`` also catches duplicates and strays.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    received: list[Received] = []
    async with asyncio.timeout(timeout), started(consumer):
        while len(received) < count:
            batches = await consumer.getmany(timeout_ms=500)
            received += _received(batches)
        received += _received(await consumer.getmany(timeout_ms=settle_ms))
        await consumer.commit()
    return received


def _received(batches: dict[Any, list[Any]]) -> list[Received]:
    return [
        Received(tp.partition, r.offset, r.key, r.value)
        for tp, records in batches.items()
        for r in records
    ]
