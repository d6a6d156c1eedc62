"""``python -m bench.run``: produce a topic once, then measure the ceiling and sqlstate on it.

Runs, one after another on the same data ((i) on a copy of its own), each with a fresh consumer
group:

(a) ``ceiling``: a bare aiokafka consumer with sqlstate's fetch settings, iterating records;
(a') ``ceiling_collector``: the same with the garbage collector set as ``sqlstate run`` sets it
    (``sqlstate/app/collector.py``), reported as a ratio of (a): what that setting alone is worth;
(a'') ``ceiling_bare``: the same as (a') iterating aiokafka's bare records, as ``sqlstate run``
    reads them with the built-in processors (``sqlstate/kafka/client.py``), not
    ``ConsumerRecord``s: a consumer that reads Kafka the way sqlstate does and does nothing else;
(b) ``fresh``: ``sqlstate run`` into a new database;
(b') ``no_kafka_offsets``: the same with ``--no-commit-offsets-to-kafka``, to show what the
    informational copy of the positions in Kafka's group offsets costs;
(c) ``two_processes``: two ``sqlstate run`` processes in one group sharing one new database;
(d) ``big_state_<N>``: ``sqlstate run`` into a database already holding N distinct keys
    (``--big-state``, repeatable); (d') ``big_state_<N>_unchecked``: the same on a new copy of
    that database with ``--no-integrity-check``, so that the start-up check (``PRAGMA
    quick_check`` beside the first batches, reading every page) is told apart from the cost of
    the large state to each batch;
(e) ``latest``, (f) ``windowed_counts``: ``sqlstate run --processor latest`` (``windowed-counts``)
    into a new database;
(g) ``sql``: ``sqlstate run --sql examples/customer_totals.sql --value-format json``, a
    per-record SQL statement summing a JSON field per customer, into a new database;
(g') ``sql_avro``: the same as (g) on the same orders as Avro values framed by a schema registry
    (``--value-format avro``, ``bench/avro.py``), in a topic of their own; reported as a ratio of
    (g). It needs a registry at ``--schema-registry-url`` (``make bench`` starts one);
    ``--no-avro`` skips it;
(h) ``changelog``: ``sqlstate run --changelog`` into a new database (standbys on: one process
    owns every partition, so it follows none), reported as a ratio of (b); (h')
    ``changelog_no_standby``: the same with ``--standby none``;
(i) ``changelog_two_hosts``: two ``sqlstate run --changelog`` processes in one group on two new
    files, each following the partitions the other owns, with the standby lag sampled
    throughout (``bench/changelog.py``); reported as a ratio of (h).

(e), (f) and (g) are each reported as a ratio of (a), the bare consumer of the same run.
Once after the rounds (``--restore-keys``), the restore time of a changelog partition holding
that many distinct keys into an empty file; then (``--rebalance-hosts``, ``--no-rebalance`` to
skip it) a rolling restart of that many ``--changelog`` hosts under a steady load: how long each
partition stops per rebalance, for those that moved and those that stayed (``bench/rebalance.py``).

Prints a table and writes every figure, and every batch, to a JSON file. The bench checks after
each sqlstate run that its state equals what was produced (each key's count; for (e) each key's
last value, for (f) each key's count over its windows, for (g) each customer's total); a
mismatch fails the run with exit code 1, whatever the speed. After (h) and (h') a second daemon
in the same group restores a new file from the changelog alone, which must hold the same counts;
after (i) both files must hold them all.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiokafka
import aiosqlite

from bench import avro, bigstate, changelog, rebalance, sqlstate_process, workload
from bench import joiner as joiners
from bench.report import Batch, RunResult, ratio, summarize_rounds, table

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_REGISTRY_URL = "http://127.0.0.1:8081/apis/ccompat/v7"
SQL_PROCESSOR = Path(__file__).resolve().parents[1] / "examples" / "customer_totals.sql"
RUN_TIMEOUT_S = 900.0
SETTLE_S = 1.0  # between runs: let the broker finish the previous group's leave
SETTLE_TIMEOUT_S = 60.0  # for two processes to split a topic's partitions between them


@dataclass(frozen=True)
class Options:
    bootstrap: str
    workload: workload.Workload
    big_states: tuple[int, ...]
    layout: bigstate.Layout
    json_path: Path
    workdir: Path
    keep_topic: bool
    max_records: int | None  # None: sqlstate's default, for the ceiling and the daemon alike
    rounds: int
    daemon_args: tuple[str, ...]
    processors: bool  # measure (e), (f) and (g)
    schema_registry_url: str | None  # measure (g') with this registry; None: skip it
    changelog: bool  # measure (h), (h') and (i)
    restore_keys: int  # 0: no restore measurement
    rebalance_hosts: int  # 0: no rolling restart
    lag_interval_s: float


# The restart row the README promises is the one at 10,000,000 keys.
DEFAULT_BIG_STATES = (1_000_000, 10_000_000)


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP),
        help="Kafka bootstrap server (default: $KAFKA_BOOTSTRAP or %(default)s)",
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--keys", type=int, default=10_000, help="distinct keys produced")
    parser.add_argument(
        "--zipf",
        type=float,
        metavar="S",
        help="draw keys from a Zipf distribution with exponent S (default: uniform)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--big-state",
        type=int,
        action="append",
        metavar="KEYS",
        help="distinct keys already in the database for run (d); repeat for"
        " several sizes, 0 to skip (default: 1000000 and 10000000)",
    )
    parser.add_argument(
        "--big-state-layout",
        choices=bigstate.LAYOUTS,
        default="interleaved",
        help="where the existing keys sit in the index (see bench/bigstate.py)",
    )
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument(
        "--workdir", type=Path, help="where the databases go (default: a temporary folder, removed)"
    )
    parser.add_argument("--keep-topic", action="store_true", help="don't delete the topic")
    parser.add_argument(
        "--max-records",
        type=int,
        help="records per batch for the ceiling and sqlstate alike (default: sqlstate's)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure every run this many times, interleaved, and report the"
        " fastest round (default: %(default)s)",
    )
    parser.add_argument(
        "--no-processors",
        dest="processors",
        action="store_false",
        help="skip the runs of the latest, windowed-counts and SQL processors",
    )
    parser.add_argument(
        "--schema-registry-url",
        default=os.environ.get("SCHEMA_REGISTRY_URL", DEFAULT_REGISTRY_URL),
        help="the schema registry of run (g'), Avro values (default: $SCHEMA_REGISTRY_URL or"
        " %(default)s)",
    )
    parser.add_argument(
        "--no-avro",
        dest="avro",
        action="store_false",
        help="skip run (g'), which needs a schema registry",
    )
    parser.add_argument(
        "--daemon-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every `sqlstate run` (repeat)",
    )
    parser.add_argument(
        "--no-changelog",
        dest="changelog",
        action="store_false",
        help="skip the --changelog runs (h), (h') and (i)",
    )
    parser.add_argument(
        "--restore-keys",
        type=int,
        default=1_000_000,
        metavar="KEYS",
        help="time the restore of one changelog partition holding KEYS distinct keys, once"
        " after the rounds; 0 to skip (default: %(default)s)",
    )
    parser.add_argument(
        "--rebalance-hosts",
        type=int,
        default=rebalance.HOSTS,
        metavar="N",
        help="the rolling restart of N --changelog hosts on a topic of"
        f" {rebalance.PARTITIONS} partitions under load, once after the rounds"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--no-rebalance",
        dest="rebalance",
        action="store_false",
        help="skip the rolling restart",
    )
    parser.add_argument(
        "--lag-interval",
        type=float,
        default=changelog.LAG_INTERVAL_S,
        metavar="SECONDS",
        help="how often run (i) reads the files' changelog offsets (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.rebalance and args.rebalance_hosts == 1:
        parser.error("--rebalance-hosts: 0 (skip it) or at least 2, to have a host to move to")
    big_states = tuple(n for n in (args.big_state or DEFAULT_BIG_STATES) if n > 0)
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="sqlstate-bench-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    options = Options(
        bootstrap=args.bootstrap,
        workload=workload.Workload(args.messages, args.partitions, args.keys, args.zipf, args.seed),
        big_states=big_states,
        layout=args.big_state_layout,
        json_path=args.json,
        workdir=workdir,
        keep_topic=args.keep_topic,
        max_records=args.max_records,
        rounds=max(1, args.rounds),
        daemon_args=tuple(args.daemon_arg),
        processors=args.processors,
        schema_registry_url=args.schema_registry_url if args.avro and args.processors else None,
        changelog=args.changelog,
        restore_keys=max(0, args.restore_keys),
        rebalance_hosts=max(0, args.rebalance_hosts) if args.rebalance else 0,
        lag_interval_s=args.lag_interval,
    )
    return options, own_workdir


def machine() -> dict[str, Any]:
    model = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in lscpu.splitlines()
                if line.startswith("Model name")
            ),
            "",
        )
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


_CEILINGS = {
    (False, False): ("ceiling", "(a) bare aiokafka consumer"),
    (True, False): ("ceiling_collector", "(a') bare, sqlstate's GC setting"),
    (True, True): ("ceiling_bare", "(a'') bare records, GC setting"),
}


def run_ceiling(
    options: Options,
    produced: workload.Produced,
    group_id: str,
    *,
    sqlstate_collector: bool,
    bare_records: bool = False,
) -> RunResult:
    launched_at = time.time()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.ceiling",
            "--bootstrap",
            options.bootstrap,
            "--topic",
            produced.topic,
            "--group-id",
            group_id,
            "--messages",
            str(options.workload.messages),
            "--deadline",
            str(RUN_TIMEOUT_S),
            *(["--max-records", str(options.max_records)] if options.max_records else []),
            *(["--collector", "sqlstate"] if sqlstate_collector else []),
            *(["--records", "bare"] if bare_records else []),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the ceiling consumer failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout)
    name, label = _CEILINGS[sqlstate_collector, bare_records]
    return RunResult(
        name=name,
        label=label,
        launched_at=launched_at,
        batches=[Batch(at, records) for at, records in result["batches"]],
        peak_rss_kib=[result["peak_rss_kib"]],
        counts_exact=None,
        c_parser=result["c_parser"],
        cpu_s=[result["cpu_s"]],
    )


def run_sqlstate(
    options: Options,
    produced: workload.Produced,
    name: str,
    label: str,
    database: Path,
    group_id: str,
    processes: int = 1,
    existing: bigstate.BigState | None = None,
    processor: Processor | None = None,
    run_args: tuple[str, ...] = (),
) -> RunResult:
    """``sqlstate run`` until the topic is consumed; with several processes, started together
    (see ``bench/joiner.py``) and measured from the moment they are let go. ``processor``: the
    arguments that choose the state, and the check of that state (default: the counts);
    ``run_args``: more arguments for this run."""
    extra_args = (*(processor.args if processor else ()), *options.daemon_args, *run_args)
    if options.max_records:
        extra_args = ("--max-records", str(options.max_records), *extra_args)
    if processes > 1:
        sqlstate_process.hold_at_end(database, produced.topic, produced.end_offsets)
    daemons = [
        sqlstate_process.launch(
            f"bench-{name}-{i}", options.bootstrap, produced.topic, group_id, database, extra_args
        )
        for i in range(processes)
    ]
    joiner: subprocess.Popen[str] | None = None
    launched_at = min(d.launched_at for d in daemons)
    try:
        if processes > 1:
            sqlstate_process.wait_for_assignment(
                daemons, options.workload.partitions, SETTLE_TIMEOUT_S
            )
            sqlstate_process.release_to_start(database, produced.topic)
            launched_at = time.time()
            joiner = joiners.start(options.bootstrap, f"{produced.topic}-joiner", group_id)
        sqlstate_process.wait_caught_up(
            database, produced.topic, produced.end_offsets, daemons, RUN_TIMEOUT_S
        )
    finally:
        for daemon in daemons:
            sqlstate_process.stop(daemon)
        if joiner is not None:
            joiner.terminate()
            joiner.wait(30)
    if processor is not None:
        exact = processor.exact(database, produced)
    else:
        stored = sqlstate_process.stored_counts(database, produced.topic)
        live = {key: count for key, count in stored.items() if "/" not in key}
        exact = live == produced.counts
    if existing is not None:
        exact = exact and bigstate.existing_keys_intact(existing)
    return sqlstate_process.run_result(name, label, launched_at, daemons, exact)


@dataclass(frozen=True)
class Processor:
    """A run of one processor: its label, its arguments and how to check its state."""

    name: str
    label: str
    args: tuple[str, ...]
    exact: Callable[[Path, workload.Produced], bool]


def _state(database: Path, sql: str, topic: str) -> dict[str, object]:
    return sqlstate_process.stored_state(database, sql, topic)


PROCESSORS = (
    Processor(
        "latest",
        "(e) --processor latest",
        ("--processor", "latest"),
        lambda database, produced: (
            _state(database, "SELECT key, value FROM latest WHERE topic = ?", produced.topic)
            == produced.latest
        ),
    ),
    Processor(
        "windowed_counts",
        "(f) --processor windowed-counts",
        ("--processor", "windowed-counts", "--window", "1m", "--retention", "7d"),
        lambda database, produced: (
            _state(
                database,
                "SELECT key, sum(count) FROM window_counts WHERE topic = ? GROUP BY key",
                produced.topic,
            )
            == produced.counts
        ),
    ),
    Processor(
        "sql",
        "(g) --sql, JSON values",
        ("--sql", str(SQL_PROCESSOR), "--value-format", "json"),
        lambda database, produced: (
            _state(
                database,
                "SELECT customer, sum(amount_cents) FROM customer_amounts WHERE topic = ?"
                " GROUP BY customer",
                produced.topic,
            )
            == produced.amounts
        ),
    ),
)


SQL_AVRO = Processor(
    "sql_avro",
    "(g') --sql, Avro values",
    ("--sql", str(SQL_PROCESSOR), "--value-format", "avro"),
    PROCESSORS[-1].exact,
)


def measure(options: Options) -> dict[str, Any]:
    spec = options.workload
    topic = f"sqlstate-bench-{uuid.uuid4().hex[:8]}"
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    # Other programs' load is what makes these numbers move; say how much there was.
    load_before = os.getloadavg()
    log(f"producing {spec.describe()} into {topic} at {options.bootstrap}")
    asyncio.run(workload.create_topic(options.bootstrap, topic, spec.partitions))
    asyncio.run(workload.create_topic(options.bootstrap, f"{topic}-joiner", 1))
    try:
        produced = asyncio.run(workload.produce(options.bootstrap, topic, spec))
        log(f"produced in {produced.seconds:.1f}s ({spec.messages / produced.seconds:,.0f} msg/s)")
        states = []
        for keys in options.big_states:
            log(f"building a database with {keys:,} existing keys ({options.layout})")
            states.append(
                bigstate.build(
                    options.workdir / f"big-state-{keys}.db",
                    topic,
                    keys,
                    spec.keys,
                    spec.partitions,
                    options.layout,
                )
            )
            log(f"built in {states[-1].seconds:.1f}s")
        extras: Extras = {}
        avro_orders = None
        if options.schema_registry_url is not None:
            log(f"producing the same orders as Avro into {topic}-avro")
            avro_orders = asyncio.run(
                avro.produce(options.bootstrap, options.schema_registry_url, f"{topic}-avro", spec)
            )
        runs = _measure_runs(options, produced, states, extras, avro_orders)
        if options.restore_keys:
            log(f"restore of one changelog partition holding {options.restore_keys:,} keys")
            extras["restore"] = [
                changelog.measure_restore(
                    options.bootstrap, options.restore_keys, options.workdir, _daemon_args(options)
                )
            ]
            log(f"restore: {extras['restore'][0]}")
        if options.rebalance_hosts:
            log(f"rolling restart of {options.rebalance_hosts} --changelog hosts under load")
            folder = options.workdir / "rebalance"
            folder.mkdir(exist_ok=True)
            extras["rebalance"] = [
                rebalance.measure(
                    options.bootstrap,
                    folder,
                    _daemon_args(options),
                    options.rebalance_hosts,
                    keep_topic=options.keep_topic,
                )
            ]
    finally:
        if not options.keep_topic:
            asyncio.run(workload.delete_topic(options.bootstrap, topic))
        asyncio.run(workload.delete_topic(options.bootstrap, f"{topic}-joiner"))
        if options.schema_registry_url is not None:
            asyncio.run(workload.delete_topic(options.bootstrap, f"{topic}-avro"))
    finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    results = _results(options, produced, states, runs, started_at, finished_at)
    results.update(extras)
    results["counts_exact"] = results["counts_exact"] and all(
        figures.get("exact", True) for rounds in extras.values() for figures in rounds
    )
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    return results


#: Figures beside the table's: per kind, one dict per round (or per measurement).
Extras = dict[str, list[dict[str, Any]]]


def _daemon_args(options: Options) -> tuple[str, ...]:
    """``--max-records`` and ``--daemon-arg``s, for the runs that launch daemons themselves."""
    records = ("--max-records", str(options.max_records)) if options.max_records else ()
    return (*records, *options.daemon_args)


def run_changelog(
    options: Options,
    produced: workload.Produced,
    name: str,
    label: str,
    folder: Path,
    group_id: str,
    run_args: tuple[str, ...],
    extras: Extras,
) -> RunResult:
    """(h) or (h'): ``sqlstate run --changelog`` into a new file, then a second daemon in the
    same group restoring another new file from the changelog alone; exact only if both hold
    the counts."""
    args = (*changelog.CHANGELOG_ARGS, *run_args)
    try:
        run = run_sqlstate(
            options, produced, name, label, folder / f"{name}.db", group_id, run_args=args
        )
        restored = changelog.restored_exact(
            options.bootstrap,
            produced,
            group_id,
            folder / f"{name}-restored.db",
            (*_daemon_args(options), *args),
        )
    finally:
        changelog.delete_changelog(options.bootstrap, group_id, produced.topic)
    extras.setdefault(f"{name}_restored", []).append(dataclasses.asdict(restored))
    return dataclasses.replace(run, counts_exact=bool(run.counts_exact and restored.exact))


def _measure_runs(
    options: Options,
    produced: workload.Produced,
    states: list[bigstate.BigState],
    extras: Extras,
    avro_orders: workload.Produced | None,
) -> dict[str, list[RunResult]]:
    """Every run, ``options.rounds`` times, interleaved so that a slow spell of the machine
    spreads over all of them rather than hitting one. Fills ``extras`` with the changelog
    runs' other figures. ``avro_orders``: the topic of run (g'), if it is measured."""
    runs: dict[str, list[RunResult]] = {}
    for round_number in range(1, options.rounds + 1):

        def step(description: str, round_number: int = round_number) -> None:
            if runs:
                time.sleep(SETTLE_S)
            log(f"round {round_number}/{options.rounds}: {description}")

        def keep(run: RunResult) -> None:
            runs.setdefault(run.name, []).append(run)

        folder = options.workdir / f"round-{round_number}"
        folder.mkdir()
        step("(a) bare aiokafka consumer")
        keep(
            run_ceiling(
                options,
                produced,
                f"{produced.topic}-ceiling-{round_number}",
                sqlstate_collector=False,
            )
        )
        step("(a') bare aiokafka consumer, sqlstate's garbage collector setting")
        keep(
            run_ceiling(
                options,
                produced,
                f"{produced.topic}-ceiling-collector-{round_number}",
                sqlstate_collector=True,
            )
        )
        step("(a'') bare aiokafka consumer, the GC setting and bare records, as sqlstate reads")
        keep(
            run_ceiling(
                options,
                produced,
                f"{produced.topic}-ceiling-bare-{round_number}",
                sqlstate_collector=True,
                bare_records=True,
            )
        )

        def group(name: str, round_number: int = round_number) -> str:
            return f"{produced.topic}-{name}-{round_number}"

        step("(b) sqlstate run, fresh database")
        keep(
            run_sqlstate(
                options,
                produced,
                "fresh",
                "(b) sqlstate, fresh db",
                folder / "fresh.db",
                group("fresh"),
            )
        )
        step("(b') sqlstate run, fresh database, no copy of the positions in Kafka")
        keep(
            run_sqlstate(
                options,
                produced,
                "no_kafka_offsets",
                "(b') no Kafka offsets",
                folder / "no-kafka-offsets.db",
                group("no_kafka_offsets"),
                run_args=("--no-commit-offsets-to-kafka",),
            )
        )
        step("(c) two sqlstate run processes, one group, one database")
        keep(
            run_sqlstate(
                options,
                produced,
                "two_processes",
                "(c) 2 processes, 1 db",
                folder / "shared.db",
                group("two_processes"),
                processes=2,
            )
        )
        for state in states:
            unchecked = f"(d') {state.keys:,} keys, no start-up check"
            variants = (
                ("", f"(d) sqlstate, {state.keys:,} keys in db", ()),
                ("_unchecked", unchecked, ("--no-integrity-check",)),
            )
            # One before the other in odd rounds, the other way round in even ones: whatever the
            # first leaves behind in the machine's page cache favours neither.
            for suffix, label, run_args in variants[:: 1 if round_number % 2 else -1]:
                step(label)
                # A copy of its own: every run starts from the same state, beside no file a
                # reader of the run before left (its -wal and -shm).
                database = folder / f"{state.database.stem}{suffix}.db"
                shutil.copyfile(state.database, database)
                keep(
                    run_sqlstate(
                        options,
                        produced,
                        f"big_state_{state.keys}{suffix}",
                        label,
                        database,
                        group(f"big_state_{state.keys}{suffix}"),
                        existing=dataclasses.replace(state, database=database),
                        run_args=run_args,
                    )
                )
                database.unlink()
        for processor in PROCESSORS if options.processors else ():
            step(f"{processor.label}, fresh database")
            keep(
                run_sqlstate(
                    options,
                    produced,
                    processor.name,
                    processor.label,
                    folder / f"{processor.name}.db",
                    group(processor.name),
                    processor=processor,
                )
            )
        if avro_orders is not None and options.schema_registry_url is not None:
            step(f"{SQL_AVRO.label}, fresh database")
            keep(
                run_sqlstate(
                    options,
                    avro_orders,
                    SQL_AVRO.name,
                    SQL_AVRO.label,
                    folder / f"{SQL_AVRO.name}.db",
                    group(SQL_AVRO.name),
                    processor=SQL_AVRO,
                    run_args=("--schema-registry-url", options.schema_registry_url),
                )
            )
        if not options.changelog:
            continue
        step("(h) sqlstate run --changelog, fresh database, then a restore from the changelog")
        keep(
            run_changelog(
                options,
                produced,
                "changelog",
                "(h) --changelog",
                folder,
                group("changelog"),
                (),
                extras,
            )
        )
        step("(h') the same with --standby none")
        keep(
            run_changelog(
                options,
                produced,
                "changelog_no_standby",
                "(h') --changelog --standby none",
                folder,
                group("changelog_no_standby"),
                ("--standby", "none"),
                extras,
            )
        )
        step("(i) two sqlstate run --changelog processes, one group, two databases")
        run, lag = changelog.measure_standby_lag(
            options.bootstrap,
            options.workload,
            group("changelog_two_hosts"),
            folder,
            _daemon_args(options),
            options.lag_interval_s,
        )
        keep(run)
        extras.setdefault("standby_lag", []).append(lag)
    return runs


def _results(
    options: Options,
    produced: workload.Produced,
    states: list[bigstate.BigState],
    runs: dict[str, list[RunResult]],
    started_at: str,
    finished_at: str,
) -> dict[str, Any]:
    summaries = {name: summarize_rounds(rounds) for name, rounds in runs.items()}
    ceiling, fresh = summaries["ceiling"], summaries["fresh"]
    ratios = {
        "a'/a": ratio(summaries["ceiling_collector"], ceiling),
        "b/a": ratio(fresh, ceiling),
        "b/a'": ratio(fresh, summaries["ceiling_collector"]),
        "a''/a": ratio(summaries["ceiling_bare"], ceiling),
        "b/a''": ratio(fresh, summaries["ceiling_bare"]),
        "b'/a": ratio(summaries["no_kafka_offsets"], ceiling),
        "c/b": ratio(summaries["two_processes"], fresh),
    }
    summaries["ceiling_collector"]["ratio"] = ("a'/a", ratios["a'/a"])
    summaries["ceiling_bare"]["ratio"] = ("a''/a", ratios["a''/a"])
    fresh["ratio"] = ("b/a", ratios["b/a"])
    summaries["no_kafka_offsets"]["ratio"] = ("b'/a", ratios["b'/a"])
    summaries["two_processes"]["ratio"] = ("c/b", ratios["c/b"])
    letter = {processor.name: processor.label[1] for processor in PROCESSORS}
    for processor in PROCESSORS:
        if processor.name in summaries:
            name = f"{letter[processor.name]}/a"
            ratios[name] = ratio(summaries[processor.name], ceiling)
            summaries[processor.name]["ratio"] = (name, ratios[name])
            ratios[f"{name}'"] = ratio(summaries[processor.name], summaries["ceiling_collector"])
    for name, of, key in (
        ("sql_avro", "sql", "g'/g"),
        ("changelog", "fresh", "h/b"),
        ("changelog_no_standby", "fresh", "h'/b"),
        ("changelog_two_hosts", "changelog", "i/h"),
    ):
        if name in summaries:
            ratios[key] = ratio(summaries[name], summaries[of])
            summaries[name]["ratio"] = (key, ratios[key])
    restart: dict[str, float | None] = {}
    for state in states:
        summary = summaries[f"big_state_{state.keys}"]
        ratios[f"d/b ({state.keys})"] = ratio(summary, fresh)
        summary["ratio"] = ("d/b", ratios[f"d/b ({state.keys})"])
        unchecked = summaries.get(f"big_state_{state.keys}_unchecked")
        if unchecked is not None:
            ratios[f"d'/b ({state.keys})"] = ratio(unchecked, fresh)
            unchecked["ratio"] = ("d'/b", ratios[f"d'/b ({state.keys})"])
        restart[str(state.keys)] = summary["launch_to_first_batch_s"]
    spec = options.workload
    return {
        "started_at": started_at,
        "finished_at": finished_at,
        "machine": machine(),
        "bootstrap": options.bootstrap,
        "workload": {
            "topic": produced.topic,
            "messages": spec.messages,
            "partitions": spec.partitions,
            "keys": spec.keys,
            "zipf": spec.zipf,
            "seed": spec.seed,
            "value_bytes": workload.VALUE_BYTES,
            "produce_seconds": round(produced.seconds, 2),
            "end_offsets": produced.end_offsets,
        },
        "big_states": [
            {"keys": s.keys, "layout": s.layout, "build_seconds": round(s.seconds, 1)}
            for s in states
        ],
        "daemon_args": list(options.daemon_args),
        "summaries": summaries,
        "ratios": ratios,
        "restart_to_first_commit_s": restart,
        "counts_exact": all(s["counts_exact"] is not False for s in summaries.values()),
        "rounds": options.rounds,
        "runs": {
            name: [
                {
                    "launched_at": run.launched_at,
                    "batches": [[b.at, b.records, b.commit_ms] for b in run.batches],
                }
                for run in rounds
            ]
            for name, rounds in runs.items()
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    options, own_workdir = parse_args(argv)
    try:
        results = measure(options)
    finally:
        if own_workdir:
            shutil.rmtree(options.workdir, ignore_errors=True)
    summaries = list(results["summaries"].values())
    load = results["load_average"]
    print(
        f"sqlstate bench, {results['started_at']} to {results['finished_at']};"
        f" {results['machine']['cpus']} CPUs ({results['machine']['cpu_model']}), load average"
        f" {load['before'][0]:.1f} before, {load['after'][0]:.1f} after;"
        f" {options.workload.describe()}; best of {options.rounds} rounds"
    )
    print(table(summaries))
    print("ratios: " + ", ".join(f"{k} = {v:.3f}" for k, v in results["ratios"].items()))
    for keys, seconds in results["restart_to_first_commit_s"].items():
        print(
            f"start on a database with {int(keys):,} keys: first batch committed after {seconds} s"
        )
    for line in [*changelog.describe(results), *rebalance.describe(results)]:
        print(line)
    options.json_path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {options.json_path}")
    if not results["counts_exact"]:
        print("COUNTS WERE NOT EXACT", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
