"""The rebalance listener, the claims, and the record of which partitions this consumer may write.

aiokafka runs the listener in its coordinator task, concurrently with the batch loop: the revoke
is awaited before JoinGroup, the assign after the new assignment is installed, when the fetcher
may already be starting, and a batch that ``getmany()`` already returned may still be in flight
during either. ``Ownership.lock`` is held around "process + commit" of a batch and
around each claim, never around ``getmany()`` or a call to Kafka, so a revoke waits for at most
one batch. Each claim and release also bumps ``generation``: a batch fetched before is dropped,
since the claim re-seeked its partitions from the database.

``Claimer`` claims partitions: every assigned one at each assignment (the listener), and, while
running, the assigned partitions of a topic found deleted and created again (the batch loop, told
by ``TopicWatch``). Both go through the one claim transaction (``Store.claim``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from sqlstate.errors import RebalanceError, SqlstateError
from sqlstate.kafka import topic_ids
from sqlstate.logs import partition_fields
from sqlstate.out_of_range import LogBounds, log_reset, log_topic_reset, read_bounds
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
    # Each claimed topic's ID in Kafka when it was claimed (None: Kafka gives none). Another ID
    # later means the topic was deleted and created again since.
    topic_ids: dict[str, str | None] = field(default_factory=dict)
    generation: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def release(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.claims.pop(tp, None)
        self.generation += 1


class Claimer:
    """Claims partitions from the database and seeks the consumer to their positions.

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
        on_claimed: Callable[[Mapping[TopicPartition, Claim]], None],
    ) -> None:
        self._on_claimed = on_claimed
        self._consumer = consumer
        self._store = store
        self._ownership = ownership
        self._owner = owner
        self._stats = stats
        self._policy = policy
        self._isolation_level = isolation_level
        self._forget = forget

    async def assign(self, assigned: set[TopicPartition]) -> None:
        """A new assignment: forget every earlier claim and claim ``assigned``."""
        # What Kafka says of the logs comes first, before the lock: a network call must never
        # hold up the batch loop's commit.
        bounds, ids = await self._read(assigned)
        async with self._ownership.lock:
            self._ownership.release(list(self._ownership.claims))
            self._ownership.topic_ids.clear()
            self._stats.rebalances += 1
            if not assigned:
                logger.info(
                    "assigned no partitions",
                    extra={"event": "partitions_assigned", "partitions": 0, "assigned": []},
                )
                return
            claims = await self._claim(bounds, ids)
        _log_claims("partitions_assigned", "assigned partitions", claims)

    async def reclaim(self, topics: set[str]) -> None:
        """Topics found deleted and created again while running: claim their assigned
        partitions again, as at an assignment, so that the claim transaction applies the
        ``--out-of-range`` policy to the topic's new ID.

        Every assigned partition of the topics, including ones this consumer stopped fetching
        because another consumer's reset of the topic fenced it. A rebalance that comes
        meanwhile claims everything again itself, with the topics' IDs: then nothing is done.
        """
        generation = self._ownership.generation
        # A topic deleted and not yet created again is left out: the rebalance that follows
        # takes it away.
        ids = await topic_ids(self._consumer, topics)
        assigned = {tp for tp in self._consumer.assignment() if tp.topic in ids}
        bounds = await read_bounds(self._consumer, assigned, self._isolation_level)
        async with self._ownership.lock:
            if generation != self._ownership.generation or not bounds:
                return
            self._ownership.release(bounds)
            claims = await self._claim(bounds, ids)
            self._consumer.resume(*claims)
        _log_claims(
            "partitions_reclaimed",
            f"claimed again the partitions of {', '.join(sorted(ids))}",
            claims,
        )

    async def _read(
        self, tps: set[TopicPartition]
    ) -> tuple[dict[TopicPartition, LogBounds], dict[str, str | None]]:
        """The logs' bounds, then the topics' IDs: a topic recreated between the two reads
        shows as recreated. The topics were just assigned: each must exist."""
        bounds = await read_bounds(self._consumer, tps, self._isolation_level)
        ids = await topic_ids(self._consumer, {tp.topic for tp in tps}, all_exist=True)
        return bounds, ids

    async def _claim(
        self, bounds: dict[TopicPartition, LogBounds], ids: dict[str, str | None]
    ) -> dict[TopicPartition, Claim]:
        """Under the ownership lock: one transaction for every claim, every position, every
        reset; under --out-of-range fail, nothing at all. Then seek."""
        claimed = await self._store.claim(
            bounds,
            self._owner,
            self._policy,
            self._forget,
            topic_ids=ids,
            isolation_level=self._isolation_level,
        )
        for recreated in claimed.recreated:
            self._stats.out_of_range_resets += len(recreated.stored)
            log_topic_reset(recreated.topic, recreated.old_id, recreated.new_id, recreated.stored)
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
        self._ownership.topic_ids.update(ids)
        self._on_claimed(claimed.claims)
        return claimed.claims


def _log_claims(event: str, what: str, claims: dict[TopicPartition, Claim]) -> None:
    """One line for the claims made: ``assigned partitions: t-0@12 (epoch 3), ...``."""
    logger.info(
        "%s: %s",
        what,
        ", ".join(
            f"{tp.topic}-{tp.partition}@{claim.next_offset} (epoch {claim.epoch})"
            for tp, claim in sorted(claims.items())
        ),
        extra={
            "event": event,
            "partitions": len(claims),
            "assigned": [
                partition_fields(tp, next_offset=claim.next_offset, epoch=claim.epoch)
                for tp, claim in sorted(claims.items())
            ],
        },
    )


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Claims partitions from the database on assignment; releases them on revoke.

    aiokafka logs and swallows whatever a listener raises, which would leave partitions
    unpositioned. So a failure is handed to ``on_fatal``, which stops the daemon; the
    partitions stay unclaimed meanwhile, so none of their records are counted.
    """

    def __init__(
        self,
        claimer: Claimer,
        ownership: Ownership,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self._claimer = claimer
        self._ownership = ownership
        self._on_fatal = on_fatal

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
            await self._claimer.assign(assigned)
        except BaseException as error:
            self._on_fatal(
                error
                if isinstance(error, SqlstateError)
                else RebalanceError(f"claiming partitions {describe(assigned)} failed: {error!r}")
            )
            raise
