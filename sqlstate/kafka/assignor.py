"""The group's partition assignor: balanced like round robin, and sticky, so that a rebalance
moves only the partitions that must move.

Round robin deals the partitions out again at every rebalance: when one member of three leaves,
about two thirds of the partitions change hands, and each one that does is claimed anew (under
``--changelog``, a new transactional producer and a restore, docs/scaling.md). Here each member
says in its join which partitions it holds, and the leader lets every member keep as many of
them as its share allows, then deals out the rest. The shares are round robin's: every member
gets the same number of partitions, give or take one.

What a member says it holds only guides the leader: a member that was out of the group may name
partitions that others have held since, and whatever the join messages say, every partition is
given to exactly one member. Exactness never rests on the assignment anyway (each claim is
fenced in the database, and under ``--changelog`` in Kafka).

aiokafka calls an assignor through its class, so each consumer gets a class of its own
(``sticky_assignor``): what one consumer holds is never another's. Members whose subscriptions
differ (a topic pattern that matched a new topic on one member first) are assigned by round
robin.

It is the only assignor a member offers, under round robin's protocol name, ``roundrobin``:

- a member of an earlier sqlstate offers ``roundrobin`` only, so during a rolling upgrade both
  join one group, whichever leads assigns by its own rule (every member takes any valid
  assignment), and the earlier one ignores what the others say they hold;
- offering a second assignor would double every rebalance: aiokafka 0.14 sends a JoinGroup per
  assignor it offers, each with one more protocol, and the coordinator rebalances again when a
  member's join changes during the rebalance (``_send_join_group_request``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence

from aiokafka import TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

logger = logging.getLogger(__name__)

NAME = "roundrobin"
# Far more than any member's partitions take (about 40 bytes each); a larger hint is ignored.
MAX_HINT_BYTES = 4 * 2**20
_VERSION = 0


def balanced_sticky(
    partitions: Sequence[TopicPartition], held: Mapping[str, Iterable[TopicPartition]]
) -> dict[str, list[TopicPartition]]:
    """Give each of ``partitions`` to one member of ``held`` (member -> what it says it holds),
    each member getting ``len(partitions) // len(held)`` of them or one more, and keeping as
    many of those it holds as that allows.

    Members holding more get the larger shares first, so fewer partitions move; ties, and a
    partition two members say they hold, go by member id: the same input gives the same result
    on whichever member leads.
    """
    if not held:
        return {}
    valid = set(partitions)
    claims = {member: sorted(set(tps) & valid) for member, tps in held.items()}
    members = sorted(claims, key=lambda member: (-len(claims[member]), member))
    base, extra = divmod(len(partitions), len(members))
    shares = {member: base + (1 if rank < extra else 0) for rank, member in enumerate(members)}
    assigned: dict[str, list[TopicPartition]] = {member: [] for member in members}
    taken: set[TopicPartition] = set()
    for member in members:
        for tp in claims[member]:
            if len(assigned[member]) == shares[member]:
                break
            if tp not in taken:
                assigned[member].append(tp)
                taken.add(tp)
    free = iter(tp for tp in sorted(partitions) if tp not in taken)
    for member in members:
        while len(assigned[member]) < shares[member]:
            assigned[member].append(next(free))
    return assigned


def encode_held(tps: Iterable[TopicPartition]) -> bytes:
    """What a member says it holds, in its join message."""
    return json.dumps(sorted([tp.topic, tp.partition] for tp in tps)).encode()


def decode_held(user_data: bytes) -> list[TopicPartition]:
    """``encode_held``'s partitions; none for anything else (a member's data is only a hint,
    and the leader must assign whatever a member sends)."""
    if not user_data or len(user_data) > MAX_HINT_BYTES:
        return []
    try:
        return [
            TopicPartition(topic, partition)
            for topic, partition in json.loads(user_data)
            if isinstance(topic, str) and type(partition) is int
        ]
    except Exception:  # any shape at all, deep nesting (RecursionError) too
        return []


class _StickyAssignor(AbstractPartitionAssignor):  # type: ignore[misc]  # aiokafka's, untyped
    """The assignor; ``sticky_assignor`` makes a subclass per consumer, holding its partitions."""

    name = NAME
    version = _VERSION
    held: tuple[TopicPartition, ...] = ()

    @classmethod
    def assign(
        cls,
        cluster: ClusterMetadata,
        members: Mapping[str, ConsumerProtocolMemberMetadata],
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        subscriptions = {frozenset(metadata.subscription) for metadata in members.values()}
        if len(subscriptions) != 1:
            by_round_robin: dict[str, ConsumerProtocolMemberAssignment]
            by_round_robin = RoundRobinPartitionAssignor.assign(cluster, members)
            return by_round_robin
        partitions: list[TopicPartition] = []
        for topic in sorted(next(iter(subscriptions))):
            numbers = cluster.partitions_for_topic(topic)
            if numbers is None:
                logger.warning("no partition metadata for topic %s", topic)
                continue
            partitions.extend(TopicPartition(topic, number) for number in numbers)
        held = {member: decode_held(metadata.user_data) for member, metadata in members.items()}
        assigned = balanced_sticky(partitions, held)
        return {
            member: ConsumerProtocolMemberAssignment(
                cls.version, _by_topic(assigned.get(member, [])), b""
            )
            for member in members
        }

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(cls.version, sorted(topics), encode_held(cls.held))

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        cls.held = tuple(assignment.partitions())


def _by_topic(tps: Iterable[TopicPartition]) -> list[tuple[str, list[int]]]:
    topics: dict[str, list[int]] = {}
    for tp in sorted(tps):
        topics.setdefault(tp.topic, []).append(tp.partition)
    return sorted(topics.items())


def sticky_assignor() -> type[AbstractPartitionAssignor]:
    """A sticky assignor class of one consumer's own (aiokafka calls assignors through their
    class: a class attribute is the only place for what this member holds)."""
    return type("StickyAssignor", (_StickyAssignor,), {"held": ()})


def assignment_strategy() -> tuple[type[AbstractPartitionAssignor], ...]:
    """What a consumer offers the group: the sticky assignor alone (the module says why)."""
    return (sticky_assignor(),)
