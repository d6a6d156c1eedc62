"""When a stored position is not in the Kafka log: records deleted, or the topic recreated.

The policy (``--out-of-range``) decides: ``reset`` discards the partition's state and restarts it
from the log's first offset, in the same transaction as the position move; ``fail`` stops with
exit code 5 and writes nothing. It is checked in two places, both through the store: when a
partition is claimed (``Store.claim``, against the bounds read here just before) and when the
fetcher raises OffsetOutOfRangeError while running (``Store.reset``). The log's bounds are read
from Kafka before the transaction, never while holding a lock or a transaction open.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from sqlstate.errors import OutOfRangeError
from sqlstate.logs import partition_fields

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogBounds:
    """The offsets a partition's log holds now: [first, end)."""

    first: int
    end: int
    # Under read_committed, ``end`` is the last stable offset: the log may reach further (a
    # transaction still open), and a position there, stored by an earlier read_uncommitted run,
    # is valid. Past such an end, only the broker's own out-of-range answer is proof.
    end_is_log_end: bool = True

    def holds(self, position: int) -> bool:
        # A position equal to the end is valid: it is where the next record will be written.
        return self.first <= position and (position <= self.end or not self.end_is_log_end)


async def read_bounds(
    consumer: AIOKafkaConsumer,
    tps: Iterable[TopicPartition],
    isolation_level: str,
    broker_says_out_of_range: bool = False,
) -> dict[TopicPartition, LogBounds]:
    """The log's bounds now. After the broker answered out-of-range, its end is taken as the end
    of the log whatever the isolation level.

    Never trust an out-of-range answer alone: with ``client_rack`` set, aiokafka fetches from a
    follower, and a lagging follower answers out-of-range for offsets the leader has. The bounds,
    asked of the leader, decide.
    """
    tps = list(tps)
    if not tps:
        return {}
    firsts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    exact_end = broker_says_out_of_range or isolation_level == "read_uncommitted"
    return {tp: LogBounds(firsts[tp], ends[tp], exact_end) for tp in tps}


def refusal(tp: TopicPartition, position: int, bounds: LogBounds) -> OutOfRangeError:
    """The error of ``--out-of-range fail``, raised before anything is written."""
    return OutOfRangeError(
        f"stored position {position} of {tp.topic}-{tp.partition} is outside the log"
        f" [{bounds.first}, {bounds.end}) (records deleted or topic recreated); the"
        " database was left unchanged. Rerun with --out-of-range reset to rebuild this"
        " partition from the earliest offset"
    )


def log_reset(tp: TopicPartition, stored_offset: int, bounds: LogBounds) -> None:
    """The warning of ``--out-of-range reset``, once the reset has committed."""
    logger.warning(
        "%s-%d: stored position %d is outside the log [%d, %d); discarded the partition's"
        " state and restarted it from offset %d",
        tp.topic,
        tp.partition,
        stored_offset,
        bounds.first,
        bounds.end,
        bounds.first,
        extra={
            "event": "out_of_range_reset",
            **partition_fields(tp),
            "next_offset": stored_offset,
            "log_start_offset": bounds.first,
            "log_end_offset": bounds.end,
            "reset_offset": bounds.first,
        },
    )
