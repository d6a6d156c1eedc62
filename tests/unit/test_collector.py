"""The garbage collector's settings while the batch loop runs: raised for the loop, restored
after it, even when it fails."""

from __future__ import annotations

import gc

import pytest

from sqlstate.app import collector


def test_the_young_threshold_stays_above_the_batches_in_flight() -> None:
    assert collector.young_threshold(1) == collector.MIN_THRESHOLD
    assert collector.young_threshold(30_000) >= 2 * 30_000
    assert collector.young_threshold(100_000) > collector.young_threshold(30_000)
    assert collector.young_threshold(10_000_000) == collector.MAX_THRESHOLD


def test_tuned_raises_the_young_threshold_and_restores_every_setting() -> None:
    before = gc.get_threshold()
    with collector.tuned(30_000):
        young, *older = gc.get_threshold()
        assert young == collector.young_threshold(30_000) > before[0]
        assert tuple(older) == before[1:]
        assert gc.isenabled()
    assert gc.get_threshold() == before


def test_tuned_restores_the_settings_when_the_loop_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), collector.tuned(30_000):
        raise RuntimeError("the loop failed")
    assert gc.get_threshold() == before
