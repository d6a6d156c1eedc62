"""What a rebalance cost each partition, worked out after the run from two independent records.

- **When each partition advanced**: the CreateTime of every position record in its changelog
  partition (one per committed batch of that input partition, read with ``read_committed``),
  kept only where the position moved forward (a claim may publish the position it starts at).
- **Who owned it, and what the group did**: the daemons' JSON log lines of each host's
  processes (``Member``): ``partitions_assigned`` / ``claim_deferred`` (an assignment),
  ``partitions_claimed`` (held partitions claimed), ``partitions_revoked``,
  ``changelog_producer_started`` and ``changelog_restored``.

Per rebalance window (``Window``: from the SIGTERM, or the relaunch, until the group had settled
and every partition had advanced again) a partition's **stall** is the longest gap between two
consecutive advances of that partition that overlaps the window. It **stayed** if the same host
owned it at the window's start and at its end, and **moved** otherwise. The group's own
**pause** is, per member that was revoked in the window, the time from its revoke to its next
assignment (the JoinGroup and SyncGroup round trips, and the wait for the other members to
rejoin); the **claim** is the time from an assignment to its claim (under ``--changelog``: the
producers' start, the restore and the claim transaction).

Between rebalances (``steady_gaps``) the gaps between a partition's advances give the floor of
any stall: a partition that stays cannot stop for less than the wait from its last batch to the
revoke, the group's pause, and the wait to its first batch after the claim.

The two records are checked against each other (``log_consistent``): no partition may advance
between its release (its owner's revoke) and its claim by the next owner, as the logs tell them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bench.report import percentile

_ASSIGNMENTS = ("partitions_assigned", "claim_deferred")
# Log lines carry milliseconds; a record's CreateTime too.
_CLOCK_SLACK_S = 0.002


def epoch(entry: Mapping[str, Any]) -> float:
    """A JSON log line's time, in epoch seconds."""
    return datetime.fromisoformat(entry["time"]).timestamp()


def partitions_of(entry: Mapping[str, Any], field: str) -> set[int]:
    """The partition numbers of a log line's list of partitions (``assigned``, ``revoked``)."""
    return {item["partition"] for item in entry.get(field, ())}


@dataclass(frozen=True)
class Member:
    """One process of one host: its log lines, from its launch to its stop (None: still
    running at the end of the measurement)."""

    host: int
    launched_at: float
    stopped_at: float | None
    events: Sequence[Mapping[str, Any]]

    def alive(self, at: float) -> bool:
        return self.launched_at <= at and (self.stopped_at is None or at < self.stopped_at)

    def named(self, *names: str) -> list[Mapping[str, Any]]:
        return [entry for entry in self.events if entry.get("event") in names]


@dataclass(frozen=True)
class Window:
    """One rebalance: ``host`` left (``leave``) or came back (``join``)."""

    kind: str
    host: int
    start: float
    end: float

    @property
    def label(self) -> str:
        return f"host {self.host} {'leaves' if self.kind == 'leave' else 'rejoins'}"


def advances(positions: Iterable[tuple[float, int]]) -> list[float]:
    """The times at which the position moved forward, of (time, next_offset) in log order."""
    times: list[float] = []
    reached = -1
    for at, next_offset in positions:
        if next_offset > reached:
            reached = next_offset
            times.append(at)
    return times


def stall(times: Sequence[float], start: float, end: float) -> float | None:
    """The longest gap between consecutive ``times`` that overlaps [``start``, ``end``]; None
    when no gap does (the partition never advanced on one side of the window)."""
    gaps = [
        later - earlier
        for earlier, later in itertools.pairwise(times)
        if later > start and earlier < end
    ]
    return max(gaps, default=None)


def owners_at(members: Iterable[Member], at: float) -> dict[int, int]:
    """Partition -> the host holding it at ``at``, from the members' assignments and revokes
    (a later assignment of a partition wins over an earlier one of another member)."""
    held: dict[int, tuple[float, int]] = {}
    for member in members:
        if not member.alive(at):
            continue
        mine: dict[int, float] = {}
        for entry in member.events:
            when, name = epoch(entry), entry.get("event")
            if when > at:
                break
            if name in _ASSIGNMENTS:
                mine = dict.fromkeys(partitions_of(entry, "assigned"), when)
            elif name == "partitions_revoked":
                for partition in partitions_of(entry, "revoked"):
                    mine.pop(partition, None)
        for partition, since in mine.items():
            if partition not in held or held[partition][0] < since:
                held[partition] = (since, member.host)
    return {partition: host for partition, (_, host) in held.items()}


def spread(values: Sequence[float]) -> dict[str, Any]:
    """How many, and their p50, p99 and max, in seconds."""
    return {
        "partitions": len(values),
        "p50_s": _round(percentile(values, 0.5)),
        "p99_s": _round(percentile(values, 0.99)),
        "max_s": _round(max(values, default=None)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _in(window: Window, entry: Mapping[str, Any]) -> bool:
    return window.start <= epoch(entry) <= window.end


def _next(entries: Sequence[Mapping[str, Any]], after: float) -> Mapping[str, Any] | None:
    return next((entry for entry in entries if epoch(entry) >= after), None)


def group_figures(window: Window, members: Sequence[Member]) -> dict[str, Any]:
    """What the logs say of one rebalance: the group's pause, the claims, the notice, the
    producers started and the restores."""
    pauses: list[float] = []
    claims: list[float] = []
    revokes: list[float] = []
    generations: set[int] = set()
    for member in members:
        assignments = member.named(*_ASSIGNMENTS)
        claimed = member.named("partitions_claimed")
        for revoke in member.named("partitions_revoked"):
            # A process's first join revokes nothing: no partition waits on it.
            if _in(window, revoke) and revoke.get("revoked"):
                revokes.append(epoch(revoke))
                assigned = _next(assignments, epoch(revoke))
                if assigned is not None and _in(window, assigned):
                    pauses.append(epoch(assigned) - epoch(revoke))
        for assigned in assignments:
            if not _in(window, assigned):
                continue
            generations.add(assigned.get("generation", -1))
            if assigned.get("partitions"):
                claim = _next(claimed, epoch(assigned))
                if claim is not None and _in(window, claim):
                    claims.append(epoch(claim) - epoch(assigned))
    restores = [e for m in members for e in m.named("changelog_restored") if _in(window, e)]
    return {
        "group_pause_s": _round(max(pauses, default=None)),
        "group_pause_p50_s": _round(percentile(pauses, 0.5)),
        "notice_s": _round(min(revokes) - window.start) if revokes else None,
        "claim_s": _round(max(claims, default=None)),
        "generations": len(generations),
        "producer_starts": sum(
            1 for m in members for e in m.named("changelog_producer_started") if _in(window, e)
        ),
        "restores": len(restores),
        "restored_records": sum(int(entry.get("records", 0)) for entry in restores),
    }


def _quiet_span(
    partition: int, window: Window, members: Sequence[Member], before: int, after: int
) -> tuple[float, float] | None:
    """From the logs: from the revoke of ``partition`` by its owner ``before`` to its claim by
    ``after`` (hosts), within ``window``; None when the logs do not show both."""
    released = claimed = None
    for member in members:
        if member.host == before and released is None:
            for revoke in member.named("partitions_revoked"):
                if _in(window, revoke) and partition in partitions_of(revoke, "revoked"):
                    released = epoch(revoke)
                    break
        if member.host == after and member.alive(window.end):
            for claim in member.named("partitions_claimed"):
                if _in(window, claim) and partition in partitions_of(claim, "assigned"):
                    claimed = epoch(claim)
    if released is None or claimed is None or claimed < released:
        return None
    return released, claimed


def window_figures(
    window: Window, members: Sequence[Member], advanced: Mapping[int, Sequence[float]]
) -> dict[str, Any]:
    """One rebalance's figures: stalls of the partitions that moved and of those that stayed,
    the group's figures, and the check of the changelog against the logs."""
    before, after = owners_at(members, window.start), owners_at(members, window.end)
    stalls: dict[str, dict[int, float]] = {"moved": {}, "stayed": {}}
    unmeasured: list[int] = []
    checked = consistent = 0
    for partition, times in sorted(advanced.items()):
        gap = stall(times, window.start, window.end)
        if gap is None or partition not in before or partition not in after:
            unmeasured.append(partition)
            continue
        kind = "stayed" if before[partition] == after[partition] else "moved"
        stalls[kind][partition] = gap
        span = _quiet_span(partition, window, members, before[partition], after[partition])
        if span is not None:
            checked += 1
            released, claimed = span
            inside = [
                at for at in times if released + _CLOCK_SLACK_S < at < claimed - _CLOCK_SLACK_S
            ]
            consistent += not inside and gap >= claimed - released - 2 * _CLOCK_SLACK_S
    return {
        "rebalance": window.label,
        "kind": window.kind,
        "host": window.host,
        "window_s": _round(window.end - window.start),
        "moved": spread(list(stalls["moved"].values())),
        "stayed": spread(list(stalls["stayed"].values())),
        **group_figures(window, members),
        "unmeasured": unmeasured,
        "log_checked": checked,
        "log_consistent": consistent,
        "stall_s": {
            kind: {str(p): _round(s) for p, s in partitions.items()}
            for kind, partitions in stalls.items()
        },
    }


def steady_gaps(
    advanced: Mapping[int, Sequence[float]], spans: Iterable[tuple[float, float]]
) -> dict[str, Any]:
    """The gaps between consecutive advances that lie wholly within one of ``spans`` (the
    steady load between rebalances), pooled over partitions: what a partition waits between
    two batches when nothing happens, the floor under every stall."""
    spans = list(spans)
    gaps = [
        later - earlier
        for times in advanced.values()
        for earlier, later in itertools.pairwise(times)
        if any(start <= earlier and later <= end for start, end in spans)
    ]
    return {
        "gaps": len(gaps),
        "p50_s": _round(percentile(gaps, 0.5)),
        "p99_s": _round(percentile(gaps, 0.99)),
        "max_s": _round(max(gaps, default=None)),
    }


def overall(windows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every rebalance together: the stalls pooled, the group's pauses and the counts summed."""
    pooled: dict[str, list[float]] = {"moved": [], "stayed": []}
    for figures in windows:
        for kind, values in pooled.items():
            values.extend(s for s in figures["stall_s"][kind].values() if s is not None)
    pauses = [f["group_pause_s"] for f in windows if f["group_pause_s"] is not None]
    return {
        "rebalance": "all",
        "moved": spread(pooled["moved"]),
        "stayed": spread(pooled["stayed"]),
        "group_pause_s": _round(max(pauses, default=None)),
        "group_pause_p50_s": _round(percentile(pauses, 0.5)),
        "claim_s": _round(max((f["claim_s"] for f in windows if f["claim_s"]), default=None)),
        "producer_starts": sum(f["producer_starts"] for f in windows),
        "restores": sum(f["restores"] for f in windows),
        "log_checked": sum(f["log_checked"] for f in windows),
        "log_consistent": sum(f["log_consistent"] for f in windows),
    }
