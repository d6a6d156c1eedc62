"""The partitions this consumer may write, where each stands, and the batch lock: one owner.

``Ownership`` is the only writer of the in-memory claims, of the partitions held for a claim,
of the topics' IDs they were claimed under and of the group generation the batch loop compares
against. Each change is one method, and each method that records a position also moves the
consumer there, with no await between: aiokafka fetches a partition as soon as it has a
position, and records fetched from a position the batch loop does not know yet would be passed
over, never counted. What a claim or a commit changed goes to Kafka's group offsets from the
caller, once its transaction has committed (``GroupOffsets.publish``).

``generation`` moves at every release: a batch fetched under an older generation is dropped,
and a claim made across an await is not recorded if a release came meanwhile (``is_stale``).
``lock`` is held around "process + commit" of a batch and around each claim, never around
``getmany()`` or a call to Kafka, so a revoke waits for at most one batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Set
from types import MappingProxyType

from aiokafka import AIOKafkaConsumer, TopicPartition

from sqlstate.state.model import Claim

# Where a held partition waits. Any offset would do: a paused partition is never fetched, and its
# claim seeks it to its stored position before resuming it.
PLACEHOLDER_OFFSET = 0


def hold(consumer: AIOKafkaConsumer, tp: TopicPartition, position: int) -> None:
    """Stop fetching ``tp``, at ``position``, until it is sought and resumed.

    Never leave an assigned partition without a position, paused or not: aiokafka's fetcher then
    asks Kafka for the partition's committed offset every round and, meanwhile, fetches nothing
    from the broker that leads it, so every other partition there stalls. Seek, then pause, with
    no await between.
    """
    consumer.seek(tp, position)
    consumer.pause(tp)


class Ownership:
    """The claims this consumer holds, the partitions it holds unclaimed, and the batch lock."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._claims: dict[TopicPartition, Claim] = {}
        # Assigned by the group but not claimed yet (``Claimer.claim_held``): paused, never
        # counted.
        self._held: set[TopicPartition] = set()
        # Each claimed topic's ID in Kafka when it was claimed (None: Kafka gives none). Another
        # ID later means the topic was deleted and created again since.
        self._topic_ids: dict[str, str | None] = {}
        self._generation = 0
        # Whether the group has handed this consumer an assignment yet (an empty one too): its
        # topics' metadata is known only from then on.
        self._assigned = False
        self.lock = asyncio.Lock()

    # ---- what is owned ------------------------------------------------------------------------

    @property
    def claims(self) -> Mapping[TopicPartition, Claim]:
        """Each claimed partition's claim: where this consumer goes on, and its epoch."""
        return MappingProxyType(self._claims)

    @property
    def held(self) -> Set[TopicPartition]:
        """Partitions assigned but not claimed yet, paused until ``Claimer.claim_held``."""
        return frozenset(self._held)

    @property
    def topic_ids(self) -> Mapping[str, str | None]:
        return MappingProxyType(self._topic_ids)

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def assigned(self) -> bool:
        """Whether an assignment has come from the group yet (``assignment_received``)."""
        return self._assigned

    def assignment_received(self) -> None:
        self._assigned = True

    def is_stale(self, generation: int) -> bool:
        """Whether partitions were released since ``generation`` was read: what was fetched or
        decided then is no longer this consumer's to apply."""
        return generation != self._generation

    def claim_of(self, tp: TopicPartition) -> Claim | None:
        return self._claims.get(tp)

    def recreated(self, topic_ids: Mapping[str, str | None]) -> dict[str, str]:
        """Of ``topic_ids`` (as Kafka gives them now), the topics claimed under another ID,
        with the new one: deleted and created again since. A topic Kafka gives no ID, or that
        was not claimed under one, is not among them."""
        return {
            topic: new_id
            for topic, new_id in topic_ids.items()
            if new_id is not None
            and (old_id := self._topic_ids.get(topic)) is not None
            and old_id != new_id
        }

    # ---- changes ------------------------------------------------------------------------------

    def claim(
        self, claims: Mapping[TopicPartition, Claim], topic_ids: Mapping[str, str | None]
    ) -> None:
        """Record ``claims``, whose transaction has just committed, and seek each partition to
        its claim. Every partition, including ones kept through a rebalance: aiokafka forgets
        all positions on each rebalance."""
        for tp, claim in claims.items():
            self._consumer.seek(tp, claim.next_offset)
            self._consumer.resume(tp)  # a held or fenced partition was paused; others are not
        self._claims.update(claims)
        self._held.difference_update(claims)
        self._topic_ids.update(topic_ids)

    def advance(self, claims: Mapping[TopicPartition, Claim]) -> None:
        """A batch committed these new positions: the consumer is already past them."""
        self._claims.update(claims)

    def move(self, tp: TopicPartition, claim: Claim) -> None:
        """The database holds ``tp`` at another position under this consumer's epoch: follow it."""
        self._claims[tp] = claim
        self._consumer.seek(tp, claim.next_offset)

    def drop_and_hold(self, tp: TopicPartition, position: int) -> None:
        """Another consumer claimed ``tp``: forget its claim and stop fetching it, at
        ``position``, until a rebalance says what this consumer owns. It is not held for a
        claim: only the group can give it back."""
        self._claims.pop(tp, None)
        hold(self._consumer, tp, position)

    def rewind(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, Claim]:
        """Seek each of ``tps`` still claimed here back to its claim; the claims sought. One no
        longer assigned is left to the rebalance that took it away."""
        assigned = self._consumer.assignment()
        sought = {}
        for tp in tps:
            claim = self._claims.get(tp)
            if claim is not None and tp in assigned:
                self._consumer.seek(tp, claim.next_offset)
                sought[tp] = claim
        return sought

    def hold(self, tps: Iterable[TopicPartition]) -> None:
        """Release ``tps`` and keep those still assigned paused, unclaimed, for
        ``Claimer.claim_held``."""
        tps = set(tps)
        self.release(tps)
        tps &= self._consumer.assignment()
        for tp in tps:
            hold(self._consumer, tp, PLACEHOLDER_OFFSET)
        self._held |= tps

    def release(self, tps: Iterable[TopicPartition]) -> None:
        """Forget the claims of ``tps`` and stop holding them; the generation moves."""
        for tp in tps:
            self._claims.pop(tp, None)
            self._held.discard(tp)
        self._generation += 1

    def release_all(self) -> None:
        self.release([*self._claims, *self._held])
        self._topic_ids.clear()
