"""Processors on a real SQLite file without Kafka: records made by hand, batches committed through
the store exactly as the daemon commits them (claim, then one transaction per batch)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from sqlstate.kafka.decoding import BadRecords
from sqlstate.processors.base import Processor, Record, Statement
from sqlstate.processors.registry import Processors
from sqlstate.state import migrate
from sqlstate.state.database import Database
from sqlstate.state.model import Committed, PartitionBatch
from sqlstate.state.out_of_range import LogBounds
from sqlstate.state.store import Store


def record(
    tp: TopicPartition,
    offset: int,
    key: Any,
    value: Any = b"v",
    timestamp: int = 0,
    headers: Sequence[tuple[str, bytes]] = (),
) -> Record:
    return ConsumerRecord(
        tp.topic, tp.partition, offset, timestamp, 0, key, value, None, 0, 0, tuple(headers)
    )


def order(customer: str, cents: int) -> str:
    return json.dumps({"customer": customer, "amount_cents": cents})


async def open_store(path: Path, processors: Processors) -> Store:
    database = await Database.open(path, busy_timeout_s=5.0)
    try:
        await migrate.apply_pending(database)
        await migrate.apply_processor_migrations(database, processors.members)
    except BaseException:
        await database.close()  # its thread would keep the test run from exiting
        raise
    return Store(database)


async def fold(
    path: Path,
    members: Sequence[Processor],
    batches: Sequence[Sequence[Record]],
    bad_records: BadRecords | None = None,
) -> Counter[str]:
    """Commit ``batches`` (records of any partitions, in offset order per partition) as the
    daemon would, records that did not decode sorted out by ``bad_records``; return the
    processors' counters."""
    processors = Processors.checked(members)
    try:
        store = await open_store(path, processors)
    except BaseException:
        processors.close()
        raise
    counters: Counter[str] = Counter()
    try:
        tps = sorted({TopicPartition(r.topic, r.partition) for batch in batches for r in batch})
        bounds = {tp: LogBounds(0, 1_000_000) for tp in tps}
        claims = (
            await store.claim(
                bounds,
                "test",
                "reset",
                processors.forget,
                topic_ids={},
                isolation_level="read_committed",
            )
        ).claims
        for batch in batches:
            parts = []
            for tp in tps:
                records: Sequence[Record] = [r for r in batch if (r.topic, r.partition) == tp]
                if not records:
                    continue
                next_offset = records[-1].offset + 1
                rejected: Sequence[Statement] = ()
                if bad_records is not None:
                    # -1: as if the failure counter moved during this batch's fetch.
                    records, rejected, _ = bad_records.sort(tp, records, -1)
                parts.append(
                    PartitionBatch(
                        tp=tp,
                        claim=claims[tp],
                        next_offset=next_offset,
                        log_end_offset=None,
                        records=len(records),
                        statements=[*rejected, *processors.statements(tp, records)],
                    )
                )
            for outcome in await store.commit_batch(parts):
                assert isinstance(outcome, Committed), outcome
                claims[outcome.tp] = outcome.claim
                counters.update(outcome.counters)
    finally:
        await store.database.close()
        processors.close()
    return counters
