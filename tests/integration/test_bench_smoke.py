"""``make bench`` in miniature: the benchmark program runs end to end on a few thousand messages.

No timing is asserted (that is what ``make bench`` is for); this only keeps the program from
rotting: every run happens, every figure is in the JSON file, and every sqlstate run's counts
equal what was produced (for the processors' runs: their state; for the changelog runs, also
the files rebuilt from the changelog alone, and both files of the two-process run).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNS = (
    "ceiling",
    "ceiling_collector",
    "ceiling_bare",
    "fresh",
    "no_kafka_offsets",
    "two_processes",
    "big_state_5000",
    "big_state_5000_unchecked",
    "latest",
    "windowed_counts",
    "sql",
    "sql_avro",
    "changelog",
    "changelog_no_standby",
    "changelog_two_hosts",
)
FIGURES = (
    "messages_per_s",
    "batches_per_s",
    "commit_ms_p50",
    "commit_ms_p99",
    "peak_rss_mib",
    "cpu_s",
    "launch_to_first_batch_s",
    "counts_exact",
    "records",
)


@pytest.mark.timeout(300)
def test_bench_runs_end_to_end_with_exact_counts(
    kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path
) -> None:
    result_file = tmp_path / "bench.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--bootstrap",
            kafka_bootstrap,
            "--messages",
            "3000",
            "--partitions",
            "3",
            "--keys",
            "500",
            "--big-state",
            "5000",
            "--rounds",
            "1",
            "--restore-keys",
            "2000",
            # A rolling restart lasts about a minute whatever its size: make bench measures it.
            "--no-rebalance",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(result_file),
            "--schema-registry-url",
            schema_registry_url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads(result_file.read_text())
    summaries = results["summaries"]
    assert set(summaries) == set(RUNS)
    for name in RUNS:
        missing = [figure for figure in FIGURES if figure not in summaries[name]]
        assert not missing, (name, missing)
        assert summaries[name]["records"] == 3000, name
        assert summaries[name]["messages_per_s"] > 0, name
    for name in RUNS[3:]:  # the sqlstate runs
        assert summaries[name]["counts_exact"] is True, name
        assert summaries[name]["commit_ms_p50"] is not None, name
    assert len(summaries["two_processes"]["peak_rss_mib"]) == 2
    assert set(results["ratios"]) == {
        "a'/a",
        "b/a",
        "b/a'",
        "a''/a",
        "b/a''",
        "b'/a",
        "c/b",
        "d/b (5000)",
        "d'/b (5000)",
        "e/a",
        "f/a",
        "g/a",
        "e/a'",
        "f/a'",
        "g/a'",
        "g'/g",
        "h/b",
        "h'/b",
        "i/h",
    }
    assert results["restart_to_first_commit_s"]["5000"] is not None
    for name in ("changelog", "changelog_no_standby"):
        assert summaries[name]["publish_ms_p50"] is not None, name
        (restored,) = results[f"{name}_restored"]
        assert restored["exact"] is True, name
    assert len(summaries["changelog_two_hosts"]["peak_rss_mib"]) == 2
    (lag,) = results["standby_lag"]
    assert lag["steps"] > 0  # the owners' files moved, and the other file followed
    assert lag["seconds_behind_max"] is not None
    (restore,) = results["restore"]
    assert restore["exact"] is True
    assert restore["keys"] == 2000
    assert restore["restore_s"] is not None
    assert results["counts_exact"] is True
    assert "(a) bare aiokafka consumer" in completed.stdout  # the table
