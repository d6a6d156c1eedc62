"""The rebalance listener and the record of which partitions this consumer may write.

aiokafka runs the listener in its coordinator task, concurrently with the batch loop: the revoke
is awaited before JoinGroup, the assign after the new assignment is installed, when the fetcher
may already be starting, and a batch that ``getmany()`` already returned may still be in flight
during either. ``Ownership.lock`` is held around "process + commit" of a batch and
around each callback, never around ``getmany()``, so a revoke waits for at most one batch.
Each callback also bumps ``generation``: a batch fetched before a rebalance is dropped, since the
rebalance re-seeked its partitions from the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from sqlstate.errors import RebalanceError, SqlstateError
from sqlstate.logs import partition_fields
from sqlstate.out_of_range import LogBounds, log_reset, read_bounds
from sqlstate.settings import OutOfRangePolicy
from sqlstate.stats import Stats
from sqlstate.store import Claim, Forget, Store

logger = logging.getLogger(__name__)


def describe(tps: Iterable[TopicPartition]) -> str:
    """``orders-0, orders-1`` for logs."""
    return ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(tps)) or "none"


@dataclass
class Ownership:
    """The partitions this consumer has claimed, where each stands, and the batch lock."""

    claims: dict[TopicPartition, Claim] = field(default_factory=dict)
    generation: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def release(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.claims.pop(tp, None)
        self.generation += 1


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Claims partitions from the database on assignment; releases them on revoke.

    aiokafka logs and swallows whatever a listener raises, which would leave partitions
    unpositioned. So a failure is handed to ``on_fatal``, which stops the daemon; the
    partitions stay unclaimed meanwhile, so none of their records are counted.

    ``on_claimed`` gets the claims once their transaction has committed and they are sought
    (the daemon copies them to the group's offsets in Kafka); it must not wait.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        store: Store,
        ownership: Ownership,
        owner: str,
        stats: Stats,
        policy: OutOfRangePolicy,
        isolation_level: str,
        forget: Forget,
        on_fatal: Callable[[BaseException], None],
        on_claimed: Callable[[Mapping[TopicPartition, Claim]], None],
    ) -> None:
        self._policy = policy
        self._isolation_level = isolation_level
        self._forget = forget
        self._consumer = consumer
        self._store = store
        self._ownership = ownership
        self._owner = owner
        self._stats = stats
        self._on_fatal = on_fatal
        self._on_claimed = on_claimed

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            # Waiting for the lock waits for the batch in flight to commit. Nothing to flush:
            # every committed batch is already durable.
            async with self._ownership.lock:
                self._ownership.release(revoked)
            logger.info(
                "revoked partitions: %s",
                describe(revoked),
                extra={
                    "event": "partitions_revoked",
                    "partitions": len(revoked),
                    "revoked": [partition_fields(tp) for tp in sorted(revoked)],
                },
            )
        except BaseException as error:
            self._on_fatal(RebalanceError(f"releasing partitions failed: {error!r}"))
            raise

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            # The log's bounds come first, before the lock: a network call must never hold up
            # the batch loop's commit.
            bounds = await read_bounds(self._consumer, assigned, self._isolation_level)
            async with self._ownership.lock:
                await self._claim(assigned, bounds)
        except BaseException as error:
            self._on_fatal(
                error
                if isinstance(error, SqlstateError)
                else RebalanceError(f"claiming partitions {describe(assigned)} failed: {error!r}")
            )
            raise

    async def _claim(
        self, assigned: set[TopicPartition], bounds: dict[TopicPartition, LogBounds]
    ) -> None:
        self._ownership.release(list(self._ownership.claims))
        self._stats.rebalances += 1
        if not assigned:
            logger.info(
                "assigned no partitions",
                extra={"event": "partitions_assigned", "partitions": 0, "assigned": []},
            )
            return
        # One transaction: every claim, every position, every out-of-range reset; under
        # --out-of-range fail, nothing at all.
        claimed = await self._store.claim(bounds, self._owner, self._policy, self._forget)
        for reset in claimed.resets:
            self._stats.out_of_range_resets += 1
            log_reset(reset.tp, reset.stored_offset, reset.bounds)
        # Seek and record the claims together, with no await between: aiokafka fetches a
        # partition as soon as it has a position, and records fetched from a position the batch
        # loop does not know yet would be passed over, never counted. Every partition, including
        # ones kept through the rebalance: aiokafka forgets all positions on each rebalance.
        for tp, claim in claimed.claims.items():
            self._consumer.seek(tp, claim.next_offset)
        self._ownership.claims.update(claimed.claims)
        self._on_claimed(claimed.claims)
        logger.info(
            "assigned partitions: %s",
            ", ".join(
                f"{tp.topic}-{tp.partition}@{claim.next_offset} (epoch {claim.epoch})"
                for tp, claim in sorted(claimed.claims.items())
            ),
            extra={
                "event": "partitions_assigned",
                "partitions": len(claimed.claims),
                "assigned": [
                    partition_fields(tp, next_offset=claim.next_offset, epoch=claim.epoch)
                    for tp, claim in sorted(claimed.claims.items())
                ],
            },
        )
