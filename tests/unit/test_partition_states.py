"""Owned, followed, or reported as neither: the classification and how the watchdog, the progress
log and the metrics report it (no broker)."""

from __future__ import annotations

import logging

import pytest
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from sqlstate.observe.health import Health, PartitionLag, Watchdog
from sqlstate.observe.metrics import Metrics
from sqlstate.observe.partition_states import (
    FOLLOWED,
    NEITHER,
    OWNED,
    RESTORING,
    Facts,
    PartitionState,
    classify,
    neither,
    passing,
)
from sqlstate.observe.progress import ProgressLog
from sqlstate.observe.stats import Stats

A = TopicPartition("orders", 0)
B = TopicPartition("orders", 1)
C = TopicPartition("orders", 2)


def test_each_partition_is_owned_followed_restoring_or_neither() -> None:
    facts = Facts(
        assigned={A, B},
        claimed={A},
        held={B},
        claiming={B, C},
        failures={},
        followed={A, B, C},
        paused={B, C},
    )
    states = classify(facts)
    assert states[A] == PartitionState(OWNED)
    assert states[B] == PartitionState(RESTORING)
    # Paused for a claim here, then assigned elsewhere: its file goes stale unless reported.
    assert states[C].state == NEITHER
    assert "no longer assigned" in states[C].reason


def test_a_failed_claim_is_neither_with_its_reason() -> None:
    facts = Facts(
        assigned={A},
        claimed=set(),
        held={A},
        claiming={A},
        failures={A: "the producer did not start within 30 s"},
        followed=None,
    )
    assert neither(classify(facts)) == {
        A: "its claim failed: the producer did not start within 30 s"
    }


def test_followed_and_unfollowed_partitions_with_a_standby() -> None:
    facts = Facts(
        assigned=set(),
        claimed=set(),
        held=set(),
        claiming=set(),
        failures={},
        followed={A, B},
        paused={B},
    )
    states = classify(facts)
    assert states[A] == PartitionState(FOLLOWED)
    assert states[B].state == NEITHER  # paused, and nobody here claims it


def test_with_a_standby_count_what_the_group_gave_to_follow_counts() -> None:
    nothing: set[TopicPartition] = set()
    facts = Facts(nothing, nothing, nothing, nothing, {}, followed={A}, to_follow={A, B})
    states = classify(facts)
    assert states[A] == PartitionState(FOLLOWED)
    assert states[B].state == NEITHER  # given to follow, not followed: an alarm if it lasts
    assert passing(states) == {B}
    assert C not in states  # neither owned nor given to follow: not this file's to keep


def test_without_a_standby_only_this_process_partitions_count() -> None:
    facts = Facts(assigned={A}, claimed={A}, held=set(), claiming={A}, failures={}, followed=None)
    assert classify(facts) == {A: PartitionState(OWNED)}


def test_neither_makes_the_daemon_unhealthy_at_once_and_recovers() -> None:
    watchdog = Watchdog(60)
    lags = {A: PartitionLag(5, 5)}
    health = watchdog.check(True, lags, neither={B: "its claim failed: timeout"})
    assert not health.healthy
    assert "orders-1 (its claim failed: timeout)" in health.reason
    assert health.as_json()["neither"] == [
        {"topic": "orders", "partition": 1, "reason": "its claim failed: timeout"}
    ]
    health = watchdog.check(True, lags, neither={})
    assert health.healthy
    assert "neither" not in health.as_json()


def test_the_progress_log_says_when_partitions_are_neither_and_kept_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    progress = ProgressLog(10)
    with caplog.at_level(logging.INFO):
        progress.tick(0, {}, {B: "its claim failed: timeout"})
        progress.tick(0, {}, {B: "its claim failed: timeout"})  # unchanged: said once
        progress.tick(0, {}, {})
    assert [(r.levelname, r.event) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("WARNING", "partitions_neither"),
        ("INFO", "partitions_kept"),
    ]
    assert "orders-1 (its claim failed: timeout)" in caplog.records[0].getMessage()


def test_the_state_metric() -> None:
    states = {A: PartitionState(OWNED), B: PartitionState(NEITHER, "why")}
    metrics = Metrics(Stats(), dict, lambda: Health(True, "caught up", True, 0, 0), lambda: states)
    body, _ = metrics.exposition("text/plain")
    (family,) = [
        f
        for f in text_string_to_metric_families(body.decode())
        if f.name == "sqlstate_partition_state"
    ]
    values = {(s.labels["partition"], s.labels["state"]): s.value for s in family.samples}
    assert values[("0", OWNED)] == 1
    assert values[("0", NEITHER)] == 0
    assert values[("1", NEITHER)] == 1


def test_a_neither_a_rebalance_passes_through_is_an_alarm_only_once_it_lasts() -> None:
    """Revoked and not released yet: every rebalance shows it for a moment, so /healthz waits
    the stall timeout before it calls it an alarm; a failed claim is one at once."""
    now = [0.0]
    watchdog = Watchdog(10, lambda: now[0])
    lags = {A: PartitionLag(5, 5)}
    revoked = classify(
        Facts(assigned={A}, claimed={A}, held=set(), claiming={A, B}, failures={}, followed=None)
    )
    assert passing(revoked) == {B}
    assert watchdog.check(True, lags, neither=neither(revoked), passing=passing(revoked)).healthy
    now[0] = 9.0
    assert watchdog.check(True, lags, neither=neither(revoked), passing=passing(revoked)).healthy
    now[0] = 10.0
    health = watchdog.check(True, lags, neither=neither(revoked), passing=passing(revoked))
    assert not health.healthy
    assert "no longer assigned" in health.reason
    # Released at last: healthy again, and a later passing neither waits its own time.
    assert watchdog.check(True, lags, neither={}, passing=frozenset()).healthy
    assert watchdog.check(True, lags, neither=neither(revoked), passing=passing(revoked)).healthy
    failed = classify(
        Facts(
            assigned={A, B},
            claimed={A},
            held={B},
            claiming={A, B},
            failures={B: "timeout"},
            followed=None,
        )
    )
    assert passing(failed) == frozenset()
    assert not watchdog.check(True, lags, neither=neither(failed), passing=passing(failed)).healthy
