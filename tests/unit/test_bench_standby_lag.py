"""The bench's standby lag: seconds behind count from the state a file shows (its input
position), not from its changelog offset, which may stop short of a commit marker; and the
wait for a sample that shows the files caught up."""

from __future__ import annotations

import pytest

from bench.changelog import _Samples, lag_figures, wait_for_round_after


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


def test_the_wait_ends_at_a_round_that_began_after_the_catch_up() -> None:
    samples = _Samples(files=[{}, {}])
    samples.whole_round_began = 10.0
    rounds = iter([10.0, 10.0, 12.0])  # the sampler's next rounds, as the wait polls

    def alive() -> bool:
        samples.whole_round_began = next(rounds)
        return True

    wait_for_round_after(samples, 11.0, alive, timeout_s=5.0)
    assert samples.whole_round_began == 12.0


def test_a_sampler_that_stopped_is_reported_with_its_cause() -> None:
    samples = _Samples(files=[{}, {}])
    samples.error = ConnectionError("no broker")
    with pytest.raises(RuntimeError, match="sampler stopped") as raised:
        wait_for_round_after(samples, 1.0, lambda: False, timeout_s=5.0)
    assert raised.value.__cause__ is samples.error


def test_a_sampler_that_reads_no_file_caught_up_times_out() -> None:
    samples = _Samples(files=[{}, {}])
    with pytest.raises(TimeoutError, match=r"within 0\.05 s"):
        wait_for_round_after(samples, 1.0, lambda: True, timeout_s=0.05)
