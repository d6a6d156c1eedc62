"""A rolling restart under load: what each rebalance costs the partitions that move and those
that stay (``python -m bench.run``'s rebalance row, or ``python -m bench.rebalance`` alone).

A topic of 24 partitions takes keyed records at a steady rate (``--rebalance-rate``, 3,000 a
second by default, keys over every partition) for the whole measurement, from a producer of the
bench's own (``SteadyProducer``). ``--rebalance-hosts`` hosts (3) each run ``sqlstate run
--changelog`` (standbys on: every file holds every partition) in one new group, each on a new
file. Once all 24 partitions are claimed and advancing, each host in turn is stopped (SIGTERM,
then its exit), and once the others have settled, started again on the same file: two
rebalances per host, each window lasting from the SIGTERM or the relaunch until the group has
settled (every partition assigned in one generation, and claimed) and every partition has
advanced again, with a few seconds of steady load between windows.

The stalls come from the changelogs, not from the daemons: after the run every changelog
partition is read with ``read_committed``, and the CreateTime of its position records (one per
committed batch of its input partition) says when the partition advanced; the daemons' logs say
who owned what (``bench/stalls.py``). The row also reports the group's own pause (revoke to
assignment), the claims (assignment to claim), and how many changelog producers were started
and partitions restored in each window (``changelog_producer_started`` is a debug line: the
daemons run at ``-v``). At the end every file must hold exactly the counts produced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import sqlstate_process, stalls, workload
from bench.changelog import CHANGELOG_ARGS
from bench.report import grid
from sqlstate.changelog.records import POSITION_KEY
from sqlstate.changelog.topics import changelog_topic

PARTITIONS = 24
HOSTS = 3
RATE = 3_000  # records a second, over every partition
KEYS = 2_400
STEADY_S = 3.0  # steady load before the first window and after each one
_TICK_S = 0.05
_SETTLE_TIMEOUT_S = 120.0
_CAUGHT_UP_TIMEOUT_S = 300.0
_POLL_S = 0.05


@dataclass
class SteadyProducer:
    """Keyed records into ``topic`` at ``rate`` a second, from a thread of its own, until
    ``stop()``; it knows the count of every key and of every partition it wrote."""

    bootstrap: str
    topic: str
    rate: int
    seed: int = 42
    counts: Counter[str] = field(default_factory=Counter)
    per_partition: Counter[int] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the records sent so far are acknowledged; raise what failed meanwhile
        (once: stopping it again does nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        if self._error is not None:
            raise RuntimeError(f"the steady producer failed: {self._error!r}")

    def _run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as error:  # handed to stop(), in the bench's thread
            self._error = error

    async def _produce(self) -> None:
        # Idempotent: a retried send is never written twice, so the counts stay exact.
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=True, linger_ms=5
        )
        await producer.start()
        rng = random.Random(self.seed)
        names = [workload.key_name(i) for i in range(KEYS)]
        began, sent = time.monotonic(), 0
        try:
            while not self._stop.is_set():
                due = int((time.monotonic() - began) * self.rate) - sent
                futures = []
                for sequence in range(sent, sent + due):
                    name = names[rng.randrange(KEYS)]
                    value = workload.order_value(name, sequence)
                    futures.append(await producer.send(self.topic, value=value, key=name))
                    self.counts[name.decode()] += 1
                sent += due
                for delivered in await asyncio.gather(*futures):
                    self.per_partition[delivered.partition] += 1
                await asyncio.sleep(_TICK_S)
        finally:
            await producer.stop()


@dataclass
class Host:
    """One host: its file, and every ``sqlstate run`` it ran on it, oldest first."""

    index: int
    database: Path
    processes: list[sqlstate_process.DaemonProcess] = field(default_factory=list)
    stopped_at: list[float] = field(default_factory=list)

    @property
    def current(self) -> sqlstate_process.DaemonProcess:
        return self.processes[-1]

    @property
    def running(self) -> bool:
        return len(self.stopped_at) < len(self.processes)

    def members(self) -> list[stalls.Member]:
        return [
            stalls.Member(
                self.index,
                process.launched_at,
                self.stopped_at[n] if n < len(self.stopped_at) else None,
                list(process.entries),
            )
            for n, process in enumerate(self.processes)
        ]


@dataclass(frozen=True)
class Rig:
    """What every step needs: where, and with which arguments, the hosts run."""

    bootstrap: str
    topic: str
    group_id: str
    args: tuple[str, ...]


def _launch(rig: Rig, host: Host) -> None:
    name = f"bench-rebalance-{host.index}-{len(host.processes)}"
    host.processes.append(
        sqlstate_process.launch(
            name, rig.bootstrap, rig.topic, rig.group_id, host.database, rig.args
        )
    )


def _stop(host: Host) -> None:
    sqlstate_process.stop(host.current)
    host.stopped_at.append(time.time())


def _settled(hosts: Sequence[Host], since: float) -> dict[int, int] | None:
    """Partition -> host once the running hosts' latest assignments since ``since`` are of one
    generation, split every partition between them, and are claimed; else None."""
    owners: dict[int, int] = {}
    generations = set()
    for host in hosts:
        assignments = [
            entry
            for entry in host.current.entries
            if entry.get("event") in ("partitions_assigned", "claim_deferred")
            and stalls.epoch(entry) >= since
        ]
        if not assignments:
            return None
        latest = assignments[-1]
        generations.add(latest.get("generation"))
        assigned = stalls.partitions_of(latest, "assigned")
        if latest.get("reason") is not None:  # held: claimed later, by the batch loop
            claimed = {
                partition
                for entry in host.current.events("partitions_claimed")
                if stalls.epoch(entry) >= stalls.epoch(latest)
                for partition in stalls.partitions_of(entry, "assigned")
            }
            if not assigned <= claimed:
                return None
        for partition in assigned:
            if partition in owners:
                return None
            owners[partition] = host.index
    if len(generations) != 1 or sorted(owners) != list(range(PARTITIONS)):
        return None
    return owners


def _check_running(hosts: Sequence[Host]) -> None:
    for host in hosts:
        process = host.current
        if process.popen.poll() is not None:
            raise RuntimeError(
                f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}"
            )


def wait_settled(rig: Rig, hosts: Sequence[Host], since: float) -> float:
    """Until the running hosts have settled after ``since`` and every partition has advanced
    in its owner's file since; return when (epoch seconds)."""
    running = [host for host in hosts if host.running]
    give_up = time.monotonic() + _SETTLE_TIMEOUT_S
    owners = None
    while owners is None:
        _check_running(running)
        if time.monotonic() > give_up:
            raise TimeoutError(f"the group did not settle within {_SETTLE_TIMEOUT_S:g}s")
        time.sleep(_POLL_S)
        owners = _settled(running, since)
    files = {host.index: host.database for host in running}

    def positions() -> dict[int, int]:
        by_host = {i: sqlstate_process.stored_positions(f, rig.topic) for i, f in files.items()}
        return {p: by_host[owner].get(p, -1) for p, owner in owners.items()}

    claimed = positions()
    while True:
        _check_running(running)
        now = positions()
        if all(now[p] > claimed[p] for p in owners):
            return time.time()
        if time.monotonic() > give_up:
            stuck = sorted(p for p in owners if now[p] <= claimed[p])
            raise TimeoutError(f"partitions {stuck} did not advance after the rebalance")
        time.sleep(_POLL_S)


def rolling_restart(rig: Rig, hosts: Sequence[Host]) -> list[stalls.Window]:
    """Stop and start again each host in turn; the rebalance windows."""
    windows = []
    for host in hosts:
        began = time.time()
        _stop(host)
        windows.append(stalls.Window("leave", host.index, began, wait_settled(rig, hosts, began)))
        time.sleep(STEADY_S)
        _launch(rig, host)
        began = host.current.launched_at
        windows.append(stalls.Window("join", host.index, began, wait_settled(rig, hosts, began)))
        time.sleep(STEADY_S)
    return windows


async def read_positions(bootstrap: str, changelog: str) -> dict[int, list[tuple[float, int]]]:
    """Per changelog partition, the (CreateTime, next_offset) of its committed position records,
    in log order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(changelog, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: dict[int, list[tuple[float, int]]] = {p: [] for p in range(PARTITIONS)}
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for record in records:
                    if record.key == POSITION_KEY and record.value is not None:
                        next_offset = json.loads(record.value)["next_offset"]
                        found[tp.partition].append((record.timestamp / 1000, next_offset))
        return found
    finally:
        await consumer.stop()


def measure(
    bootstrap: str,
    workdir: Path,
    daemon_args: tuple[str, ...] = (),
    hosts: int = HOSTS,
    rate: int = RATE,
    keep_topic: bool = False,
) -> dict[str, Any]:
    """The rolling restart of ``hosts`` hosts, and its figures (``exact``: every file's counts
    equal what was produced)."""
    topic = f"sqlstate-bench-rebalance-{uuid.uuid4().hex[:8]}"
    rig = Rig(bootstrap, topic, f"{topic}-group", (*CHANGELOG_ARGS, *daemon_args))
    changelog = changelog_topic(rig.group_id, topic)
    asyncio.run(workload.create_topic(bootstrap, topic, PARTITIONS))
    producer = SteadyProducer(bootstrap, topic, rate)
    members = [Host(i, workdir / f"rebalance-{i}.db") for i in range(hosts)]
    try:
        producer.start()
        for host in members:
            _launch(rig, host)
        settled = wait_settled(rig, members, min(h.current.launched_at for h in members))
        time.sleep(STEADY_S)
        windows = rolling_restart(rig, members)
        load_ended = time.time()
        producer.stop()
        ends = asyncio.run(workload.end_offsets(bootstrap, topic, PARTITIONS))
        produced_exactly = ends == {p: producer.per_partition[p] for p in range(PARTITIONS)}
        running = [host.current for host in members]
        for host in members:
            sqlstate_process.wait_caught_up(
                host.database, topic, ends, running, _CAUGHT_UP_TIMEOUT_S
            )
        for host in members:
            _stop(host)
        positions = asyncio.run(read_positions(bootstrap, changelog))
        exact = produced_exactly and all(
            sqlstate_process.stored_counts(host.database, topic) == dict(producer.counts)
            for host in members
        )
    finally:
        producer.stop()
        for host in members:
            if host.running:
                host.current.popen.kill()
                host.current.popen.wait()
        if not keep_topic:
            asyncio.run(_delete([topic, changelog], bootstrap))
        for host in members:
            for path in workdir.glob(f"{host.database.name}*"):  # with its -wal and -shm
                path.unlink()
    advanced = {p: stalls.advances(series) for p, series in positions.items()}
    logs = [member for host in members for member in host.members()]
    per_window = [stalls.window_figures(window, logs, advanced) for window in windows]
    steady = zip(
        [settled, *(window.end for window in windows)],
        [*(window.start for window in windows), load_ended],
        strict=True,
    )
    return {
        "hosts": hosts,
        "partitions": PARTITIONS,
        "rate_per_s": rate,
        "records": sum(ends.values()),
        "exact": exact,
        "rebalances": per_window,
        "all": stalls.overall(per_window),
        "steady": stalls.steady_gaps(advanced, steady),
    }


async def _delete(topics: Sequence[str], bootstrap: str) -> None:
    for topic in topics:
        try:
            await workload.delete_topic(bootstrap, topic)
        except Exception as error:  # a run that failed early made no changelog
            print(f"could not delete {topic}: {error!r}", file=sys.stderr)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _stalls(spread: dict[str, Any]) -> list[str]:
    return [
        str(spread["partitions"]),
        " / ".join(_cell(spread[k]) for k in ("p50_s", "p99_s", "max_s")),
    ]


def describe(results: dict[str, Any]) -> list[str]:
    """The lines printed for the rebalance row(s) of ``results``."""
    lines = []
    for figures in results.get("rebalance", []):
        rows = [
            [
                row["rebalance"],
                _cell(row.get("window_s")),
                *_stalls(row["moved"]),
                *_stalls(row["stayed"]),
                _cell(row["group_pause_s"]),
                _cell(row["claim_s"]),
                str(row["producer_starts"]),
                str(row["restores"]),
            ]
            for row in [*figures["rebalances"], figures["all"]]
        ]
        every, steady = figures["all"], figures["steady"]
        lines += [
            f"rolling restart of {figures['hosts']} hosts, {figures['partitions']} partitions,"
            f" {figures['rate_per_s']:,} records/s (--changelog, standbys on): stall of each"
            " partition per rebalance, in seconds (from the changelogs' position records)",
            grid(
                [
                    "rebalance",
                    "window s",
                    "moved",
                    "p50 / p99 / max s",
                    "stayed",
                    "p50 / p99 / max s",
                    "group pause s",
                    "claim s",
                    "producer starts",
                    "restores",
                ],
                rows,
            ),
            f"between rebalances a partition advanced every p50 {_cell(steady['p50_s'])} s,"
            f" p99 {_cell(steady['p99_s'])} s, max {_cell(steady['max_s'])} s (the floor of a"
            " stall); a stall of a partition that stayed is its wait from its last batch to the"
            " revoke, the group's pause, its claim and its first batch",
            f"checked against the daemons' logs: {every['log_consistent']} of"
            f" {every['log_checked']} partitions advanced neither between their release and"
            f" their claim; counts {'exact' if figures['exact'] else 'NOT EXACT'} in every file"
            f" ({figures['records']:,} records)",
        ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rebalance", description=__doc__)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--hosts", type=int, default=HOSTS)
    parser.add_argument("--rate", type=int, default=RATE, help="records a second")
    parser.add_argument("--json", type=Path, default=Path("bench-rebalance.json"))
    parser.add_argument(
        "--workdir", type=Path, help="where the files go (default: a temporary one)"
    )
    parser.add_argument("--keep-topic", action="store_true")
    parser.add_argument("--daemon-arg", action="append", default=[], metavar="ARG")
    args = parser.parse_args(argv)
    if args.hosts < 2:
        parser.error("--hosts: at least 2, to have a host to move to")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sqlstate-bench-rebalance-"))
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        figures = measure(
            args.bootstrap, workdir, tuple(args.daemon_arg), args.hosts, args.rate, args.keep_topic
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results = {
        "started_at": started,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "rebalance": [figures],
    }
    print(f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    for line in describe(results):
        print(line)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0 if figures["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
