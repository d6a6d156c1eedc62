"""When a stored position is not in the Kafka log: records deleted, or the topic recreated.

The policy (``--out-of-range``) decides: ``reset`` discards the partition's state and restarts it
from the log's first offset, in the same transaction as the position move; ``fail`` stops with
exit code 5 and writes nothing. It is checked in one place, the claim transaction
(``Store.claim``, against the bounds read just before): at an assignment, and when the fetcher
raises OffsetOutOfRangeError while running, which claims the partition again (``app/claims.py``,
``Claimer.recover``). The log's bounds are read
from Kafka (``kafka/bounds.py``) before the transaction, never while holding a lock or a
transaction open.

A topic deleted and created again is a new log under the old name, with a new topic ID: a stored
position may well fall inside it, so the ID tells. It is the same case for the whole topic: the
same policy decides, for every partition of the topic at once (``Store.claim``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition

from sqlstate.errors import OutOfRangeError
from sqlstate.observe.logs import LogEvent, partition_fields
from sqlstate.state.start import Start

logger = logging.getLogger("sqlstate.out_of_range")  # its documented name
_RESET = LogEvent(
    logger,
    logging.WARNING,
    "out_of_range_reset",
    "%(topic)s-%(partition)d: stored position %(next_offset)d is outside the log"
    " [%(log_start_offset)d, %(log_end_offset)d); discarded the partition's state and"
    " restarted it from offset %(reset_offset)d",
)
_TOPIC_RESET = LogEvent(
    logger,
    logging.WARNING,
    "topic_recreated_reset",
    "topic %(topic)s was deleted and created again (ID %(topic_id)s, was %(old_topic_id)s):"
    " discarded the state of its %(partitions)d stored partitions (%(positions)s) and restarted"
    " them from the new log's first offsets",
    # As describe_positions says them.
    words=lambda fields: {
        "positions": ", ".join(
            f"{p['topic']}-{p['partition']}@{p['next_offset']}" for p in fields["discarded"]
        )
        or "none"
    },
)


@dataclass(frozen=True)
class LogBounds:
    """The offsets a partition's log holds now: [first, last)."""

    first: int
    # Where this consumer's isolation level reads to, what lag is measured against: the log's
    # end, or under read_committed the last stable offset, which stops before an open
    # transaction.
    end: int
    # The log's end when ``end`` is the last stable offset: a position between the two, stored
    # by a read_uncommitted run (or before a transaction was opened), is still in the log.
    log_end: int | None = None
    # Where --start-from puts the partition, should the file have no position for it (None: at
    # ``first``, the earliest offset). Asked only for a claim: ``state/start.py``.
    start: Start | None = None

    @property
    def last(self) -> int:
        return self.end if self.log_end is None else self.log_end

    def holds(self, position: int) -> bool:
        # A position equal to the end is valid: it is where the next record will be written.
        return self.first <= position <= self.last


def refusal(tp: TopicPartition, position: int, bounds: LogBounds) -> OutOfRangeError:
    """The error of ``--out-of-range fail``, raised before anything is written."""
    return OutOfRangeError(
        f"stored position {position} of {tp.topic}-{tp.partition} is outside the log"
        f" [{bounds.first}, {bounds.last}) (records deleted or topic recreated); the"
        " database was left unchanged. Rerun with --out-of-range reset to rebuild this"
        " partition from the earliest offset"
    )


def log_reset(tp: TopicPartition, stored_offset: int, bounds: LogBounds) -> None:
    """The warning of ``--out-of-range reset``, once the reset has committed."""
    _RESET.log(
        **partition_fields(tp),
        next_offset=stored_offset,
        log_start_offset=bounds.first,
        log_end_offset=bounds.last,
        reset_offset=bounds.first,
    )


def describe_positions(topic: str, stored: Mapping[int, int]) -> str:
    """``orders-0@1000, orders-1@400``: a topic's stored positions, for messages."""
    return ", ".join(f"{topic}-{p}@{offset}" for p, offset in sorted(stored.items())) or "none"


def recreated_refusal(
    topic: str, old_id: str, new_id: str, stored: Mapping[int, int]
) -> OutOfRangeError:
    """The error of ``--out-of-range fail`` for a topic deleted and created again."""
    return OutOfRangeError(
        f"topic {topic} was deleted and created again: its ID is {new_id}, the counts were made"
        f" from {old_id}, and its stored positions ({describe_positions(topic, stored)}) belong"
        " to the old topic; the database was left unchanged. Rerun with --out-of-range reset to"
        " discard the topic's counts and rebuild them from the new topic's earliest offsets"
    )


def log_topic_reset(topic: str, old_id: str, new_id: str, stored: Mapping[int, int]) -> None:
    """The warning of ``--out-of-range reset`` for a recreated topic, once the reset committed."""
    _TOPIC_RESET.log(
        topic=topic,
        topic_id=new_id,
        old_topic_id=old_id,
        partitions=len(stored),
        discarded=[
            partition_fields(TopicPartition(topic, p), next_offset=offset)
            for p, offset in sorted(stored.items())
        ],
    )
