"""The rebalance listener and the record of which partitions this consumer may write.

aiokafka runs the listener in its coordinator task, concurrently with the batch loop: the revoke
is awaited before JoinGroup, the assign after the new assignment is installed, when the fetcher
may already be starting, and a batch that ``getmany()`` already returned may still be in flight
during either. ``Ownership.lock`` is held around "process + commit" of a batch and
around each callback, never around ``getmany()``, so a revoke waits for at most one batch.
Each callback also bumps ``generation``: a batch fetched before a rebalance is dropped, since the
rebalance re-seeked its partitions from the database.

Both callbacks are bounded by ``Settings.rebalance_budget_s``. aiokafka sends no heartbeat from
JoinGroup until ``on_partitions_assigned`` returns, and the group waits for a member's revoke
only up to the rebalance timeout: a callback that waits longer gets the member expelled, and its
rejoin starts the same wait again. So:

- a revoke that cannot take the lock in time (the batch in flight waits for a database another
  process holds locked) releases the partitions without it. That batch's outcome is then not
  applied (the generation moved), and its commit is fenced by the next claim of its partitions,
  or read by that claim, whichever takes the database's lock first;
- an assignment that cannot be claimed in time (the lock, Kafka's ListOffsets, the database's
  write lock) is *held*: each partition paused at a placeholder position, never counted, and
  claimed from the batch loop (``claim_held``) as soon as it can be.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from sqlstate.errors import DatabaseBusyError, RebalanceError, SqlstateError
from sqlstate.kafka import group_generation
from sqlstate.kafka_errors import permanent
from sqlstate.logs import partition_fields
from sqlstate.out_of_range import LogBounds, log_reset, read_bounds
from sqlstate.settings import Settings
from sqlstate.stats import Stats
from sqlstate.store import Claim, Claimed, Forget, Store

logger = logging.getLogger(__name__)

# Where a held partition waits. Any offset would do: a paused partition is never fetched, and its
# claim seeks it to its stored position before resuming it.
_PLACEHOLDER_OFFSET = 0


def describe(tps: Iterable[TopicPartition]) -> str:
    """``orders-0, orders-1`` for logs."""
    return ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(tps)) or "none"


def hold(consumer: AIOKafkaConsumer, tp: TopicPartition, position: int) -> None:
    """Stop fetching ``tp``, at ``position``, until it is sought and resumed.

    Never leave an assigned partition without a position, paused or not: aiokafka's fetcher then
    asks Kafka for the partition's committed offset every round and, meanwhile, fetches nothing
    from the broker that leads it, so every other partition there stalls. Seek, then pause, with
    no await between.
    """
    consumer.seek(tp, position)
    consumer.pause(tp)


async def acquire_within(lock: asyncio.Lock, seconds: float) -> bool:
    """Take ``lock`` if it comes free within ``seconds``; whether it was taken.

    A free lock is taken even when no time is left. (An acquire that completes as the timeout
    fires is returned as taken, never left held.)
    """
    try:
        await asyncio.wait_for(lock.acquire(), max(seconds, 0.001))
    except TimeoutError:
        return False
    return True


@dataclass
class Ownership:
    """The partitions this consumer has claimed, where each stands, and the batch lock."""

    claims: dict[TopicPartition, Claim] = field(default_factory=dict)
    # Assigned by the group but not claimed yet (``Listener.claim_held``): paused, never counted.
    held: set[TopicPartition] = field(default_factory=set)
    generation: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def release(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.claims.pop(tp, None)
            self.held.discard(tp)
        self.generation += 1

    def release_all(self) -> None:
        self.release([*self.claims, *self.held])


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Claims partitions from the database on assignment; releases them on revoke.

    aiokafka logs and swallows whatever a listener raises, which would leave partitions
    unpositioned. So a failure is handed to ``on_fatal``, which stops the daemon; the
    partitions stay unclaimed meanwhile, so none of their records are counted.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        store: Store,
        ownership: Ownership,
        settings: Settings,
        stats: Stats,
        forget: Forget,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self._consumer = consumer
        self._store = store
        self._ownership = ownership
        self._settings = settings
        self._budget_s = settings.rebalance_budget_s
        self._stats = stats
        self._forget = forget
        self._on_fatal = on_fatal
        self._held_since = 0.0

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            # Waiting for the lock waits for the batch in flight to commit. Nothing to flush:
            # every committed batch is already durable.
            if await acquire_within(self._ownership.lock, self._budget_s):
                try:
                    self._ownership.release(revoked)
                finally:
                    self._ownership.lock.release()
            else:
                self._ownership.release(revoked)
                logger.warning(
                    "revoking without waiting for the batch in flight: it is still committing"
                    " after %gs (the database is locked?); its commit is fenced or read by the"
                    " next claim of its partitions",
                    self._budget_s,
                    extra={"event": "revoke_unwaited", "wait_s": self._budget_s},
                )
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
            self._stats.rebalances += 1
            if not assigned:
                self._ownership.release_all()
                logger.info(
                    "assigned no partitions; generation %s",
                    group_generation(self._consumer),
                    extra={
                        "event": "partitions_assigned",
                        "partitions": 0,
                        "assigned": [],
                        "generation": group_generation(self._consumer),
                    },
                )
                return
            unclaimed = await self._claim_within(assigned, time.monotonic() + self._budget_s)
            if unclaimed is not None:
                self._hold(assigned, unclaimed)
        except BaseException as error:
            self._on_fatal(
                error
                if isinstance(error, SqlstateError)
                else RebalanceError(f"claiming partitions {describe(assigned)} failed: {error!r}")
            )
            raise

    async def _claim_within(self, assigned: set[TopicPartition], deadline: float) -> str | None:
        """Claim ``assigned`` by ``deadline``; None once claimed, else why it could not be."""
        # The log's bounds come first, before the lock: a network call must never hold up
        # the batch loop's commit.
        try:
            bounds = await asyncio.wait_for(
                read_bounds(self._consumer, assigned, self._settings.isolation_level),
                deadline - time.monotonic(),
            )
        except (KafkaError, TimeoutError) as error:
            stop = permanent(error)
            if stop is not None:
                raise stop from error
            return f"Kafka did not give the log's bounds in time ({error!r})"
        if not await acquire_within(self._ownership.lock, deadline - time.monotonic()):
            return "the batch in flight is still committing"
        try:
            self._ownership.release_all()
            try:
                claimed = await self._claim(bounds, deadline - time.monotonic())
            except DatabaseBusyError:
                return "the database is locked by another connection"
            self._install(claimed)
        finally:
            self._ownership.lock.release()
        logger.info(
            "assigned partitions: %s; generation %s",
            ", ".join(
                f"{tp.topic}-{tp.partition}@{claim.next_offset} (epoch {claim.epoch})"
                for tp, claim in sorted(claimed.claims.items())
            ),
            group_generation(self._consumer),
            extra={
                "event": "partitions_assigned",
                "partitions": len(claimed.claims),
                "assigned": _claim_fields(claimed),
                "generation": group_generation(self._consumer),
            },
        )
        return None

    async def _claim(self, bounds: dict[TopicPartition, LogBounds], lock_wait_s: float) -> Claimed:
        # One transaction: every claim, every position, every out-of-range reset; under
        # --out-of-range fail, nothing at all. Its wait for the write lock is bounded too.
        return await self._store.claim(
            bounds,
            self._settings.owner,
            self._settings.out_of_range,
            self._forget,
            lock_wait_s=max(lock_wait_s, 0.001),
        )

    def _install(self, claimed: Claimed) -> None:
        """Seek the claimed partitions to their positions and record the claims."""
        for reset in claimed.resets:
            self._stats.out_of_range_resets += 1
            log_reset(reset.tp, reset.stored_offset, reset.bounds)
        # Seek and record the claims together, with no await between: aiokafka fetches a
        # partition as soon as it has a position, and records fetched from a position the batch
        # loop does not know yet would be passed over, never counted. Every partition, including
        # ones kept through the rebalance: aiokafka forgets all positions on each rebalance.
        for tp, claim in claimed.claims.items():
            self._consumer.seek(tp, claim.next_offset)
            self._consumer.resume(tp)  # a held partition was paused; others are not
        self._ownership.claims.update(claimed.claims)

    def _hold(self, assigned: set[TopicPartition], reason: str) -> None:
        """Keep ``assigned`` unclaimed, paused, for the batch loop to claim."""
        self._ownership.release_all()
        for tp in assigned:
            hold(self._consumer, tp, _PLACEHOLDER_OFFSET)
        self._ownership.held = set(assigned)
        self._held_since = time.monotonic()
        logger.warning(
            "assigned partitions: %s; not claimed within %gs: %s. They wait, paused, and are"
            " claimed as soon as possible; generation %s",
            describe(assigned),
            self._budget_s,
            reason,
            group_generation(self._consumer),
            extra={
                "event": "claim_deferred",
                "partitions": len(assigned),
                "assigned": [partition_fields(tp) for tp in sorted(assigned)],
                "reason": reason,
                "generation": group_generation(self._consumer),
            },
        )

    async def claim_held(self) -> None:
        """Claim the held partitions that are still assigned (called by the batch loop).

        Raises ``DatabaseBusyError`` when the database stays locked, and Kafka's errors or
        ``TimeoutError`` when the log's bounds do not come: the partitions stay held, to be
        claimed again later. Its waits are bounded as a callback's, so that a revoke coming
        meanwhile still takes the lock in time.
        """
        generation = self._ownership.generation
        held = self._ownership.held & self._consumer.assignment()
        if not held:
            return
        bounds = await asyncio.wait_for(
            read_bounds(self._consumer, held, self._settings.isolation_level), self._budget_s
        )
        # Bounded, so that the bounds are fresh when the claim checks positions against them.
        if not await acquire_within(self._ownership.lock, self._budget_s / 2):
            return  # a batch is still committing: next round
        try:
            if generation != self._ownership.generation:
                return  # a rebalance came: it decided anew what this consumer holds
            claimed = await self._claim(bounds, self._budget_s / 2)
            if generation != self._ownership.generation:
                # A revoke stopped waiting for this claim: the partitions are no longer ours.
                # Its epochs fence nobody but this consumer, which has let them go.
                return
            self._install(claimed)
            self._ownership.held.clear()
        finally:
            self._ownership.lock.release()
        seconds = time.monotonic() - self._held_since
        logger.info(
            "claimed partitions held since the rebalance %.1fs ago: %s",
            seconds,
            ", ".join(
                f"{tp.topic}-{tp.partition}@{claim.next_offset} (epoch {claim.epoch})"
                for tp, claim in sorted(claimed.claims.items())
            ),
            extra={
                "event": "partitions_claimed",
                "partitions": len(claimed.claims),
                "assigned": _claim_fields(claimed),
                "held_s": round(seconds, 3),
            },
        )


def _claim_fields(claimed: Claimed) -> list[dict[str, object]]:
    return [
        partition_fields(tp, next_offset=claim.next_offset, epoch=claim.epoch)
        for tp, claim in sorted(claimed.claims.items())
    ]
