"""``python -m bench.followers``: ``--standby N`` at 100 hosts and 1,000 partitions, by simulation.

No Kafka: the group's leader's own functions (``sqlstate/kafka/assignor.py``) assign a group of
``--hosts`` members on ``--partitions`` partitions, each member saying what it holds and follows
as a running member would, through a rolling restart (each member in turn leaves, then joins
again with an empty file, as a replaced host does). Prints, for each N:

- how many partitions each member follows (least / most), so each file's standby load, and the
  changelog records each reads, relative to ``--standby all`` (which follows every partition
  it does not own);
- per rebalance: partitions that changed owner, how many of those went to a member that
  followed them (its claim restores only the tail) and how many to one that did not (a whole
  restore); and follows that are new (a file that starts following reads the partition's
  changelog from where it stands, the whole of it for a file that never had it).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition

from sqlstate.kafka.assignor import JoinHint, balanced_sticky, followers

Assignment = dict[str, list[TopicPartition]]


@dataclass
class Rebalance:
    moved: int = 0
    to_follower: int = 0
    new_follows: int = 0

    def add(self, other: Rebalance) -> None:
        self.moved += other.moved
        self.to_follower += other.to_follower
        self.new_follows += other.new_follows


def assign(
    partitions: Sequence[TopicPartition], hints: Mapping[str, JoinHint]
) -> tuple[Assignment, Assignment]:
    """The leader's answer: owners, then followers."""
    owned = balanced_sticky(
        partitions, {m: h.held for m, h in hints.items()}, {m: h.follows for m, h in hints.items()}
    )
    owners = {tp: member for member, tps in owned.items() for tp in tps}
    return owned, followers(owners, hints)


def rebalance(
    partitions: Sequence[TopicPartition],
    members: Sequence[str],
    before: tuple[Assignment, Assignment],
    count: int,
    empty: str | None = None,
) -> tuple[tuple[Assignment, Assignment], Rebalance]:
    owned, follows = before
    hints = {
        m: JoinHint((), count)
        if m == empty
        else JoinHint(owned.get(m, ()), count, follows.get(m, ()))
        for m in members
    }
    after = assign(partitions, hints)
    owner_before = {tp: m for m, tps in owned.items() for tp in tps}
    figures = Rebalance()
    for member, tps in after[0].items():
        for tp in tps:
            if owner_before.get(tp) != member:
                figures.moved += 1
                figures.to_follower += tp in follows.get(member, ()) and member != empty
    for member, tps in after[1].items():
        kept = set() if member == empty else {*follows.get(member, ()), *owned.get(member, ())}
        figures.new_follows += len(set(tps) - kept)
    return after, figures


@dataclass
class Simulated:
    """One N's figures over a rolling restart."""

    loads: list[int]  # partitions each host follows at the start
    leaves: Rebalance  # summed over the rebalances where a host left
    joins: Rebalance  # and where it joined again, empty


def simulate(hosts: int, partition_count: int, count: int) -> Simulated:
    partitions = [TopicPartition("t", p) for p in range(partition_count)]
    members = [f"host-{i:03d}" for i in range(hosts)]
    state = assign(partitions, {m: JoinHint((), count) for m in members})
    figures = Simulated([len(state[1][m]) for m in members], Rebalance(), Rebalance())
    for leaving in members:
        rest = [m for m in members if m != leaving]
        state, left = rebalance(partitions, rest, state, count)
        state, back = rebalance(partitions, members, state, count, empty=leaving)
        figures.leaves.add(left)
        figures.joins.add(back)
    return figures


def report(hosts: int, partition_count: int, count: int, figures: Simulated) -> None:
    loads = figures.loads
    others = partition_count - partition_count / hosts  # what --standby all follows
    print(
        f"--standby {count}: each host follows {min(loads)}-{max(loads)} partitions"
        f" (--standby all: about {others:.0f}), {sum(loads) / (hosts * others):.3f} of all's reads"
    )
    rows = (("a host leaves", figures.leaves), ("it joins again, empty", figures.joins))
    for name, total in rows:
        print(
            f"  {name}: per rebalance {total.moved / hosts:.1f} partitions change owner,"
            f" {total.to_follower / hosts:.1f} of them to a member that followed them;"
            f" {total.new_follows / hosts:.1f} new follows"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.followers", description=__doc__)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--standby", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    print(f"{args.hosts} hosts, {args.partitions} partitions, a rolling restart (each host leaves,")
    print("then joins again with an empty file), by the leader's own functions, no Kafka")
    for count in args.standby:
        report(args.hosts, args.partitions, count, simulate(args.hosts, args.partitions, count))


if __name__ == "__main__":
    main()
