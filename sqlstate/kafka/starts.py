"""Where ``--start-from`` puts each claimed partition, asked of Kafka before the claim.

The claim transaction uses it only for a partition the file has no position for
(``state/start.py`` decides, and says why a partition added to its topic later starts at its
earliest offset). Asked at every claim, before any lock or transaction, as the log's bounds
are: which partitions are new is known only inside the transaction.

- ``earliest``: the log's first offset (sqlstate's behaviour before --start-from);
- ``latest``: the end the consumer reads to (the last stable offset under read_committed, as
  Kafka's own ``auto.offset.reset=latest`` starts): only records written after it are read;
- a time: the first record whose timestamp is at or after it (ListOffsets by timestamp, which
  under read_committed finds no record past the last stable offset); no such record means the
  end. A time given as ``-2h`` is counted back from now, when the claim asks Kafka.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from sqlstate.kafka.client import list_offsets
from sqlstate.settings import StartPoint
from sqlstate.state.out_of_range import LogBounds
from sqlstate.state.start import Start


async def with_starts(
    consumer: AIOKafkaConsumer,
    bounds: Mapping[TopicPartition, LogBounds],
    point: StartPoint,
    isolation_level: str,
) -> dict[TopicPartition, LogBounds]:
    """``bounds``, each with the ``Start`` of ``point`` for its partition (a time: as
    ``isolation_level`` reads)."""
    offsets = {tp: log.first for tp, log in bounds.items()}
    policy: str = point.name
    if point.name == "latest":
        offsets = {tp: log.end for tp, log in bounds.items()}
    elif point.name == "timestamp":
        at_ms = point.at_ms
        if at_ms is None:
            assert point.ago_ms is not None
            at_ms = max(round(time.time() * 1000) - point.ago_ms, 0)
        policy = utc_text(at_ms)
        found = await list_offsets(consumer, bounds, at_ms, isolation_level)
        offsets = {tp: log.end if found[tp] < 0 else found[tp] for tp, log in bounds.items()}
    return {
        tp: dataclasses.replace(log, start=Start(policy, offsets[tp], _partitions(consumer, tp)))
        for tp, log in bounds.items()
    }


def utc_text(at_ms: int) -> str:
    """``2026-12-01T00:00:00.000Z``: a record time as the positions table records it."""
    moment = datetime.fromtimestamp(at_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_ms % 1000:03d}Z"


def _partitions(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
    """How many partitions ``tp``'s topic has, as the consumer's metadata says (it knows at
    least the partitions it was assigned)."""
    known: set[int] = consumer.partitions_for_topic(tp.topic) or set()
    return max(len(known), int(tp.partition) + 1)
