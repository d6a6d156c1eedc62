"""The bench's standby lag: seconds behind count from the state a file shows (its input
position), not from its changelog offset, which may stop short of a commit marker."""

from __future__ import annotations

from bench.changelog import _Samples, lag_figures


def test_a_follower_short_of_a_commit_marker_only_is_not_behind() -> None:
    # Partition 0, owned by file 0, followed by file 1. The owner's last batch: input position
    # 200, its changelog at 51 (past the commit marker at 50). The follower has the position
    # at once but its changelog offset stays at the marker (50) for two seconds.
    samples = _Samples(
        files=[{0: [(0.0, 20), (1.0, 51)]}, {0: [(0.1, 20), (1.1, 50), (3.1, 51)]}],
        ends={0: [(0.0, 20), (1.0, 51)]},
        states=[{0: [(0.0, 100), (1.0, 200)]}, {0: [(0.1, 100), (1.2, 200), (3.1, 200)]}],
    )
    figures = lag_figures(samples, {0: 0}, since=0.0, until=1.0)
    assert figures["steps"] == 2
    assert figures["seconds_behind_max"] == 0.2
    assert figures["offsets_behind_max"] == 31  # at 1.0: the end 51, the follower at 20


def test_a_follower_that_shows_the_state_late_is_behind() -> None:
    samples = _Samples(
        files=[{0: [(0.0, 51)]}, {0: [(0.0, 51)]}],
        ends={0: [(0.0, 51)]},
        states=[{0: [(0.0, 100), (1.0, 200)]}, {0: [(0.0, 100), (1.5, 150), (2.5, 200)]}],
    )
    figures = lag_figures(samples, {0: 0}, since=0.0, until=1.0)
    assert figures["seconds_behind_max"] == 1.5


def test_what_the_files_held_before_the_first_batch_is_no_step() -> None:
    """Before the run the bench holds each file at the input's end (its positions there), then
    moves them back to the start: that end is not a state the owner's batches reached."""
    samples = _Samples(
        files=[{0: [(0.0, 51)]}, {0: [(0.0, 51)]}],
        ends={0: [(0.0, 51)]},
        states=[{0: [(-0.5, 900), (0.0, 100)]}, {0: [(-0.5, 900), (0.0, 0), (0.1, 100)]}],
    )
    figures = lag_figures(samples, {0: 0}, since=0.0, until=1.0)
    assert (figures["steps"], figures["seconds_behind_max"]) == (1, 0.1)
