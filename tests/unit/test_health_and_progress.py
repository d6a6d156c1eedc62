"""The watchdog's and the progress log's decisions, on a clock the test moves (no broker)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiokafka import TopicPartition

from sqlstate.observe.health import PartitionLag, Watchdog
from sqlstate.observe.logs import JsonFormatter
from sqlstate.observe.progress import ProgressLog, duration

A = TopicPartition("orders", 0)
B = TopicPartition("orders", 1)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The event's fields, as the JSON log line carries them."""
    entry: dict[str, Any] = json.loads(JsonFormatter().format(record))
    for key in ("time", "level", "logger", "message"):
        del entry[key]
    return entry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_not_healthy_before_joining_and_warns_only_after_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watchdog = Watchdog(10, clock)
    assert not watchdog.health.healthy
    clock.now += 5
    health = watchdog.check(False, {})
    assert (health.healthy, health.reason) == (False, "joining the group")
    assert not caplog.records
    clock.now += 5
    with caplog.at_level(logging.WARNING):
        health = watchdog.check(False, {})
    assert not health.healthy
    assert "not in the consumer group for 10s" in health.reason
    assert [r.getMessage() for r in caplog.records] == [f"unhealthy: {health.reason}"]


def test_caught_up_member_is_healthy_and_a_short_rebalance_does_not_flap() -> None:
    clock = Clock()
    watchdog = Watchdog(10, clock)
    lags = {A: PartitionLag(5, 5), B: PartitionLag(0, 0)}
    assert watchdog.check(True, lags).reason == "caught up"
    clock.now += 1
    health = watchdog.check(False, {})  # left the group: the grace starts now
    assert (health.healthy, health.reason) == (True, "rejoining the consumer group")
    clock.now += 9
    assert watchdog.check(False, {}).healthy
    clock.now += 1
    assert not watchdog.check(False, {}).healthy
    assert watchdog.check(True, lags).healthy


def test_stall_while_behind_turns_unhealthy_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watchdog = Watchdog(10, clock)
    caplog.set_level(logging.INFO)
    assert watchdog.check(True, {A: PartitionLag(0, 100), B: PartitionLag(7, 7)}).healthy
    clock.now += 6
    health = watchdog.check(True, {A: PartitionLag(40, 100), B: PartitionLag(7, 7)})
    assert (health.healthy, health.reason, health.lag) == (True, "catching up", 60)
    clock.now += 9  # 9s since A last moved
    assert watchdog.check(True, {A: PartitionLag(40, 100), B: PartitionLag(7, 7)}).healthy
    clock.now += 1
    health = watchdog.check(True, {A: PartitionLag(40, 100), B: PartitionLag(7, 7)})
    assert not health.healthy
    assert "positions of orders-0 have not moved" in health.reason
    clock.now += 30  # still stalled: no second warning
    watchdog.check(True, {A: PartitionLag(40, 100), B: PartitionLag(7, 7)})
    health = watchdog.check(True, {A: PartitionLag(100, 100), B: PartitionLag(7, 7)})
    assert health.healthy
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("unhealthy: positions of orders-0")
    assert messages[1] == "healthy again: caught up"
    unhealthy, healthy_again = (fields(record) for record in caplog.records)
    assert unhealthy == {
        "event": "unhealthy",
        "reason": unhealthy["reason"],
        "causes": ["stalled"],
        "stalled": [{"topic": "orders", "partition": 0, "next_offset": 40}],
        "in_group": True,
        "partitions": 2,
        "lag": 60,
    }
    assert unhealthy["reason"] == messages[0].removeprefix("unhealthy: ")
    assert healthy_again == {
        "event": "healthy_again",
        "reason": "caught up",
        "in_group": True,
        "partitions": 2,
        "lag": 0,
    }


def test_unknown_log_end_counts_as_behind() -> None:
    clock = Clock()
    watchdog = Watchdog(10, clock)
    assert watchdog.check(True, {A: PartitionLag(3, None)}).reason == "catching up"
    clock.now += 10
    assert not watchdog.check(True, {A: PartitionLag(3, None)}).healthy


def test_idle_and_caught_up_stays_healthy() -> None:
    clock = Clock()
    watchdog = Watchdog(10, clock)
    for _ in range(5):
        assert watchdog.check(True, {A: PartitionLag(9, 9)}).healthy
        clock.now += 60


def test_quarantined_changelog_records_degrade_but_do_not_fail_health() -> None:
    watchdog = Watchdog(10, Clock())
    assert "degraded" not in watchdog.check(True, {A: PartitionLag(9, 9)}).as_json()
    health = watchdog.check(True, {A: PartitionLag(9, 9)}, "2 changelog records set aside")
    assert health.healthy
    assert health.as_json()["degraded"] == "2 changelog records set aside"
    assert health.reason == "caught up; degraded: 2 changelog records set aside"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0s"), (45, "45s"), (185, "3m05s"), (7620, "2h07m")]
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_progress_lines_while_catching_up_then_one_when_caught_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sqlstate.progress")
    clock = Clock()
    progress = ProgressLog(5, clock)
    progress.tick(0, {})  # nothing claimed yet: silent
    clock.now += 1
    progress.tick(0, {A: PartitionLag(0, 10_000), B: PartitionLag(0, 10_000)})
    for records in (2_000, 4_000, 6_000, 8_000, 10_000):
        clock.now += 1
        progress.tick(records, {A: PartitionLag(records, 10_000), B: PartitionLag(0, 10_000)})
    clock.now += 1
    progress.tick(20_000, {A: PartitionLag(10_000, 10_000), B: PartitionLag(10_000, 10_000)})
    clock.now += 1
    progress.tick(20_000, {A: PartitionLag(10_000, 10_000), B: PartitionLag(10_000, 10_000)})
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "catching up: 2000 records/s, lag 10000 records over 2 partitions, about 5s to go",
        "caught up: 2 partitions at their log end; 20000 records in 7s",
    ]
    assert [fields(record) for record in caplog.records] == [
        {
            "event": "catching_up",
            "records_per_s": 2000.0,
            "lag": 10_000,
            "partitions": 2,
            "unfetched_partitions": 0,
            "remaining_s": 5.0,
        },
        {"event": "caught_up", "partitions": 2, "records": 20_000, "catch_up_s": 7.0},
    ]


def test_progress_when_the_lag_does_not_fall(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sqlstate.progress")
    clock = Clock()
    progress = ProgressLog(2, clock)
    progress.tick(0, {A: PartitionLag(0, 0)})
    for _ in range(3):
        clock.now += 1
        progress.tick(0, {A: PartitionLag(0, 50), B: PartitionLag(0, None)})
    assert [r.getMessage() for r in caplog.records] == [
        "caught up: 1 partitions at their log end",
        "catching up: 0 records/s, lag 50 records over 2 partitions (1 not fetched yet),"
        " lag not falling",
    ]
    not_falling = fields(caplog.records[1])
    assert (not_falling["unfetched_partitions"], not_falling["remaining_s"]) == (1, None)
