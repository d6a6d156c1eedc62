"""``Ownership``, the one writer of the claims, on a stand-in consumer (no broker)."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from sqlstate.app.ownership import PLACEHOLDER_OFFSET, Ownership
from sqlstate.state.model import Claim

A, B, C = TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("t", 2)


class Consumer:
    """What ``Ownership`` asks of aiokafka's consumer: positions and pauses, per partition."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset

    def pause(self, tp: TopicPartition) -> None:
        assert tp in self.positions, "paused without a position: the fetcher stalls its broker"
        self.paused.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        self.paused.discard(tp)

    def assignment(self) -> set[TopicPartition]:
        return self.assigned


def owned(*assigned: TopicPartition) -> tuple[Consumer, Ownership]:
    consumer = Consumer(set(assigned))
    return consumer, Ownership(consumer)


def test_a_claim_is_recorded_sought_and_resumed_at_once() -> None:
    consumer, ownership = owned(A, B)
    ownership.hold([A, B])
    ownership.claim({A: Claim(10, 2)}, {"t": "id-1"})
    assert ownership.claims == {A: Claim(10, 2)}
    assert consumer.positions[A] == 10
    assert consumer.paused == {B}, "the claimed partition resumed, the other still held"
    assert ownership.held == {B}
    assert ownership.topic_ids == {"t": "id-1"}


def test_nothing_outside_changes_the_claims() -> None:
    _, ownership = owned(A)
    ownership.claim({A: Claim(10, 1)}, {})
    with pytest.raises(TypeError):
        ownership.claims[A] = Claim(20, 1)  # type: ignore[index]
    with pytest.raises(AttributeError):
        ownership.held.add(A)  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        ownership.generation = 5  # type: ignore[misc]


def test_a_commit_advances_without_a_seek_and_a_moved_position_is_followed() -> None:
    consumer, ownership = owned(A, B)
    ownership.claim({A: Claim(10, 1), B: Claim(10, 1)}, {})
    consumer.seeks.clear()
    generation = ownership.generation
    ownership.advance({A: Claim(30, 1)})
    assert consumer.seeks == [], "the consumer is already past a committed batch"
    ownership.move(B, Claim(25, 1))
    assert consumer.seeks == [(B, 25)]
    assert ownership.claims == {A: Claim(30, 1), B: Claim(25, 1)}
    assert not ownership.is_stale(generation), "the same claims, only further on"


def test_a_fenced_partition_is_dropped_and_paused_but_not_held_for_a_claim() -> None:
    consumer, ownership = owned(A, B)
    ownership.claim({A: Claim(10, 1), B: Claim(10, 1)}, {})
    generation = ownership.generation
    ownership.drop_and_hold(A, 40)
    assert ownership.claims == {B: Claim(10, 1)}
    assert consumer.positions[A] == 40
    assert consumer.paused == {A}
    assert ownership.held == set(), "only the group gives it back, not claim_held"
    assert not ownership.is_stale(generation)


def test_rewind_seeks_only_partitions_claimed_and_assigned() -> None:
    consumer, ownership = owned(A, B)
    ownership.claim({A: Claim(10, 1), B: Claim(20, 1), C: Claim(30, 1)}, {})
    consumer.seeks.clear()
    sought = ownership.rewind([A, C, TopicPartition("t", 9)])
    assert sought == {A: Claim(10, 1)}
    assert consumer.seeks == [(A, 10)], "C is no longer assigned: its rebalance seeks it"


def test_held_partitions_wait_paused_at_a_position_and_the_generation_moves() -> None:
    consumer, ownership = owned(A, B)
    ownership.claim({A: Claim(10, 1), B: Claim(20, 1)}, {"t": "id-1"})
    generation = ownership.generation
    ownership.hold([A, C])
    assert ownership.is_stale(generation)
    assert ownership.claims == {B: Claim(20, 1)}
    assert ownership.held == {A}, "C is not assigned: nothing to claim"
    assert consumer.paused == {A}
    assert consumer.positions[A] == PLACEHOLDER_OFFSET


def test_release_forgets_claims_and_held_partitions() -> None:
    _, ownership = owned(A, B)
    ownership.claim({A: Claim(10, 1)}, {"t": "id-1"})
    ownership.hold([B])
    generation = ownership.generation
    ownership.release([A])
    assert ownership.is_stale(generation)
    assert ownership.claims == {}
    assert ownership.held == {B}
    assert ownership.topic_ids == {"t": "id-1"}
    ownership.release_all()
    assert ownership.held == set()
    assert ownership.topic_ids == {}


def test_recreated_topics_are_those_claimed_under_another_id() -> None:
    _, ownership = owned(A)
    ownership.claim({A: Claim(10, 1)}, {"t": "id-1", "u": None})
    assert ownership.recreated({"t": "id-1"}) == {}
    assert ownership.recreated({"t": "id-2"}) == {"t": "id-2"}
    assert ownership.recreated({"t": None}) == {}, "Kafka gave no ID: nothing to compare"
    assert ownership.recreated({"u": "id-3"}) == {}, "claimed without an ID"
    assert ownership.recreated({"v": "id-4"}) == {}, "not claimed"


def test_an_assignment_is_noted_once_received_and_kept_through_releases() -> None:
    """The batch loop asks whether an assignment came yet (the consumer knows its topics'
    metadata only from then on); a revoke does not take that back."""
    _, ownership = owned(A)
    assert not ownership.assigned
    ownership.assignment_received()
    ownership.release_all()
    assert ownership.assigned
