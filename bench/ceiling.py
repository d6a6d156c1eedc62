"""The ceiling: a bare aiokafka consumer that fetches the topic and only iterates the records.

Run as its own process (``python -m bench.ceiling``), like ``sqlstate run``, so both pay the same
interpreter start-up and are measured the same way. The consumer is built by sqlstate's own
``build_consumer`` from the same ``Settings`` defaults, so fetch sizes, ``max_records``, the
isolation level and the poll timeout are the daemon's by construction; only the positions differ:
a listener seeks every assigned partition to the beginning instead of to a stored position.

With ``--collector sqlstate`` it runs with the garbage collector set as ``sqlstate run`` sets it
for its batch loop (``sqlstate/app/collector.py``), to show what that setting alone is worth;
with ``--records bare`` it iterates aiokafka's bare records, as ``sqlstate run`` does with its
built-in processors, instead of ``ConsumerRecord``s (``sqlstate/kafka/client.py``): with both,
it is a bare consumer that does what sqlstate does to read Kafka, and nothing else.

Prints one JSON object on stdout: the time and size of every non-empty batch, and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import NoOffsetForPartitionError

from bench.procfs import cpu_seconds, peak_rss_kib
from sqlstate.app import collector
from sqlstate.kafka.client import build_consumer, c_parser_loaded
from sqlstate.settings import Settings


class FromBeginning(ConsumerRebalanceListener):  # type: ignore[misc]
    """What sqlstate does on assignment with an empty database: seek to the beginning."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            await self._consumer.seek_to_beginning(*assigned)


async def consume(
    bootstrap: str,
    topic: str,
    group_id: str,
    messages: int,
    max_records: int | None,
    deadline_s: float,
    bare_records: bool,
) -> dict[str, Any]:
    settings = Settings(
        topics=(topic,),
        group_id=group_id,
        bootstrap_servers=bootstrap,
        client_id="sqlstate-bench-ceiling",
    )
    if max_records is not None:
        settings = dataclasses.replace(settings, max_records=max_records)
    consumer = build_consumer(settings, bare_records=bare_records)
    consumer.subscribe(topics=[topic], listener=FromBeginning(consumer))
    await consumer.start()
    batches: list[tuple[float, int]] = []
    seen = 0
    give_up = time.monotonic() + deadline_s
    try:
        while seen < messages:
            if time.monotonic() > give_up:
                raise TimeoutError(f"consumed {seen} of {messages} records in {deadline_s}s")
            try:
                batch = await consumer.getmany(
                    timeout_ms=settings.poll_timeout_ms, max_records=settings.max_records
                )
            except NoOffsetForPartitionError as error:
                # A rebalance leaves every partition without a position, and the fetcher may ask
                # for the group's committed offset before the listener's seek lands; with
                # auto_offset_reset="none" and nothing committed that raises this error.
                await consumer.seek_to_beginning(error.args[0])
                continue
            records = 0
            for partition_records in batch.values():
                for _record in partition_records:
                    records += 1
            if records:
                batches.append((time.time(), records))
                seen += records
    finally:
        await consumer.stop()
    return {
        "batches": batches,
        "records": seen,
        "peak_rss_kib": peak_rss_kib("self"),
        "cpu_s": cpu_seconds("self"),
        "c_parser": c_parser_loaded(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group-id", required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--max-records", type=int, help="as `sqlstate run --max-records`")
    parser.add_argument("--deadline", type=float, default=600.0)
    parser.add_argument(
        "--collector",
        choices=("python", "sqlstate"),
        default="python",
        help="the garbage collector's settings: Python's defaults, or sqlstate run's",
    )
    parser.add_argument(
        "--records",
        choices=("copied", "bare"),
        default="copied",
        help="aiokafka's ConsumerRecords, or its bare records as sqlstate run reads them",
    )
    args = parser.parse_args()
    collecting = (
        collector.tuned(args.max_records or Settings.max_records)
        if args.collector == "sqlstate"
        else contextlib.nullcontext()
    )
    with collecting:
        result = asyncio.run(
            consume(
                args.bootstrap,
                args.topic,
                args.group_id,
                args.messages,
                args.max_records,
                args.deadline,
                bare_records=args.records == "bare",
            )
        )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
