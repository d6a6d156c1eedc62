"""What to do when a stored position is not in the Kafka log (records deleted, topic recreated).

Checked in two places: at assignment, against the log's bounds before the first fetch, and when
the fetcher raises OffsetOutOfRangeError while running. Either way the policy decides: ``reset``
discards that partition's state and restarts it from the log's first offset in one transaction;
``fail`` stops with exit code 5. At assignment the ``fail`` check runs before the claim, so the
database file is left exactly as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from sqlstate.errors import OutOfRangeError
from sqlstate.settings import OutOfRangePolicy
from sqlstate.stats import Stats
from sqlstate.store import Claim, DiscardPartition, Store

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


class OutOfRangePolicyKeeper:
    """Applies the out-of-range policy to claimed partitions."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        store: Store,
        policy: OutOfRangePolicy,
        discard: DiscardPartition,
        stats: Stats,
        isolation_level: str = "read_committed",
    ) -> None:
        self._isolation_level = isolation_level
        self._consumer = consumer
        self._store = store
        self._policy = policy
        self._discard = discard
        self._stats = stats

    async def bounds(
        self, tps: Iterable[TopicPartition], broker_says_out_of_range: bool = False
    ) -> dict[TopicPartition, LogBounds]:
        """The log's bounds now. After the broker answered out-of-range, its end is taken as the
        end of the log whatever the isolation level."""
        tps = list(tps)
        if not tps:
            return {}
        firsts = await self._consumer.beginning_offsets(tps)
        ends = await self._consumer.end_offsets(tps)
        exact_end = broker_says_out_of_range or self._isolation_level == "read_uncommitted"
        return {tp: LogBounds(firsts[tp], ends[tp], exact_end) for tp in tps}

    def refuse_if_failing(self, tp: TopicPartition, position: int, bounds: LogBounds) -> None:
        """Under ``fail``, raise for a position outside the log; otherwise do nothing."""
        if self._policy == "fail" and not bounds.holds(position):
            raise OutOfRangeError(
                f"stored position {position} of {tp.topic}-{tp.partition} is outside the log"
                f" [{bounds.first}, {bounds.end}) (records deleted or topic recreated); the"
                " database was left unchanged. Rerun with --out-of-range reset to rebuild this"
                " partition from the earliest offset"
            )

    async def resolve(self, tp: TopicPartition, claim: Claim, bounds: LogBounds) -> Claim | None:
        """The claim to go on with: as it was if the log holds it, else per the policy.

        None: another consumer claimed the partition meanwhile, so it is no longer ours.
        """
        if bounds.holds(claim.next_offset):
            return claim
        self.refuse_if_failing(tp, claim.next_offset, bounds)
        if not await self._store.reset_partition(
            tp, claim.epoch, bounds.first, self._discard, bounds.end
        ):
            logger.warning(
                "%s-%d: out of range, but another consumer claimed it meanwhile; leaving it",
                tp.topic,
                tp.partition,
            )
            return None
        self._stats.out_of_range_resets += 1
        logger.warning(
            "%s-%d: stored position %d is outside the log [%d, %d); discarded the partition's"
            " state and restarted it from offset %d",
            tp.topic,
            tp.partition,
            claim.next_offset,
            bounds.first,
            bounds.end,
            bounds.first,
        )
        return Claim(bounds.first, claim.epoch)
