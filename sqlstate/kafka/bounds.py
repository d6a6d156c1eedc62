"""The bounds of partitions' logs, asked of Kafka: what the out-of-range policy decides against.

Read before a claim's or a reset's transaction, never while a lock or a transaction is held
(``state/out_of_range.py`` keeps what is decided with them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from sqlstate.kafka.client import EARLIEST, LATEST, high_watermarks, list_offsets
from sqlstate.kafka.starts import with_starts
from sqlstate.settings import StartPoint
from sqlstate.state.out_of_range import LogBounds


async def read_bounds(
    consumer: AIOKafkaConsumer,
    tps: Iterable[TopicPartition],
    isolation_level: str,
    start_from: StartPoint | None = None,
) -> dict[TopicPartition, LogBounds]:
    """The log's bounds now, asked of each partition's leader.

    Never trust an out-of-range answer alone: with ``client_rack`` set, aiokafka fetches from a
    follower, and a lagging follower answers out-of-range for offsets the leader has. The bounds
    decide.

    With ``start_from``, for a claim: each with where --start-from puts it (``starts.py``).
    """
    tps = list(tps)
    if not tps:
        return {}
    # All at once: each is a round trip over the lookup connections (client.py).
    lookups = [
        list_offsets(consumer, tps, EARLIEST),
        list_offsets(consumer, tps, LATEST, isolation_level),
    ]
    if isolation_level != "read_uncommitted":
        lookups.append(high_watermarks(consumer, tps))
    firsts, ends, *high_marks = await asyncio.gather(*lookups)
    # Answered in any order (a lookup that retries comes back later): the log's end can be no
    # less than the last stable offset read meanwhile.
    log_ends = {tp: max(high_marks[0][tp], ends[tp]) for tp in tps} if high_marks else {}
    bounds = {tp: LogBounds(firsts[tp], ends[tp], log_ends.get(tp)) for tp in tps}
    if start_from is None:
        return bounds
    return await with_starts(consumer, bounds, start_from, isolation_level)
