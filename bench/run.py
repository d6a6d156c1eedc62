"""``python -m bench.run``: produce a topic once, then measure the ceiling and sqlstate on it.

Runs, one after another on the same data, each with a fresh consumer group:

(a) ``ceiling``: a bare aiokafka consumer with sqlstate's fetch settings, iterating records;
(b) ``fresh``: ``sqlstate run`` into a new database;
(c) ``two_processes``: two ``sqlstate run`` processes in one group sharing one new database;
(d) ``big_state_<N>``: ``sqlstate run`` into a database already holding N distinct keys
    (``--big-state``, repeatable).

Prints a table and writes every figure, and every batch, to a JSON file. The bench checks after
each sqlstate run that every key's stored count equals what was produced; a mismatch fails the
run with exit code 1, whatever the speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiokafka
import aiosqlite

from bench import bigstate, sqlstate_process, workload
from bench.report import Batch, RunResult, ratio, summarize, table

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
RUN_TIMEOUT_S = 900.0
SETTLE_S = 1.0  # between runs: let the broker finish the previous group's leave


@dataclass(frozen=True)
class Options:
    bootstrap: str
    workload: workload.Workload
    big_states: tuple[int, ...]
    layout: bigstate.Layout
    json_path: Path
    workdir: Path
    keep_topic: bool
    daemon_args: tuple[str, ...]


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP",
                                                              DEFAULT_BOOTSTRAP),
                        help="Kafka bootstrap server (default: $KAFKA_BOOTSTRAP or %(default)s)")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--keys", type=int, default=10_000, help="distinct keys produced")
    parser.add_argument("--zipf", type=float, metavar="S",
                        help="draw keys from a Zipf distribution with exponent S (default:"
                        " uniform)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--big-state", type=int, action="append", metavar="KEYS",
                        help="distinct keys already in the database for run (d); repeat for"
                        " several sizes, 0 to skip (default: 1000000)")
    parser.add_argument("--big-state-layout", choices=bigstate.LAYOUTS, default="interleaved",
                        help="where the existing keys sit in the index (see bench/bigstate.py)")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--workdir", type=Path,
                        help="where the databases go (default: a temporary folder, removed)")
    parser.add_argument("--keep-topic", action="store_true", help="don't delete the topic")
    parser.add_argument("--daemon-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for every `sqlstate run` (repeat)")
    args = parser.parse_args(argv)
    big_states = tuple(n for n in (args.big_state or [1_000_000]) if n > 0)
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="sqlstate-bench-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    options = Options(
        bootstrap=args.bootstrap,
        workload=workload.Workload(args.messages, args.partitions, args.keys, args.zipf,
                                   args.seed),
        big_states=big_states,
        layout=args.big_state_layout,
        json_path=args.json,
        workdir=workdir,
        keep_topic=args.keep_topic,
        daemon_args=tuple(args.daemon_arg),
    )
    return options, own_workdir


def machine() -> dict[str, Any]:
    model = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                      if line.startswith("Model name")), "")
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "aiokafka": aiokafka.__version__,
        "aiosqlite": aiosqlite.__version__,
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
    }


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_ceiling(options: Options, produced: workload.Produced) -> RunResult:
    launched_at = time.time()
    completed = subprocess.run(
        [sys.executable, "-m", "bench.ceiling", "--bootstrap", options.bootstrap,
         "--topic", produced.topic, "--group-id", f"{produced.topic}-ceiling",
         "--messages", str(options.workload.messages), "--deadline", str(RUN_TIMEOUT_S)],
        capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the ceiling consumer failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout)
    return RunResult(
        name="ceiling", label="(a) bare aiokafka consumer", launched_at=launched_at,
        batches=[Batch(at, records) for at, records in result["batches"]],
        peak_rss_kib=[result["peak_rss_kib"]], counts_exact=None, c_parser=result["c_parser"],
    )


def run_sqlstate(options: Options, produced: workload.Produced, name: str, label: str,
                 database: Path, processes: int = 1,
                 existing: bigstate.BigState | None = None) -> RunResult:
    group_id = f"{produced.topic}-{name}"
    daemons = [
        sqlstate_process.launch(f"bench-{name}-{i}", options.bootstrap, produced.topic,
                                group_id, database, options.daemon_args)
        for i in range(processes)
    ]
    try:
        sqlstate_process.wait_caught_up(database, produced.topic, produced.end_offsets,
                                        daemons, RUN_TIMEOUT_S)
    finally:
        for daemon in daemons:
            sqlstate_process.stop(daemon)
    stored = sqlstate_process.stored_counts(database, produced.topic)
    live = {key: count for key, count in stored.items() if "/" not in key}
    exact = live == produced.counts
    if existing is not None:
        exact = exact and bigstate.existing_keys_intact(existing)
    return RunResult(
        name=name, label=label, launched_at=min(d.launched_at for d in daemons),
        batches=[Batch(c.at, c.records, c.commit_ms) for d in daemons for c in d.committed()],
        peak_rss_kib=[d.peak_rss_kib for d in daemons], counts_exact=exact,
        c_parser=all("record parser: C extension" in "\n".join(d.lines) for d in daemons),
        busy_retries=sum(d.busy_retries() for d in daemons),
    )


def measure(options: Options) -> dict[str, Any]:
    spec = options.workload
    topic = f"sqlstate-bench-{uuid.uuid4().hex[:8]}"
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    log(f"producing {spec.describe()} into {topic} at {options.bootstrap}")
    asyncio.run(workload.create_topic(options.bootstrap, topic, spec.partitions))
    try:
        produced = asyncio.run(workload.produce(options.bootstrap, topic, spec))
        log(f"produced in {produced.seconds:.1f}s"
            f" ({spec.messages / produced.seconds:,.0f} msg/s)")
        states = []
        for keys in options.big_states:
            log(f"building a database with {keys:,} existing keys ({options.layout})")
            states.append(bigstate.build(options.workdir / f"big-{keys}.db", topic, keys,
                                         spec.keys, spec.partitions, options.layout))
            log(f"built in {states[-1].seconds:.1f}s")
        runs = _measure_runs(options, produced, states)
    finally:
        if not options.keep_topic:
            asyncio.run(workload.delete_topic(options.bootstrap, topic))
    finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    return _results(options, produced, states, runs, started_at, finished_at)


def _measure_runs(options: Options, produced: workload.Produced,
                  states: list[bigstate.BigState]) -> list[RunResult]:
    runs: list[RunResult] = []

    def step(description: str) -> None:
        if runs:
            time.sleep(SETTLE_S)
        log(description)

    step("(a) bare aiokafka consumer")
    runs.append(run_ceiling(options, produced))
    step("(b) sqlstate run, fresh database")
    runs.append(run_sqlstate(options, produced, "fresh", "(b) sqlstate, fresh db",
                             options.workdir / "fresh.db"))
    step("(c) two sqlstate run processes, one group, one database")
    runs.append(run_sqlstate(options, produced, "two_processes", "(c) 2 processes, 1 db",
                             options.workdir / "shared.db", processes=2))
    for state in states:
        step(f"(d) sqlstate run, database with {state.keys:,} existing keys")
        runs.append(run_sqlstate(options, produced, f"big_state_{state.keys}",
                                 f"(d) sqlstate, {state.keys:,} keys in db", state.database,
                                 existing=state))
    return runs


def _results(options: Options, produced: workload.Produced, states: list[bigstate.BigState],
             runs: list[RunResult], started_at: str, finished_at: str) -> dict[str, Any]:
    summaries = {run.name: summarize(run) for run in runs}
    ceiling, fresh = summaries["ceiling"], summaries["fresh"]
    ratios = {"b/a": ratio(fresh, ceiling),
              "c/b": ratio(summaries["two_processes"], fresh)}
    fresh["ratio"] = ("b/a", ratios["b/a"])
    summaries["two_processes"]["ratio"] = ("c/b", ratios["c/b"])
    restart: dict[str, float | None] = {}
    for state in states:
        summary = summaries[f"big_state_{state.keys}"]
        ratios[f"d/b ({state.keys})"] = ratio(summary, fresh)
        summary["ratio"] = ("d/b", ratios[f"d/b ({state.keys})"])
        restart[str(state.keys)] = summary["launch_to_first_batch_s"]
    spec = options.workload
    return {
        "started_at": started_at,
        "finished_at": finished_at,
        "machine": machine(),
        "bootstrap": options.bootstrap,
        "workload": {
            "topic": produced.topic, "messages": spec.messages, "partitions": spec.partitions,
            "keys": spec.keys, "zipf": spec.zipf, "seed": spec.seed,
            "value_bytes": workload.VALUE_BYTES, "produce_seconds": round(produced.seconds, 2),
            "end_offsets": produced.end_offsets,
        },
        "big_states": [{"keys": s.keys, "layout": s.layout, "build_seconds": round(s.seconds, 1)}
                       for s in states],
        "daemon_args": list(options.daemon_args),
        "summaries": summaries,
        "ratios": ratios,
        "restart_to_first_commit_s": restart,
        "counts_exact": all(s["counts_exact"] is not False for s in summaries.values()),
        "runs": {run.name: {"launched_at": run.launched_at,
                            "batches": [[b.at, b.records, b.commit_ms] for b in run.batches]}
                 for run in runs},
    }


def main(argv: Sequence[str] | None = None) -> int:
    options, own_workdir = parse_args(argv)
    try:
        results = measure(options)
    finally:
        if own_workdir:
            shutil.rmtree(options.workdir, ignore_errors=True)
    summaries = list(results["summaries"].values())
    print(f"sqlstate bench, {results['started_at']} to {results['finished_at']};"
          f" {results['machine']['cpus']} CPUs ({results['machine']['cpu_model']});"
          f" {options.workload.describe()}")
    print(table(summaries))
    print("ratios: " + ", ".join(f"{k} = {v:.3f}" for k, v in results["ratios"].items()))
    for keys, seconds in results["restart_to_first_commit_s"].items():
        print(f"start on a database with {int(keys):,} keys: first batch committed after"
              f" {seconds} s")
    options.json_path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {options.json_path}")
    if not results["counts_exact"]:
        print("COUNTS WERE NOT EXACT", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
