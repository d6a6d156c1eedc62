"""The rebalance bench's arithmetic (bench/stalls.py): stalls from the changelog's position
records, who moved, the group's pause, and the check of both against the daemons' logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bench import rebalance, stalls

# Relative to now, in whole seconds, as log lines carry milliseconds: only differences matter.
_START = datetime.fromtimestamp(int(datetime.now(UTC).timestamp()), UTC)
_ORIGIN = _START.timestamp()


def _line(event: str, at: float, **fields: Any) -> dict[str, Any]:
    when = _START + timedelta(milliseconds=round(at * 1000))
    return {"event": event, "time": when.isoformat(timespec="milliseconds"), **fields}


def _partitions(*numbers: int) -> list[dict[str, Any]]:
    return [{"topic": "t", "partition": n} for n in numbers]


def _ticks(start: float, end: float) -> list[float]:
    return [_ORIGIN + start + n * 0.1 for n in range(round((end - start) / 0.1) + 1)]


def _members() -> list[stalls.Member]:
    """Host 0 holds both partitions, then host 1 (a new process) joins and takes partition 1."""
    keeper = stalls.Member(
        0,
        _ORIGIN,
        None,
        [
            _line("partitions_assigned", 0.0, partitions=2, assigned=_partitions(0, 1), reason="r"),
            _line("partitions_claimed", 0.1, assigned=_partitions(0, 1)),
            _line("partitions_revoked", 10.0, partitions=2, revoked=_partitions(0, 1)),
            _line("partitions_assigned", 10.05, partitions=1, assigned=_partitions(0), reason="r"),
            _line("changelog_producer_started", 10.2, partition=0),
            _line("partitions_claimed", 10.5, assigned=_partitions(0)),
        ],
    )
    joiner = stalls.Member(
        1,
        _ORIGIN + 9.0,
        None,
        [
            # Its first join revokes nothing: no partition waits on that.
            _line("partitions_revoked", 9.5, partitions=0, revoked=[]),
            _line("partitions_assigned", 10.05, partitions=1, assigned=_partitions(1), reason="r"),
            _line("changelog_producer_started", 10.3, partition=1),
            _line("changelog_restored", 10.6, partition=1, records=40),
            _line("partitions_claimed", 10.8, assigned=_partitions(1)),
        ],
    )
    return [keeper, joiner]


_WINDOW = stalls.Window("join", 1, _ORIGIN + 9.0, _ORIGIN + 11.5)


def test_only_positions_that_move_forward_are_advances() -> None:
    assert stalls.advances([(1.0, 5), (2.0, 5), (3.0, 9), (4.0, 7), (5.0, 10)]) == [1.0, 3.0, 5.0]


def test_a_stall_is_the_longest_gap_overlapping_the_window() -> None:
    times = [0.0, 1.0, 4.0, 4.5, 9.0]
    assert stalls.stall(times, 3.0, 4.2) == 3.0  # 1-4 and 4-4.5 overlap it
    assert stalls.stall(times, 5.0, 6.0) == 4.5  # inside the gap 4.5-9
    assert stalls.stall(times, 10.0, 11.0) is None


def test_a_window_tells_kept_partitions_from_moved_ones() -> None:
    advanced = {0: [*_ticks(0, 9.9), *_ticks(10.6, 12)], 1: [*_ticks(0, 9.9), *_ticks(10.9, 12)]}
    figures = stalls.window_figures(_WINDOW, _members(), advanced)
    assert figures["stall_s"] == {"moved": {"1": 1.0}, "stayed": {"0": 0.7}}
    assert figures["stayed"]["max_s"] == 0.7
    assert figures["group_pause_s"] == 0.05
    assert figures["claim_s"] == 0.75
    assert figures["notice_s"] == 1.0
    assert (figures["producer_starts"], figures["restores"], figures["restored_records"]) == (
        2,
        1,
        40,
    )
    assert (figures["log_checked"], figures["log_consistent"]) == (2, 2)
    every = stalls.overall([figures])
    assert every["moved"]["partitions"] == every["stayed"]["partitions"] == 1


def test_an_advance_the_logs_say_cannot_be_is_not_consistent() -> None:
    # Partition 0 advanced between its revoke (10.0) and its claim (10.5).
    advanced = {0: [*_ticks(0, 9.9), _ORIGIN + 10.2, *_ticks(10.6, 12)], 1: _ticks(0, 12)}
    figures = stalls.window_figures(_WINDOW, _members(), advanced)
    assert (figures["log_checked"], figures["log_consistent"]) == (2, 0)


def test_the_report_has_a_row_per_rebalance_and_one_for_all() -> None:
    advanced = {0: [*_ticks(0, 9.9), *_ticks(10.6, 12)], 1: [*_ticks(0, 9.9), *_ticks(10.9, 12)]}
    figures = stalls.window_figures(_WINDOW, _members(), advanced)
    results = {
        "rebalance": [
            {
                "hosts": 2,
                "partitions": 2,
                "rate_per_s": 10,
                "records": 100,
                "exact": True,
                "rebalances": [figures],
                "all": stalls.overall([figures]),
                "steady": stalls.steady_gaps(advanced, [(_ORIGIN, _ORIGIN + 9.0)]),
            }
        ]
    }
    text = "\n".join(rebalance.describe(results))
    assert "host 1 rejoins" in text
    assert "\nall " in text
    assert "counts exact" in text
    assert "advanced every p50 0.1 s" in text
