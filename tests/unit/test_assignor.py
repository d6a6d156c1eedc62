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
    FollowPlan,
    JoinHint,
    assignment_strategy,
    balanced_sticky,
    decode_follows,
    decode_held,
    decode_hint,
    encode_follows,
    encode_held,
    followers,
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


def check_followers(
    owners: dict[TopicPartition, str],
    hints: dict[str, JoinHint],
    given: dict[str, list[TopicPartition]],
    count: int,
) -> None:
    counting = [m for m, hint in hints.items() if hint.standby is not None]
    assert sorted(given) == sorted(counting)
    for tp, owner in owners.items():
        by = [m for m, tps in given.items() if tp in tps]
        assert owner not in by
        assert len(by) == len(set(by)) == min(count, len([m for m in counting if m != owner]))
    loads = [len(tps) for tps in given.values()]
    if loads:
        assert max(loads) - min(loads) <= 1, loads


def test_standby_count_has_each_partition_followed_by_that_many_members_never_its_owner() -> None:
    rng = random.Random(11)
    for _ in range(300):
        partitions = tps(*range(rng.randint(0, 30)))
        members = [f"m{i}" for i in range(rng.randint(1, 6))]
        count = rng.randint(1, 4)
        assigned = balanced_sticky(partitions, {m: [] for m in members})
        owners = {tp: m for m, held in assigned.items() for tp in held}
        hints = {
            m: JoinHint(assigned[m], count, rng.sample(partitions, rng.randint(0, len(partitions))))
            for m in members
        }
        check_followers(owners, hints, followers(owners, hints), count)


def test_followers_keep_what_they_follow_when_a_member_leaves() -> None:
    partitions = tps(*range(12))
    members = ["a", "b", "c", "d"]
    assigned = balanced_sticky(partitions, {m: [] for m in members})
    owners = {tp: m for m, held in assigned.items() for tp in held}
    hints = {m: JoinHint(assigned[m], 1) for m in members}
    before = followers(owners, hints)
    # d leaves: its partitions go to the others; what a, b, c followed they keep following,
    # except a partition that is now their own.
    after_assigned = balanced_sticky(partitions, {m: assigned[m] for m in "abc"})
    after_owners = {tp: m for m, held in after_assigned.items() for tp in held}
    after_hints = {m: JoinHint(after_assigned[m], 1, before[m]) for m in "abc"}
    after = followers(after_owners, after_hints)
    check_followers(after_owners, after_hints, after, 1)
    for m in "abc":
        kept = [tp for tp in before[m] if after_owners[tp] != m]
        assert set(kept) <= set(after[m]) or len(after[m]) >= 3


def test_only_members_running_a_count_follow_and_the_largest_count_wins() -> None:
    partitions = tps(*range(6))
    owners = dict(zip(partitions, ["a", "a", "b", "b", "c", "c"], strict=True))
    hints = {"a": JoinHint((), 1), "b": JoinHint((), 2), "c": JoinHint()}  # c: all or none
    given = followers(owners, hints)
    assert sorted(given) == ["a", "b"]
    for tp in partitions:
        by = [m for m, followed in given.items() if tp in followed]
        assert by == [m for m in "ab" if m != owners[tp]]  # 2 wanted, only these can follow
    assert followers(owners, {"c": JoinHint()}) == {}


def test_a_join_hint_round_trips_and_an_earlier_member_reads_only_what_is_held() -> None:
    plan = FollowPlan(2, following=frozenset(tps(5, 1)))
    hint = decode_hint(encode_held(tps(0, 3), plan))
    assert (sorted(hint.held), hint.standby, sorted(hint.follows)) == (tps(0, 3), 2, tps(1, 5))
    assert decode_hint(encode_held(tps(0, 3))) == JoinHint(tps(0, 3))
    for garbage in (b'{"standby": 0}', b'{"standby": "2"}', b'{"held": 1}', b"[" * 100_000):
        assert decode_hint(garbage).standby is None
    assert decode_follows(encode_follows(tps(2, 4))) == frozenset(tps(2, 4))
    for nothing in (b"", b"{}", b"[]", b"\xff", b"null", b'{"follows": ' + b"[" * 100_000):
        assert decode_follows(nothing) is None


def test_a_member_with_a_count_is_told_what_to_follow_and_without_one_follows_everything() -> None:
    plans = [FollowPlan(1), FollowPlan(1), FollowPlan(1)]
    classes = [sticky_assignor(plan) for plan in plans]
    members = {name: c.metadata(["t"]) for name, c in zip("abc", classes, strict=True)}
    assignments = classes[0].assign(Cluster({"t": 6}), members)
    for c, name in zip(classes, "abc", strict=True):
        c.on_assignment(assignments[name])
    for plan, name in zip(plans, "abc", strict=True):
        assert plan.follows is not None
        assert not plan.everything
        assert not plan.follows & set(assignments[name].partitions())
    assert sorted(tp for plan in plans for tp in plan.follows or ()) == tps(*range(6))
    # An earlier sqlstate led: its assignment carries nothing, so the member follows all.
    classes[0].on_assignment(ConsumerProtocolMemberAssignment(0, [("t", [0])], b""))
    assert plans[0].everything


def test_a_partition_nobody_keeps_goes_to_a_member_that_follows_it() -> None:
    partitions = tps(*range(6))
    held = {"a": tps(0, 1), "b": tps(2, 3)}  # c left, holding 4 and 5
    assigned = balanced_sticky(partitions, held, {"a": tps(2, 5), "b": tps(0, 4)})
    check_balanced(partitions, assigned)
    assert assigned == {"a": tps(0, 1, 5), "b": tps(2, 3, 4)}
    # Within its share only: a follows both, and b takes the one a has no room for.
    assigned = balanced_sticky(partitions, held, {"a": tps(4, 5)})
    assert assigned == {"a": tps(0, 1, 4), "b": tps(2, 3, 5)}


def test_members_with_different_subscriptions_are_told_what_to_follow_too() -> None:
    plans = [FollowPlan(1), FollowPlan(1)]
    classes = [sticky_assignor(plan) for plan in plans]
    members = {
        "a": classes[0].metadata(["t"]),
        "b": classes[1].metadata(["t", "u"]),  # a pattern that matched u here first
    }
    assignments = classes[0].assign(Cluster({"t": 2, "u": 2}), members)
    for c, name in zip(classes, "ab", strict=True):
        c.on_assignment(assignments[name])
    assert not any(plan.everything for plan in plans)
    owned = {name: frozenset(assignments[name].partitions()) for name in "ab"}
    assert plans[0].follows == owned["b"]  # each follows what the other owns
    assert plans[1].follows == owned["a"]
