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
robin (with their follows under ``--standby N``, below).

Under ``--standby N`` the leader also chooses which members follow each partition's changelog
(``followers``): N members besides its owner, among the members that run ``--standby N``,
preferring those that followed it or held it before (their files are up to date), each member
following about as many partitions as the others; and a partition nobody holds goes first to a
member that follows it (``balanced_sticky``), whose claim then restores only the tail. A member
says its N, what it holds and what it follows in its join; the leader sends each such member
what it follows in its assignment (``encode_follows``). A member whose assignment carries no
follow set (an earlier sqlstate led the rebalance) follows every partition, as ``--standby all``
does.

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
from dataclasses import dataclass, field

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
    partitions: Sequence[TopicPartition],
    held: Mapping[str, Iterable[TopicPartition]],
    follows: Mapping[str, Iterable[TopicPartition]] | None = None,
) -> dict[str, list[TopicPartition]]:
    """Give each of ``partitions`` to one member of ``held`` (member -> what it says it holds),
    each member getting ``len(partitions) // len(held)`` of them or one more, and keeping as
    many of those it holds as that allows. A partition nobody keeps goes first to a member that
    says it follows it (``follows``, under ``--standby N``: its file is up to date, so the claim
    restores only the tail), within that member's share.

    Members holding more get the larger shares first, so fewer partitions move, then those
    following more of the partitions nobody holds; ties, and a partition two members say they
    hold, go by member id: the same input gives the same result on whichever member leads.
    """
    if not held:
        return {}
    valid = set(partitions)
    claims = {member: sorted(set(tps) & valid) for member, tps in held.items()}
    unheld = valid.difference(*claims.values())
    following = {member: set(tps) & valid for member, tps in (follows or {}).items()}
    members = sorted(
        claims,
        key=lambda member: (
            -len(claims[member]),
            -len(following.get(member, set()) & unheld),
            member,
        ),
    )
    base, extra = divmod(len(partitions), len(members))
    shares = {member: base + (1 if rank < extra else 0) for rank, member in enumerate(members)}
    assigned: dict[str, list[TopicPartition]] = {member: [] for member in members}
    taken: set[TopicPartition] = set()

    def keep(member: str, tps: Iterable[TopicPartition]) -> None:
        """Give ``member`` those of ``tps`` nobody has yet, within its share."""
        for tp in tps:
            if len(assigned[member]) == shares[member]:
                return
            if tp not in taken:
                assigned[member].append(tp)
                taken.add(tp)

    for member in members:
        keep(member, claims[member])
    for member in members:
        keep(member, sorted(following.get(member, set())))
    free = iter(tp for tp in sorted(partitions) if tp not in taken)
    for member in members:
        while len(assigned[member]) < shares[member]:
            assigned[member].append(next(free))
    return assigned


@dataclass
class FollowPlan:
    """``--standby N``: this member's N, and what the group's leader gave it to follow.

    ``follows`` is None until an assignment says, and ``everything`` is set when the last one
    carried no follow set (an earlier sqlstate led): then every partition is followed."""

    count: int
    follows: frozenset[TopicPartition] | None = None
    everything: bool = False
    owns: frozenset[TopicPartition] = field(default_factory=frozenset)  # the same assignment's
    # What this member follows now, told to the leader at the next join (sticky follows).
    following: frozenset[TopicPartition] = field(default_factory=frozenset)


@dataclass(frozen=True)
class JoinHint:
    """What a member says in its join: what it holds and, under ``--standby N``, its N and what
    it follows. Only a hint: the leader must assign whatever a member sends."""

    held: Sequence[TopicPartition] = ()
    standby: int | None = None
    follows: Sequence[TopicPartition] = ()


def _pairs(tps: Iterable[TopicPartition]) -> list[list[object]]:
    return sorted([tp.topic, tp.partition] for tp in tps)


def _tps(pairs: object) -> list[TopicPartition]:
    if not isinstance(pairs, list):
        return []
    return [
        TopicPartition(pair[0], pair[1])
        for pair in pairs
        if isinstance(pair, list)
        and len(pair) == 2
        and isinstance(pair[0], str)
        and type(pair[1]) is int
    ]


def encode_held(tps: Iterable[TopicPartition], plan: FollowPlan | None = None) -> bytes:
    """What a member says in its join message: the partitions it holds, as a JSON list (what an
    earlier sqlstate sends and reads); under ``--standby N`` an object that adds N and what it
    follows (an earlier leader reads no partitions from it, and only loses the stickiness)."""
    if plan is None:
        return json.dumps(_pairs(tps)).encode()
    return json.dumps(
        {"held": _pairs(tps), "standby": plan.count, "follows": _pairs(plan.following)}
    ).encode()


def _decoded(user_data: bytes) -> object:
    """Another member's JSON (its join, or the leader's assignment); None for anything that is
    not JSON, too large, or nested too deep."""
    if not user_data or len(user_data) > MAX_HINT_BYTES:
        return None
    try:
        return json.loads(user_data)
    except Exception:  # any bytes at all, deep nesting (RecursionError) too
        return None


def decode_hint(user_data: bytes) -> JoinHint:
    """``encode_held``'s hint; an empty one for anything else."""
    data = _decoded(user_data)
    if isinstance(data, list):
        return JoinHint(_tps(data))
    if not isinstance(data, dict):
        return JoinHint()
    count = data.get("standby")
    return JoinHint(
        _tps(data.get("held")),
        count if type(count) is int and count >= 1 else None,
        _tps(data.get("follows")),
    )


def decode_held(user_data: bytes) -> list[TopicPartition]:
    """The partitions a member's join says it holds."""
    return list(decode_hint(user_data).held)


def followers(
    owners: Mapping[TopicPartition, str], hints: Mapping[str, JoinHint]
) -> dict[str, list[TopicPartition]]:
    """Under ``--standby N``: which partitions each member that runs it follows.

    Each partition gets ``N`` followers (the largest N any member asks for, as many as there
    are such members besides the partition's owner), never its owner. A member keeps the
    partitions it follows or holds where it can (its file has them up to date), within a share
    of ``ceil(follows / members)``; the rest go to the members following fewest. Ties go by
    member id: the same input gives the same result on whichever member leads."""
    counting = sorted(member for member, hint in hints.items() if hint.standby is not None)
    if not counting:
        return {}
    want = max(hints[member].standby or 0 for member in counting)
    need = {
        tp: min(want, sum(member != owner for member in counting))
        for tp, owner in sorted(owners.items())
    }
    share = -(-sum(need.values()) // len(counting))
    given: dict[str, list[TopicPartition]] = {member: [] for member in counting}
    chosen: dict[TopicPartition, list[str]] = {tp: [] for tp in need}

    def take(member: str, tp: TopicPartition) -> None:
        given[member].append(tp)
        chosen[tp].append(member)

    up_to_date = {
        member: set(hints[member].follows) | set(hints[member].held) for member in counting
    }
    for tp in need:
        for member in counting:
            if (
                len(chosen[tp]) < need[tp]
                and member != owners[tp]
                and tp in up_to_date[member]
                and len(given[member]) < share
            ):
                take(member, tp)
    for tp in need:
        while len(chosen[tp]) < need[tp]:
            free = [m for m in counting if m != owners[tp] and m not in chosen[tp]]
            take(min(free, key=lambda member: (len(given[member]), member)), tp)
    _even_out(given, chosen, owners)
    return given


def _even_out(
    given: dict[str, list[TopicPartition]],
    chosen: dict[TopicPartition, list[str]],
    owners: Mapping[TopicPartition, str],
) -> None:
    """Move follows from the members following most to those following fewest, while one can
    move (a member never follows its own partition, nor one partition twice)."""
    while True:
        heavy = max(given, key=lambda member: (len(given[member]), member))
        light = min(given, key=lambda member: (len(given[member]), member))
        if len(given[heavy]) - len(given[light]) <= 1:
            return
        movable = [tp for tp in given[heavy] if owners[tp] != light and light not in chosen[tp]]
        if not movable:
            return
        tp = movable[-1]
        given[heavy].remove(tp)
        chosen[tp].remove(heavy)
        given[light].append(tp)
        chosen[tp].append(light)


def encode_follows(tps: Iterable[TopicPartition]) -> bytes:
    """A ``--standby N`` member's assignment data: what it follows."""
    return json.dumps({"follows": _pairs(tps)}).encode()


def decode_follows(user_data: bytes) -> frozenset[TopicPartition] | None:
    """``encode_follows``'s partitions; None when the assignment carries none."""
    data = _decoded(user_data)
    if not isinstance(data, dict) or "follows" not in data:
        return None
    return frozenset(_tps(data["follows"]))


class _StickyAssignor(AbstractPartitionAssignor):  # type: ignore[misc]  # aiokafka's, untyped
    """The assignor; ``sticky_assignor`` makes a subclass per consumer, holding its partitions."""

    name = NAME
    version = _VERSION
    held: tuple[TopicPartition, ...] = ()
    plan: FollowPlan | None = None

    @classmethod
    def assign(
        cls,
        cluster: ClusterMetadata,
        members: Mapping[str, ConsumerProtocolMemberMetadata],
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        hints = {member: decode_hint(metadata.user_data) for member, metadata in members.items()}
        subscriptions = {frozenset(metadata.subscription) for metadata in members.values()}
        if len(subscriptions) != 1:
            by_round_robin: dict[str, ConsumerProtocolMemberAssignment]
            by_round_robin = RoundRobinPartitionAssignor.assign(cluster, members)
            dealt = {member: by_round_robin[member].partitions() for member in by_round_robin}
            return cls._with_follows(dealt, hints)
        partitions: list[TopicPartition] = []
        for topic in sorted(next(iter(subscriptions))):
            numbers = cluster.partitions_for_topic(topic)
            if numbers is None:
                logger.warning("no partition metadata for topic %s", topic)
                continue
            partitions.extend(TopicPartition(topic, number) for number in numbers)
        assigned = balanced_sticky(
            partitions,
            {member: hint.held for member, hint in hints.items()},
            {member: hint.follows for member, hint in hints.items()},
        )
        return cls._with_follows({m: assigned.get(m, []) for m in members}, hints)

    @classmethod
    def _with_follows(
        cls, assigned: Mapping[str, Sequence[TopicPartition]], hints: Mapping[str, JoinHint]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        """Each member's assignment, with what it follows under ``--standby N``."""
        owners = {tp: member for member, tps in assigned.items() for tp in tps}
        follows = followers(owners, hints)
        return {
            member: ConsumerProtocolMemberAssignment(
                cls.version,
                _by_topic(tps),
                encode_follows(follows[member]) if member in follows else b"",
            )
            for member, tps in assigned.items()
        }

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(
            cls.version, sorted(topics), encode_held(cls.held, cls.plan)
        )

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        cls.held = tuple(assignment.partitions())
        if cls.plan is not None:
            follows = decode_follows(assignment.user_data)
            cls.plan.everything = follows is None
            cls.plan.owns = frozenset(cls.held)
            cls.plan.follows = follows or frozenset()


def _by_topic(tps: Iterable[TopicPartition]) -> list[tuple[str, list[int]]]:
    topics: dict[str, list[int]] = {}
    for tp in sorted(tps):
        topics.setdefault(tp.topic, []).append(tp.partition)
    return sorted(topics.items())


def sticky_assignor(plan: FollowPlan | None = None) -> type[AbstractPartitionAssignor]:
    """A sticky assignor class of one consumer's own (aiokafka calls assignors through their
    class: a class attribute is the only place for what this member holds), with this member's
    ``--standby N`` plan, if it runs one."""
    return type("StickyAssignor", (_StickyAssignor,), {"held": (), "plan": plan})


def assignment_strategy(
    plan: FollowPlan | None = None,
) -> tuple[type[AbstractPartitionAssignor], ...]:
    """What a consumer offers the group: the sticky assignor alone (the module says why)."""
    return (sticky_assignor(plan),)
