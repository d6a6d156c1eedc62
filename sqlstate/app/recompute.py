"""Recompute state from Kafka's records into a database, through the daemon's own batch path.

``recompute`` reads each given partition from a first offset up to a stop offset with a consumer
outside any group, and commits what it reads batch by batch as the daemon's batch loop does: each
partition's share made by the loop's own ``partition_batch`` (the records gated at the claim,
sorted out by ``--on-bad-record``, turned into the processors' statements), committed with
``Store.commit_batch`` (one transaction, positions moved by compare-and-set). Unlike
``replay.py``, which takes records from anywhere, it moves each position as the consumer stands,
past transaction markers and aborted records, so it ends exactly at a stored position. Since a
processor's state depends on its records alone, whatever the batch boundaries, the database then
holds exactly the state a daemon would have made of those records. ``sqlstate verify`` runs it
into a scratch file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from sqlstate.app.batch_loop import partition_batch, unseen
from sqlstate.app.processor_errors import ProcessorErrors
from sqlstate.errors import BadRecordError, BrokerError
from sqlstate.kafka.client import consumed_position
from sqlstate.kafka.decoding import BadRecords, Decoding, reason, sort_out
from sqlstate.observe.stats import Stats
from sqlstate.processors.registry import Processors
from sqlstate.settings import Settings
from sqlstate.state.model import Claim, Committed
from sqlstate.state.out_of_range import LogBounds
from sqlstate.state.store import Store

#: Who claims the partitions of a recomputed database, in its positions table.
OWNER = "sqlstate verify"
_POLL_MS = 500


@dataclass(frozen=True)
class Span:
    """Read ``[first, stop)`` of a partition."""

    first: int
    stop: int


@dataclass
class Recomputed:
    """Where each partition's recomputed position stands, how many records went into its
    state, and why a partition stopped short: the first record that does not decode, under
    ``--on-bad-record fail``."""

    reached: dict[TopicPartition, int] = field(default_factory=dict)
    records: dict[TopicPartition, int] = field(default_factory=dict)
    stopped: dict[TopicPartition, str] = field(default_factory=dict)


async def recompute(
    consumer: AIOKafkaConsumer,
    store: Store,
    processors: Processors,
    decoding: Decoding,
    spans: Mapping[TopicPartition, Span],
    settings: Settings,
    *,
    progress: Callable[[int], None] | None = None,
) -> Recomputed:
    """Read ``spans`` with ``consumer`` (started, its deserializers ``decoding``'s) and commit
    them into ``store``'s database (migrated), as the daemon would under ``settings``: its
    isolation level, batch size and bad-record and processor-error policies. A partition the
    database already holds a position of, at or past its span's first offset, continues from
    it (a ``sqlstate rebuild`` run again after it was stopped). ``progress`` is told how many
    records each committed batch took.

    ``BrokerError`` when Kafka gives nothing for the connect timeout while partitions are still
    short of their stop, or when records were deleted while they were read.
    """
    bad_records = BadRecords(decoding, settings.on_bad_record)
    errors = ProcessorErrors(processors, settings, Stats())
    isolation_level = settings.isolation_level
    max_records = settings.max_records
    idle_timeout_s = settings.connect_timeout_s
    claimed = await store.claim(
        {tp: LogBounds(span.first, span.stop) for tp, span in spans.items()},
        OWNER,
        "fail",
        processors.forget,
        topic_ids={},
        isolation_level=isolation_level,
    )
    claims = dict(claimed.claims)
    done = Recomputed(
        reached={tp: claim.next_offset for tp, claim in claims.items()},
        records=dict.fromkeys(claims, 0),
    )
    reading = {tp for tp, claim in claims.items() if claim.next_offset < spans[tp].stop}
    consumer.assign(sorted(reading))
    for tp in reading:
        consumer.seek(tp, claims[tp].next_offset)
    progress_at = time.monotonic()
    while reading:
        if time.monotonic() - progress_at > idle_timeout_s:
            behind = {tp: claims[tp].next_offset for tp in reading}
            raise BrokerError(
                f"Kafka gave no records for {idle_timeout_s:g} s while {_named(behind)} were"
                " still short of the offsets to recompute up to"
            )
        mark = bad_records.mark()
        try:
            batch = await consumer.getmany(timeout_ms=_POLL_MS, max_records=max_records)
        except OffsetOutOfRangeError as error:
            raise BrokerError(
                f"records of {_named(error.args[0])} were deleted from Kafka while they were"
                " read: run sqlstate verify again"
            ) from error
        except KafkaError as error:
            if getattr(error, "retriable", False):
                await asyncio.sleep(_POLL_MS / 1000)
                continue
            raise BrokerError(f"reading the records to recompute failed: {error!r}") from error
        # Keys and values whose schema is not fetched yet: waits for the schema registry.
        await bad_records.decoding.complete(batch, asyncio.Event())
        advances = []
        for tp in sorted(reading):
            claim, stop = claims[tp], spans[tp].stop
            position = consumed_position(consumer, tp)
            if position is None or position <= claim.next_offset:
                continue
            position = min(position, stop)
            fetched = [r for r in batch.get(tp, ()) if r.offset < stop]
            try:
                advances.append(
                    partition_batch(
                        tp, claim, fetched, position, None, processors, bad_records, mark, errors
                    )
                )
            except BadRecordError:
                first = sort_out(unseen(fetched, claim.next_offset))[1][0]
                done.stopped[tp] = f"offset {first.offset} does not decode: {reason(first)}"
                reading.discard(tp)
        if advances:
            progress_at = time.monotonic()
            outcomes = await errors.commit(store, advances)
            for outcome in outcomes:
                # Nobody else writes this database: every partition's compare-and-set passes.
                assert isinstance(outcome, Committed), outcome
                claims[outcome.tp] = Claim(outcome.claim.next_offset, outcome.claim.epoch)
                done.reached[outcome.tp] = outcome.claim.next_offset
                done.records[outcome.tp] += outcome.records
            if progress is not None:
                progress(sum(outcome.records for outcome in outcomes))
        finished = {tp for tp in reading if claims[tp].next_offset >= spans[tp].stop}
        if finished:
            consumer.pause(*finished)
            reading -= finished
    return done


def _named(offsets: Mapping[TopicPartition, int]) -> str:
    return ", ".join(
        f"{tp.topic}-{tp.partition}@{offset}" for tp, offset in sorted(offsets.items())
    )
