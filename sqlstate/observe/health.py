"""Is the daemon healthy? In its group, and either caught up or making progress.

The watchdog is fed once a tick (by ``monitor.py``) with three facts and keeps no other state:
whether the consumer is in its group (``kafka.in_group``), each claimed partition's committed
position and the log end the consumer last saw, and the time. It decides:

- **In the group.** Leaving it briefly is normal (a rebalance, a coordinator moving to another
  broker), so a member that has joined once stays healthy while out of its group for less than the
  stall timeout. A daemon that has never joined is not healthy yet.
- **Caught up or moving.** A partition behind its log end whose committed position has not moved
  for the stall timeout is stalled. A partition whose log end is not known yet counts as behind.
- **Every partition kept** (``--changelog``): a partition neither owned, followed nor being
  restored (``partition_states.py``: a claim that failed, a changelog left paused) makes the
  daemon unhealthy at once, with the reason: its file goes stale otherwise, unseen.

Becoming unhealthy is logged as a warning once per cause; recovering, as one INFO line.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from sqlstate.observe.logs import LogEvent, describe, partition_fields

logger = logging.getLogger("sqlstate.health")  # its documented name
_UNHEALTHY = LogEvent(logger, logging.WARNING, "unhealthy", "unhealthy: %(reason)s")
_HEALTHY_AGAIN = LogEvent(logger, logging.INFO, "healthy_again", "healthy again: %(reason)s")


@dataclass(frozen=True)
class PartitionLag:
    """A claimed partition: its committed position and the log end the consumer last saw."""

    next_offset: int
    log_end_offset: int | None  # None: not fetched yet

    @property
    def lag(self) -> int | None:
        if self.log_end_offset is None:
            return None
        return max(self.log_end_offset - self.next_offset, 0)


Lags = Mapping[TopicPartition, PartitionLag]


def total_lag(lags: Lags) -> int:
    """Records behind, over the partitions whose log end is known."""
    return sum(lag.lag or 0 for lag in lags.values())


def caught_up(lags: Lags) -> bool:
    """Every claimed partition is known to be at its log end (true when none is claimed)."""
    return all(lag.lag == 0 for lag in lags.values())


@dataclass(frozen=True)
class Health:
    """What ``/healthz`` answers."""

    healthy: bool
    reason: str
    in_group: bool
    partitions: int
    lag: int
    # Still serving, but something needs an operator: changelog records were set aside.
    degraded: str | None = None
    # Partitions neither owned nor followed (--changelog), with why.
    neither: Mapping[TopicPartition, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "healthy": self.healthy,
            "reason": self.reason,
            "in_group": self.in_group,
            "partitions": self.partitions,
            "lag": self.lag,
        }
        if self.degraded is not None:
            answer["degraded"] = self.degraded
        if self.neither:
            answer["neither"] = [
                partition_fields(tp, reason=reason) for tp, reason in sorted(self.neither.items())
            ]
        return answer


class Watchdog:
    """Turns each tick's facts into a ``Health``, and logs when it turns bad or good again."""

    def __init__(self, stall_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._stall_timeout_s = stall_timeout_s
        self._clock = clock
        started = clock()
        self._joined_once = False
        self._out_of_group_since: float | None = started
        # Per claimed partition: the position last seen and when it last moved (or was at the end).
        self._moved: dict[TopicPartition, tuple[int, float]] = {}
        self._alarms: set[str] = set()
        # Per partition neither owned nor followed: since when, without a break.
        self._neither_since: dict[TopicPartition, float] = {}
        self.health = Health(False, "starting: not in the consumer group yet", False, 0, 0)

    def check(
        self,
        in_group: bool,
        lags: Lags,
        degraded: str | None = None,
        neither: Mapping[TopicPartition, str] | None = None,
        passing: Set[TopicPartition] = frozenset(),
    ) -> Health:
        """``degraded``: what an operator should look at although the daemon works on;
        ``neither``: the partitions neither owned nor followed, with why (--changelog), an
        alarm at once, except those of ``passing`` (a state every rebalance goes through for a
        moment): an alarm only once one lasts the stall timeout."""
        now = self._clock()
        self._neither_since = {tp: self._neither_since.get(tp, now) for tp in neither or {}}
        neither = {
            tp: why
            for tp, why in (neither or {}).items()
            if tp not in passing or now - self._neither_since[tp] >= self._stall_timeout_s
        }
        if in_group:
            self._joined_once = True
            self._out_of_group_since = None
        elif self._out_of_group_since is None:
            self._out_of_group_since = now
        stalled = self._stalled(lags, now)

        alarms: dict[str, str] = {}
        if self._out_of_group_since is not None:
            away = now - self._out_of_group_since
            if away >= self._stall_timeout_s:
                alarms["out_of_group"] = (
                    f"not in the consumer group for {away:.0f}s"
                    " (Kafka unreachable, or a rebalance that does not finish)"
                )
        if stalled:
            alarms["stalled"] = (
                f"positions of {describe(stalled)} have not moved for at least"
                f" {self._stall_timeout_s:g}s while behind the log end"
            )
        if neither:
            alarms["neither"] = "neither owned nor followed: " + ", ".join(
                f"{tp.topic}-{tp.partition} ({why})" for tp, why in sorted(neither.items())
            )
        lag = total_lag(lags)
        if alarms:
            health = Health(
                False, "; ".join(alarms.values()), in_group, len(lags), lag, neither=neither
            )
        elif not in_group:
            # Not an alarm yet: joining at start, or a rebalance or a coordinator move in progress.
            reason = "rejoining the consumer group" if self._joined_once else "joining the group"
            health = Health(self._joined_once, reason, in_group, len(lags), lag)
        elif caught_up(lags):
            health = Health(True, "caught up", in_group, len(lags), lag)
        else:
            health = Health(True, "catching up", in_group, len(lags), lag)
        if degraded is not None:
            reason = f"{health.reason}; degraded: {degraded}"
            health = dataclasses.replace(health, reason=reason, degraded=degraded)
        self._log_changes(set(alarms), health, {tp: lags[tp] for tp in stalled})
        self.health = health
        return health

    def _stalled(self, lags: Lags, now: float) -> list[TopicPartition]:
        for tp in set(self._moved) - set(lags):
            del self._moved[tp]  # no longer ours
        stalled = []
        for tp, lag in lags.items():
            seen = self._moved.get(tp)
            # The clock only runs while a partition is behind (or its log end is unknown).
            if seen is None or seen[0] != lag.next_offset or lag.lag == 0:
                self._moved[tp] = (lag.next_offset, now)
            elif now - seen[1] >= self._stall_timeout_s:
                stalled.append(tp)
        return stalled

    def _log_changes(self, alarms: set[str], health: Health, stalled: Lags) -> None:
        fields = {
            "reason": health.reason,
            "in_group": health.in_group,
            "partitions": health.partitions,
            "lag": health.lag,
        }
        if alarms - self._alarms:
            _UNHEALTHY.log(
                **fields,
                causes=sorted(alarms),
                stalled=[
                    partition_fields(tp, next_offset=lag.next_offset)
                    for tp, lag in sorted(stalled.items())
                ],
            )
        elif self._alarms and not alarms:
            _HEALTHY_AGAIN.log(**fields)
        self._alarms = alarms
