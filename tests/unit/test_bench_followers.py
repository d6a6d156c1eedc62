"""The --standby N simulation (bench/followers.py) on a small group: its figures add up."""

from __future__ import annotations

from bench import followers


def test_a_rolling_restart_moves_each_hosts_share_and_keeps_loads_even() -> None:
    figures = followers.simulate(hosts=6, partition_count=60, count=1)
    assert figures.loads == [10] * 6  # 60 follows, evenly
    # Each leave moves the leaver's 10 partitions; each empty join takes 10 back, none of them
    # from a follower (the joiner follows nothing yet).
    assert figures.leaves.moved == figures.joins.moved == 6 * 10
    assert 0 < figures.leaves.to_follower <= figures.leaves.moved
    assert figures.joins.to_follower == 0
    # At least the leaver's follows need new followers, and the joiner's are all new.
    assert figures.leaves.new_follows >= 6 * 10
    assert figures.joins.new_follows >= 6 * 10
