"""Turn what each run recorded into the figures of the table and the JSON file.

Throughput is measured the same way for every run, from the batches themselves: the records of
all batches after the first, divided by the time from the first batch to the last (for the
ceiling, when ``getmany()`` returned them; for sqlstate, when their transaction committed). That
leaves out start-up (joining the group, opening the database), which is reported on its own as
the time from launch to the first committed batch, and the launch-to-last-batch wall time.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Batch:
    at: float  # epoch seconds
    records: int
    commit_ms: float | None = None  # None for the ceiling, which commits nothing


@dataclass(frozen=True)
class RunResult:
    name: str
    label: str
    launched_at: float
    batches: Sequence[Batch]
    peak_rss_kib: Sequence[int | None]  # one per process
    counts_exact: bool | None  # None: nothing to check (the ceiling)
    c_parser: bool | None
    cpu_s: Sequence[float | None] = ()  # one per process, user + system, start-up included
    busy_retries: int = 0
    # Under --changelog, each batch's wait for its Kafka transactions (part of its commit).
    publish_ms: Sequence[float] = ()


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(run: RunResult) -> dict[str, Any]:
    batches = sorted(run.batches, key=lambda batch: batch.at)
    records = sum(batch.records for batch in batches)
    first, last = (batches[0].at, batches[-1].at) if batches else (run.launched_at,) * 2
    window = last - first
    if len(batches) > 1 and window > 0:
        rate = (records - batches[0].records) / window
        batch_rate = (len(batches) - 1) / window
    else:  # one batch (a tiny smoke run): fall back to launch-to-end
        wall = max(last - run.launched_at, 1e-3)
        rate, batch_rate = records / wall, len(batches) / wall
    commits = [batch.commit_ms for batch in batches if batch.commit_ms is not None]
    return {
        "name": run.name,
        "label": run.label,
        "records": records,
        "messages_per_s": round(rate),
        "batches": len(batches),
        "batches_per_s": round(batch_rate, 1),
        "mean_batch_records": round(records / len(batches)) if batches else 0,
        "launch_to_first_batch_s": round(first - run.launched_at, 3) if batches else None,
        "launch_to_last_batch_s": round(last - run.launched_at, 3) if batches else None,
        "commit_ms_p50": _rounded(percentile(commits, 0.50)),
        "commit_ms_p99": _rounded(percentile(commits, 0.99)),
        "commit_ms_max": _rounded(max(commits) if commits else None),
        "peak_rss_mib": [
            round(kib / 1024, 1) if kib is not None else None for kib in run.peak_rss_kib
        ],
        "cpu_s": [round(cpu, 2) if cpu is not None else None for cpu in run.cpu_s],
        "counts_exact": run.counts_exact,
        "c_parser": run.c_parser,
        "busy_retries": run.busy_retries,
        "publish_ms_p50": _rounded(percentile(run.publish_ms, 0.50)),
        "publish_ms_p99": _rounded(percentile(run.publish_ms, 0.99)),
    }


def summarize_rounds(rounds: Sequence[RunResult]) -> dict[str, Any]:
    """One run measured in several rounds: the figures of its fastest round, plus the spread.

    Other programs on the machine only ever slow a round down, so the fastest round is the best
    estimate of what the code can do; the median and every round's rate are kept beside it.
    Commit latencies pool every round's batches; peak memory and time to the first batch are
    the worst over the rounds.
    """
    each = [summarize(run) for run in rounds]
    best = dict(max(each, key=lambda summary: summary["messages_per_s"]))
    pooled = RunResult(
        rounds[0].name,
        rounds[0].label,
        rounds[0].launched_at,
        [batch for run in rounds for batch in run.batches],
        (),
        None,
        None,
    )
    commits = [batch.commit_ms for batch in pooled.batches if batch.commit_ms is not None]
    published = [ms for run in rounds for ms in run.publish_ms]
    best.update(
        rounds=len(each),
        messages_per_s_rounds=[summary["messages_per_s"] for summary in each],
        messages_per_s_median=round(statistics.median(s["messages_per_s"] for s in each)),
        commit_ms_p50=_rounded(percentile(commits, 0.50)),
        commit_ms_p99=_rounded(percentile(commits, 0.99)),
        commit_ms_max=_rounded(max(commits) if commits else None),
        publish_ms_p50=_rounded(percentile(published, 0.50)),
        publish_ms_p99=_rounded(percentile(published, 0.99)),
        peak_rss_mib=[
            _worst(column) for column in zip(*(s["peak_rss_mib"] for s in each), strict=True)
        ],
        launch_to_first_batch_s=_worst(s["launch_to_first_batch_s"] for s in each),
        launch_to_first_batch_s_rounds=[s["launch_to_first_batch_s"] for s in each],
        counts_exact=None
        if rounds[0].counts_exact is None
        else all(s["counts_exact"] for s in each),
        busy_retries=sum(s["busy_retries"] for s in each),
    )
    return best


def _worst(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None


def _rounded(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def ratio(
    numerator: dict[str, Any], denominator: dict[str, Any], key: str = "messages_per_s"
) -> float:
    value: float = numerator[key] / max(denominator[key], 1)
    return round(value, 3)


def table(summaries: Sequence[dict[str, Any]]) -> str:
    """A plain-text table; each summary may carry ``ratio`` = (label, value) set by the caller."""
    headers = [
        "run",
        "msg/s",
        "ratio",
        "batches/s",
        "commit p50 ms",
        "commit p99 ms",
        "peak RSS MiB",
        "CPU s",
        "first batch s",
        "exact",
    ]
    rows = []
    for summary in summaries:
        ratio_cell = summary.get("ratio")
        rows.append(
            [
                summary["label"],
                f"{summary['messages_per_s']:,}",
                f"{ratio_cell[0]} {ratio_cell[1]:.2f}" if ratio_cell else "",
                f"{summary['batches_per_s']:.1f}",
                _cell(summary["commit_ms_p50"]),
                _cell(summary["commit_ms_p99"]),
                " + ".join(_cell(mib) for mib in summary["peak_rss_mib"]),
                " + ".join(_cell(cpu) for cpu in summary["cpu_s"]),
                _cell(summary["launch_to_first_batch_s"]),
                {True: "yes", False: "NO", None: "-"}[summary["counts_exact"]],
            ]
        )
    return grid(headers, rows)


def grid(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``rows`` of cells under ``headers``, as plain-text columns."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [
        " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [headers, *rows]
    ]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
