"""``python -m bench.publish``: what a batch's changelog transactions cost in Kafka, without SQLite.

Under ``--changelog`` each batch publishes, for every partition it changed, one Kafka
transaction (``sqlstate/changelog/producers.py``): the partition's changed rows, then its
position record, committed before the batch's SQLite transaction, with every partition's
transaction in flight at once. The database thread waits for all of them while holding SQLite's
write lock, so their latency is added to every commit.

This publishes the same shape of batch, rows of the bench's size (``key_counts`` records of
``key-0000042``-style keys), from one ``ChangelogProducer`` per partition as the daemon does,
``--batches`` times, and reports the latency of a batch (all partitions' transactions, in
parallel, as ``publish_all`` runs them) and, from a second set of producers timed step by step,
where one transaction's time goes:

- ``send``: from ``begin_transaction()`` until the broker acknowledged every record batch: the
  AddPartitionsToTxn request that a transaction's first record to a partition needs (retried
  every 20 ms while the broker still writes the previous transaction's markers: aiokafka's
  answer to KAFKA-5477), then the produce request;
- ``commit``: ``commit_transaction()``, the EndTxn request, answered once the coordinator has
  logged the commit (the markers are written after that).

Prints milliseconds (p50, p99, max) of each.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from bench.report import percentile
from bench.workload import create_topic, delete_topic, key_name
from sqlstate.changelog.producers import TRANSACTION_TIMEOUT_MS, ChangelogProducer, publish_all
from sqlstate.changelog.records import position_record
from sqlstate.changelog.topics import changelog_topic
from sqlstate.kafka.client import build_changelog_producer
from sqlstate.settings import Settings
from sqlstate.state.model import Row


def rows(topic: str, partition: int, count: int, batch: int) -> list[Row]:
    """``count`` changelog records as the counts' capture makes them."""
    return [
        (
            b'["key_counts","%s",%d,"%s"]' % (topic.encode(), partition, key_name(i)),
            b'{"topic":"%s","partition":%d,"key":"%s","count":%d}'
            % (topic.encode(), partition, key_name(i), batch + 1),
        )
        for i in range(count)
    ]


def summary(name: str, seconds: Sequence[float]) -> str:
    millis = [s * 1000 for s in seconds]
    p50, p99 = percentile(millis, 0.5), percentile(millis, 0.99)
    assert p50 is not None
    assert p99 is not None
    return f"{name:<34} {p50:>8.1f} {p99:>8.1f} {max(millis):>8.1f}"


async def batches(
    settings: Settings, topic: str, partitions: int, count: int, repeat: int
) -> list[float]:
    """Seconds per batch of ``partitions`` transactions in parallel, as the daemon runs them."""
    producers = [ChangelogProducer(settings, topic, p) for p in range(partitions)]
    await asyncio.gather(*(producer.start() for producer in producers))
    try:
        work = [rows(topic, p, count, 0) for p in range(partitions)]
        took = []
        for batch in range(repeat):
            started = time.perf_counter()
            outcomes = await publish_all(
                (producer, work[p], (batch + 1) * count, None)
                for p, producer in enumerate(producers)
            )
            took.append(time.perf_counter() - started)
            failed = [outcome for outcome in outcomes if not isinstance(outcome, int)]
            if failed:
                raise failed[0]
        return took
    finally:
        await asyncio.gather(*(producer.stop() for producer in producers))


async def steps(
    settings: Settings, topic: str, partitions: int, count: int, repeat: int
) -> tuple[list[float], list[float]]:
    """(send, commit) seconds of each transaction, the partitions' in parallel."""
    target = changelog_topic(settings.group_id, topic)
    producers = [
        build_changelog_producer(
            settings, f"bench.steps.{topic}.{p}.{uuid.uuid4().hex[:6]}", TRANSACTION_TIMEOUT_MS
        )
        for p in range(partitions)
    ]
    await asyncio.gather(*(producer.start() for producer in producers))
    sends: list[float] = []
    commits: list[float] = []

    async def one(producer: AIOKafkaProducer, partition: int, work: list[Row]) -> None:
        began = time.perf_counter()
        await producer.begin_transaction()
        futures = []
        batch = producer.create_batch()
        for key, value in (*work, position_record(0)):
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, target, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        futures.append(await producer.send_batch(batch, target, partition=partition))
        await asyncio.gather(*futures)
        sent = time.perf_counter()
        await producer.commit_transaction()
        sends.append(sent - began)
        commits.append(time.perf_counter() - sent)

    try:
        work = [rows(topic, p, count, 0) for p in range(partitions)]
        for _ in range(repeat):
            await asyncio.gather(
                *(one(producer, p, work[p]) for p, producer in enumerate(producers))
            )
        return sends, commits
    finally:
        await asyncio.gather(*(producer.stop() for producer in producers))


async def measure(bootstrap: str, partitions: int, count: int, repeat: int) -> None:
    topic = f"sqlstate-publish-{uuid.uuid4().hex[:8]}"
    settings = Settings(bootstrap_servers=bootstrap, topics=(topic,), group_id=topic)
    target = changelog_topic(settings.group_id, topic)
    await create_topic(bootstrap, target, partitions)
    try:
        whole = await batches(settings, topic, partitions, count, repeat)
        sends, commits = await steps(settings, topic, partitions, count, repeat)
    finally:
        await delete_topic(bootstrap, target)
    print(
        f"{partitions} partitions, {count:,} rows each per batch (one transaction per partition,"
        f" all in flight at once), {repeat} batches; milliseconds"
    )
    print(f"{'':<34} {'p50':>8} {'p99':>8} {'max':>8}")
    print(summary("batch (publish_all)", whole))
    print(summary("one transaction: send", sends))
    print(summary("one transaction: commit", commits))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.publish",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--rows",
        type=int,
        default=1_600,
        help="changed rows per partition and batch (the bench's batches change about 1,600:"
        " 30,000 records over 6 partitions, 10,000 keys)",
    )
    parser.add_argument("--batches", type=int, default=50)
    options = parser.parse_args(argv)
    asyncio.run(measure(options.bootstrap, options.partitions, options.rows, options.batches))


if __name__ == "__main__":
    main()
