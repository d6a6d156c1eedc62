"""The sticky assignor: every partition to exactly one member, round robin's shares, and a
rebalance that moves only what it must."""

from __future__ import annotations

import random

from aiokafka import TopicPartition
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from sqlstate.kafka.assignor import (
    NAME,
    assignment_strategy,
    balanced_sticky,
    decode_held,
    encode_held,
    sticky_assignor,
)


def tps(*numbers: int, topic: str = "t") -> list[TopicPartition]:
    return [TopicPartition(topic, n) for n in numbers]


def check_balanced(
    partitions: list[TopicPartition], assigned: dict[str, list[TopicPartition]]
) -> None:
    given = [tp for member in assigned.values() for tp in member]
    assert sorted(given) == sorted(partitions)  # each exactly once
    sizes = [len(member) for member in assigned.values()]
    assert max(sizes) - min(sizes) <= 1


def moved(before: dict[str, list[TopicPartition]], after: dict[str, list[TopicPartition]]) -> int:
    owner = {tp: member for member, held in before.items() for tp in held}
    return sum(owner.get(tp) != member for member, held in after.items() for tp in held)


def test_any_claims_give_every_partition_to_exactly_one_member_in_equal_shares() -> None:
    rng = random.Random(7)
    for _ in range(500):
        partitions = tps(*range(rng.randint(0, 40)))
        members = [f"m{i}" for i in range(rng.randint(1, 7))]
        # Claims overlap, name partitions that do not exist, or nothing at all.
        held = {member: rng.sample(tps(*range(50)), rng.randint(0, 20)) for member in members}
        check_balanced(partitions, balanced_sticky(partitions, held))


def test_a_member_leaving_moves_only_its_partitions() -> None:
    partitions = tps(*range(24))
    before = balanced_sticky(partitions, {"a": [], "b": [], "c": []})
    after = balanced_sticky(partitions, {"a": before["a"], "b": before["b"]})
    check_balanced(partitions, after)
    assert set(before["a"]) <= set(after["a"])
    assert set(before["b"]) <= set(after["b"])
    assert moved(before, after) == 8


def test_a_member_joining_takes_only_its_share() -> None:
    partitions = tps(*range(24))
    before = balanced_sticky(partitions, {"a": [], "b": []})
    after = balanced_sticky(partitions, {"a": before["a"], "b": before["b"], "c": []})
    check_balanced(partitions, after)
    assert moved(before, after) == 8 == len(after["c"])


def test_a_rolling_restart_moves_a_third_at_each_step() -> None:
    partitions = tps(*range(24))
    held = balanced_sticky(partitions, {"a": [], "b": [], "c": []})
    for leaving in ("a", "b", "c"):
        without = balanced_sticky(partitions, {m: held[m] for m in held if m != leaving})
        assert moved(held, without) == 8
        back = balanced_sticky(partitions, {**without, leaving: []})  # restarted: holds nothing
        assert moved(without, back) == 8
        held = back


def test_two_members_claiming_one_partition_never_both_get_it() -> None:
    partitions = tps(0, 1, 2, 3)
    assigned = balanced_sticky(partitions, {"a": tps(0, 1, 2), "b": tps(0, 1, 2)})
    check_balanced(partitions, assigned)


def test_what_a_member_holds_round_trips_and_garbage_is_nothing() -> None:
    held = [*tps(3, 1), TopicPartition("other", 0)]
    assert sorted(decode_held(encode_held(held))) == sorted(held)
    deep = b"[" * 100_000  # json would recurse past Python's limit
    for garbage in (b"", b"\xff", b"{}", b"[1, 2]", b'[["t", "1"]]', b"null", b'[["t"]]', deep):
        assert decode_held(garbage) == []


class Cluster:
    """What the assignor asks of aiokafka's cluster metadata: each topic's partitions."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self._partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        count = self._partitions.get(topic)
        return None if count is None else set(range(count))


def test_each_consumer_says_what_it_holds_and_the_leader_keeps_it() -> None:
    first, second = sticky_assignor(), sticky_assignor()
    assert first.name == NAME
    first.on_assignment(ConsumerProtocolMemberAssignment(0, [("t", [0, 2, 4])], b""))
    assert decode_held(first.metadata(["t"]).user_data) == tps(0, 2, 4)
    assert decode_held(second.metadata(["t"]).user_data) == []  # a class of its own
    members = {"a": first.metadata(["t"]), "b": second.metadata(["t"])}
    assignments = first.assign(Cluster({"t": 6}), members)
    assert assignments["a"].partitions() == tps(0, 2, 4)
    assert sorted(assignments["b"].partitions()) == tps(1, 3, 5)


def test_members_with_different_subscriptions_are_dealt_round_robin() -> None:
    assignor = sticky_assignor()
    members = {
        "a": ConsumerProtocolMemberMetadata(0, ["t"], b""),
        "b": ConsumerProtocolMemberMetadata(0, ["t", "u"], b""),
    }
    assignments = assignor.assign(Cluster({"t": 2, "u": 2}), members)
    given = sorted(tp for a in assignments.values() for tp in a.partitions())
    assert given == sorted([*tps(0, 1), *tps(0, 1, topic="u")])
    assert all(tp.topic == "t" for tp in assignments["a"].partitions())


def test_one_assignor_under_the_name_earlier_members_offer() -> None:
    # One only: aiokafka sends a JoinGroup per assignor offered, which rebalances twice.
    assert [assignor.name for assignor in assignment_strategy()] == [NAME] == ["roundrobin"]
