"""Turn what each run recorded into the figures of the table and the JSON file.

Throughput is measured the same way for every run, from the batches themselves: the records of
all batches after the first, divided by the time from the first batch to the last (for the
ceiling, when ``getmany()`` returned them; for sqlstate, when their transaction committed). That
leaves out start-up (joining the group, opening the database), which is reported on its own as
the time from launch to the first committed batch, and the launch-to-last-batch wall time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
    busy_retries: int = 0


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
        "counts_exact": run.counts_exact,
        "c_parser": run.c_parser,
        "busy_retries": run.busy_retries,
    }


def _rounded(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def ratio(numerator: dict[str, Any], denominator: dict[str, Any]) -> float:
    value: float = numerator["messages_per_s"] / max(denominator["messages_per_s"], 1)
    return round(value, 3)


def table(summaries: Sequence[dict[str, Any]]) -> str:
    """A plain-text table; each summary may carry ``ratio`` = (label, value) set by the caller."""
    headers = ["run", "msg/s", "ratio", "batches/s", "commit p50 ms", "commit p99 ms",
               "peak RSS MiB", "first batch s", "wall s", "exact"]
    rows = []
    for summary in summaries:
        ratio_cell = summary.get("ratio")
        rows.append([
            summary["label"],
            f"{summary['messages_per_s']:,}",
            f"{ratio_cell[0]} {ratio_cell[1]:.2f}" if ratio_cell else "",
            f"{summary['batches_per_s']:.1f}",
            _cell(summary["commit_ms_p50"]),
            _cell(summary["commit_ms_p99"]),
            " + ".join(_cell(mib) for mib in summary["peak_rss_mib"]),
            _cell(summary["launch_to_first_batch_s"]),
            _cell(summary["launch_to_last_batch_s"]),
            {True: "yes", False: "NO", None: "-"}[summary["counts_exact"]],
        ])
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in [headers, *rows]]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def as_dict(run: RunResult) -> dict[str, Any]:
    """The raw record of a run, batch by batch, for anyone who wants to recompute."""
    return asdict(run)
