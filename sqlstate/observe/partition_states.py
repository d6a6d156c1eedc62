"""Under ``--changelog``: is each partition owned, followed, or neither, and why.

Nothing may stop silently: a partition this file should keep up to date is either owned (claimed
here: its batches are consumed and published), followed (the standby applies its owner's
changelog), being restored for a claim, or *neither*, with the reason. The monitor classifies
every partition once a tick from what the claims, the changelog owner and the standby already
keep; the metrics, the progress log and ``/healthz`` report it.

Which partitions count: those assigned to this process, and with ``--standby all`` every
partition the standby knows of (its file keeps all of them), with ``--standby N`` those the
group gave it to follow. Otherwise a partition assigned elsewhere is not this file's to keep.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from aiokafka import TopicPartition

OWNED = "owned"
FOLLOWED = "followed"
RESTORING = "restoring"
NEITHER = "neither"
STATES = (OWNED, FOLLOWED, RESTORING, NEITHER)


@dataclass(frozen=True)
class PartitionState:
    """One partition's state, and for ``neither`` why. ``passing``: a ``neither`` that every
    rebalance goes through for a moment (revoked and not released yet, released and not
    followed yet, assigned and not held yet); only one that lasts is an alarm. A failed claim
    is not passing."""

    state: str
    reason: str = ""
    passing: bool = False


@dataclass(frozen=True)
class Facts:
    """What the process keeps of its partitions at one instant."""

    assigned: Set[TopicPartition]  # by the group, to this consumer
    claimed: Set[TopicPartition]  # claimed in the file: consumed and published here
    held: Set[TopicPartition]  # assigned, not claimed yet (restoring, or retrying)
    claiming: Set[TopicPartition]  # not followed because claimed, or being claimed, here
    failures: Mapping[TopicPartition, str]  # why a partition's last claim failed
    # With --standby all: the partitions whose changelogs the standby follows, paused or not,
    # and the paused ones; None and empty without a standby.
    followed: Set[TopicPartition] | None
    paused: Set[TopicPartition] = frozenset()
    # With --standby N: the partitions the group gave this process to follow.
    to_follow: Set[TopicPartition] = frozenset()


def classify(facts: Facts) -> dict[TopicPartition, PartitionState]:
    """Each partition that should be kept up to date here, and its state."""
    wanted = set(facts.assigned) | set(facts.claimed) | set(facts.held) | set(facts.claiming)
    if facts.followed is not None:
        wanted |= facts.followed
    wanted |= facts.to_follow
    return {tp: _state(tp, facts) for tp in sorted(wanted)}


def _state(tp: TopicPartition, facts: Facts) -> PartitionState:
    if tp in facts.claimed:
        return PartitionState(OWNED)
    failure = facts.failures.get(tp)
    if failure is not None:
        return PartitionState(NEITHER, f"its claim failed: {failure}")
    if tp in facts.held:
        return PartitionState(RESTORING)
    if tp in facts.claiming:
        if tp in facts.assigned:
            return PartitionState(RESTORING)
        return PartitionState(
            NEITHER, "paused for a claim, and no longer assigned here", passing=True
        )
    if tp in facts.assigned:
        # Assigned, neither claimed nor held: released by a fenced batch, until the rebalance.
        return PartitionState(NEITHER, "assigned here, and not claimed", passing=True)
    if tp in facts.paused:
        return PartitionState(
            NEITHER, "its changelog is paused, and nobody here claims it", passing=True
        )
    if facts.followed is not None and tp in facts.followed:
        return PartitionState(FOLLOWED)
    if tp in facts.to_follow:
        return PartitionState(
            NEITHER,
            "the group gave it to this host to follow, and it is not followed yet",
            passing=True,
        )
    return PartitionState(NEITHER, "not followed")


def neither(states: Mapping[TopicPartition, PartitionState]) -> dict[TopicPartition, str]:
    """The partitions neither owned, followed nor being restored, with why."""
    return {tp: s.reason for tp, s in states.items() if s.state == NEITHER}


def passing(states: Mapping[TopicPartition, PartitionState]) -> frozenset[TopicPartition]:
    """The partitions whose ``neither`` a rebalance passes through (``PartitionState``)."""
    return frozenset(tp for tp, s in states.items() if s.state == NEITHER and s.passing)
