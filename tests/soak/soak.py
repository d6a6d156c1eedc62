"""The fault soak: steady traffic, three daemons on one database, a supervisor that breaks things.

    python -m tests.soak --duration 600          (make soak DURATION=600; make soak-short)
    python -m tests.soak --hosts 3 --duration 120             (make soak-multihost)

A producer writes at a steady rate into a topic of several partitions (plain records, plus small
transactions of which every third is aborted, so read_committed matters). Three ``sqlstate run``
processes in one group share one database file. For ``--duration`` seconds a supervisor, at random
intervals, kill -9s a random daemon and restarts it, or freezes one with SIGSTOP past the session
timeout (a zombie) and resumes it; a few times it kill -9s the broker and restarts it on its data
(sometimes restarting a daemon while the broker is down).
Any daemon that exits by itself is restarted and its exit code reported.

With ``--hosts N`` it is the multi-host soak instead (docs/scaling.md): N daemons each with a
database file of its own under ``--changelog`` (standbys on), as N hosts would run, with the same
faults; every file must end with the complete state. Each daemon also runs a second processor,
``slot_holders.sql`` (a table with a second UNIQUE index, written with INSERT OR REPLACE), checked
by the oracle too. A second topic of plain records only (contiguous offsets) is read by the same
daemons, and a snapshot checker reads every file all along: no committed snapshot may hold half a
batch (``tests/support/snapshot_check.py``). Unless ``--no-netns``, the broker and each host run
in a network namespace of their own (``tests/support/netns.py``), and the supervisor also cuts a
host off from the broker past the session timeout while its daemon keeps running, then heals the
link (a network partition: the true zombie). That needs root and ``ip netns``; without them the soak
fails with a clear message (run it with ``--no-netns`` there).

Then it drains: every daemon resumed and running, the producers stopped, the stored positions (in
every file) at the end of the log, and applies the exactly-once oracle
(``tests/support/oracle.py``) to each file and topic. It prints one summary and exits 1 unless
lost = 0, duplicated = 0, no snapshot held half a batch and ``quick_check`` is ok everywhere.

Bounded in time (duration plus a bounded drain) and traffic (``--rate``); loopback only, or the
namespaces' own subnet. It needs the broker started by the test harness (``tools.kafka_broker``),
which it may kill and restart; with namespaces it starts its own inside the broker's namespace
(on KAFKA_BOOTSTRAP's port) and removes it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.soak.slots import SQL_FILE, SlotHolders
from tests.support.broker import AsyncBrokerControl
from tests.support.daemon import Daemon, stored_positions
from tests.support.hosts import host_database
from tests.support.kafka import create_topic, log_end_offsets, produce_transaction
from tests.support.netns import NamespaceBroker, NetnsUnavailable, Network
from tests.support.oracle import COUNTS, Counts, Model, Verdict, check
from tests.support.snapshot_check import SnapshotChecker
from tests.support.workload import STEADY_KEYS, SteadyTraffic
from tools.kafka_broker import DEFAULT_BOOTSTRAP, BrokerControl
from tools.kafka_broker.protocol import parse_bootstrap

logger = logging.getLogger("soak")

ROOT = Path(__file__).resolve().parents[2]
SESSION_TIMEOUT_S = 6.0
DRAIN_TIMEOUT_S = 240.0


@dataclass
class Options:
    duration: float = 600.0
    partitions: int = 6
    daemons: int = 3
    hosts: int = 0  # > 0: the multi-host soak, one daemon and file per host (--daemons unused)
    rate: float = 200.0  # plain records per second
    interval: float = 8.0  # mean seconds between daemon faults
    broker_bounces: int | None = None  # default: one per 200 s, at least one
    seed: int | None = None
    workdir: Path | None = None
    netns: bool | None = None  # network namespaces and partitions; default: with --hosts
    slot_holders: bool = True  # the multi-host soak's second processor (slot_holders.sql)


# The faults the supervisor picks from, and how often (relative) once each has come once. Kills
# weigh more: a zombie or a partition holds the supervisor 10 to 15 s, and a 30-minute run must
# give at least 40 kills beside 10 of each.
FAULTS = {"kill": 5, "zombie": 2, "partition": 2}


@dataclass
class Tally:
    produced: int = 0
    send_failures: int = 0
    tx_committed: int = 0
    tx_aborted: int = 0
    tx_failed: int = 0
    kills: int = 0
    pauses: int = 0
    partitions: int = 0
    broker_bounces: int = 0
    exits: dict[int, int] = field(default_factory=dict)  # exit code -> times, not our kills


@dataclass
class Summary:
    options: Options
    topic: str
    workdir: Path
    tally: Tally
    rebalances: int
    fenced: int
    resets: int
    restores: int
    rollbacks: int
    verdicts: dict[str, Verdict]  # "<database file name> <topic>" -> the oracle's verdict
    checks: int  # verdicts due: every file, every topic
    drained: bool
    snapshots: SnapshotChecker | None = None  # the multi-host soak's

    @property
    def lost(self) -> int:
        return sum(v.lost_total for v in self.verdicts.values())

    @property
    def duplicated(self) -> int:
        return sum(v.duplicated_total for v in self.verdicts.values())

    @property
    def ok(self) -> bool:
        return (
            self.drained
            and len(self.verdicts) == self.checks
            and all(v.ok for v in self.verdicts.values())
            and (self.snapshots is None or not self.snapshots.violations)
        )

    def text(self) -> str:
        t = self.tally
        options = self.options
        processes = (
            f"{options.hosts} hosts (a daemon and a file each, --changelog)"
            if options.hosts
            else f"{options.daemons} daemons"
        )
        exits = ", ".join(f"code {c}: {n}" for c, n in sorted(t.exits.items())) or "none"
        lines = [
            "soak summary",
            f"  duration:            {self.options.duration:.0f} s; topic {self.topic}"
            f" ({self.options.partitions} partitions), {processes},"
            f" workdir {self.workdir}",
            f"  messages produced:   {t.produced} acknowledged plain records"
            f" ({t.send_failures} sends failed during bounces); transactions:"
            f" {t.tx_committed} committed, {t.tx_aborted} aborted, {t.tx_failed} failed",
            f"  kills:               {t.kills} (daemon kill -9, then restart)",
            f"  zombies:             {t.pauses} (SIGSTOP past the session timeout, then SIGCONT)",
            f"  network partitions:  {t.partitions} (a host cut off from the broker past the"
            " session timeout, its daemon running, then healed)"
            + ("" if options.netns else "; none: --no-netns"),
            f"  broker kills:        {t.broker_bounces} (broker kill -9, then restart)",
            f"  daemon exits:        {exits} (restarted)",
            f"  rebalances seen:     {self.rebalances}",
            f"  fenced batches:      {self.fenced}",
            f"  out-of-range resets: {self.resets} (a partition's state discarded and rebuilt)",
        ]
        if options.hosts:
            lines += [
                f"  changelog restores:  {self.restores} (a partition restored before its claim)",
                f"  changelog rollbacks: {self.rollbacks} (a batch whose changelog transaction"
                " failed, rolled back)",
            ]
        if self.snapshots is not None:
            lines += [
                f"  snapshots checked:   {self.snapshots.checked} (committed snapshots of every"
                " file, read while the soak ran)",
                f"  half-batch snapshots: {len(self.snapshots.violations)}",
                *(f"    {violation}" for violation in self.snapshots.violations[:10]),
            ]
        lines += [
            f"  drained:             {'yes' if self.drained else 'NO'}",
            f"  lost:                {self.lost} (every file, every topic)",
            f"  duplicated:          {self.duplicated}",
        ]
        for name, v in self.verdicts.items():
            lines += [
                f"  {name}:",
                f"    records counted:   {v.read_back} (read_committed, below stored positions)",
                f"    lost = {v.lost_total}",
                f"    duplicated = {v.duplicated_total}",
                f"    quick_check:       {v.quick_check}",
            ]
            if not v.ok:
                lines.append(f"    details: {v.describe()}")
        lines.append(f"  result:              {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


class Soak:
    def __init__(
        self,
        options: Options,
        control: AsyncBrokerControl,
        workdir: Path,
        network: Network | None = None,
    ) -> None:
        self.options = options
        self.network = network
        self.control = control
        self.bootstrap = control.bootstrap
        self.workdir = workdir
        # One file shared by every daemon, or one per host.
        self.databases = (
            [host_database(workdir, i) for i in range(options.hosts)]
            if options.hosts
            else [workdir / "state.db"]
        )
        self.rng = random.Random(options.seed)
        self.tally = Tally()
        self.topic = f"soak-{uuid.uuid4().hex[:8]}"
        self.group_id = f"soak-{uuid.uuid4().hex[:8]}"
        self.daemons: list[Daemon] = []
        self.paused: set[int] = set()
        self.traffic = SteadyTraffic(
            self.bootstrap, self.topic, options.partitions, options.rate, seed=self.rng.random()
        )
        # Stops the plain records and the transactions alike.
        self.stop_traffic = self.traffic.stop
        self.broker_down = asyncio.Event()
        # The multi-host soak's topic of plain records only, whose offsets are contiguous from
        # 0, so that the counts of every committed snapshot must add up to its positions.
        self.plain: SteadyTraffic | None = None
        self.topics = [self.topic]
        self.models: tuple[Model, ...] = tuple(COUNTS)
        if options.hosts:
            self.plain = SteadyTraffic(
                self.bootstrap,
                f"{self.topic}-plain",
                options.partitions,
                options.rate / 2,
                seed=self.rng.random(),
            )
            self.plain.stop = self.stop_traffic
            self.topics.append(self.plain.topic)
            self.models = (Counts(), SlotHolders()) if options.slot_holders else (Counts(),)

    # ---- traffic ------------------------------------------------------------------------------

    async def transactions(self) -> None:
        """A small transaction every 2 s; every third one aborted.

        One transactional id throughout: a transaction left open by a bounce is aborted when the
        next producer with that id starts, so the last stable offset never stays stuck.
        """
        transactional_id = f"{self.topic}-tx"
        number = 0
        while not self.stop_traffic.is_set():
            number += 1
            commit = number % 3 != 0
            messages = [
                (self.rng.choice(STEADY_KEYS), b"tx", self.rng.randrange(self.options.partitions))
                for _ in range(self.rng.randrange(1, 20))
            ]
            try:
                await produce_transaction(
                    self.bootstrap,
                    self.topic,
                    messages,
                    commit=commit,
                    transactional_id=transactional_id,
                    timeout=20,
                )
                if commit:
                    self.tally.tx_committed += 1
                else:
                    self.tally.tx_aborted += 1
            except Exception as error:
                self.tally.tx_failed += 1
                logger.info("transaction %d: %r", number, error)
            await asyncio.sleep(2)
        # Close any transaction a failure left open, so that the log can be read to its end.
        for _ in range(10):
            try:
                await produce_transaction(
                    self.bootstrap,
                    self.topic,
                    [(b"last", b"tx", 0)],
                    transactional_id=transactional_id,
                    timeout=30,
                )
                self.tally.tx_committed += 1
                return
            except Exception as error:
                logger.info("closing transaction: %r", error)
                await asyncio.sleep(2)

    # ---- daemons ------------------------------------------------------------------------------

    def new_daemon(self, index: int) -> Daemon:
        if self.options.hosts:
            database, name = self.databases[index], f"host-{index}"
            mode = ["--changelog"]
            if self.options.slot_holders:
                mode += ["--processor", "counts", "--sql", str(SQL_FILE)]
        else:
            database, name, mode = self.databases[0], f"daemon-{index}", []
        daemon = Daemon(
            self.bootstrap,
            self.topics,
            self.group_id,
            database,
            *mode,
            "--max-records",
            "500",
            "--max-poll-interval-ms",
            "30000",
            "--connect-timeout",
            "90",
            "--client-id",
            f"soak-{index}",
            name=name,
        )
        if self.network is not None:
            daemon.args = self.network.hosts[index].command(daemon.args)
        return daemon

    async def kill_daemon(self, index: int) -> None:
        daemon = self.daemons[index]
        logger.info("kill -9 %s", daemon.log_path.stem)
        await daemon.kill()
        self.tally.kills += 1
        await asyncio.sleep(self.rng.uniform(0.5, 3))
        daemon.start()

    async def pause_daemon(self, index: int) -> None:
        daemon = self.daemons[index]
        assert daemon.process is not None
        logger.info("SIGSTOP %s", daemon.log_path.stem)
        daemon.process.send_signal(signal.SIGSTOP)
        self.paused.add(index)
        self.tally.pauses += 1
        await asyncio.sleep(SESSION_TIMEOUT_S + self.rng.uniform(2, 5))
        daemon.process.send_signal(signal.SIGCONT)
        self.paused.discard(index)
        logger.info("SIGCONT %s", daemon.log_path.stem)

    async def partition_host(self, index: int) -> None:
        """Cut host ``index`` off from the broker past the session timeout while its daemon
        runs on (its group membership expires, others claim its partitions and fence its
        producers), then heal the link."""
        assert self.network is not None
        name = self.daemons[index].log_path.stem
        logger.info("cut %s off the network", name)
        await asyncio.to_thread(self.network.partition, index)
        self.tally.partitions += 1
        await asyncio.sleep(SESSION_TIMEOUT_S + self.rng.uniform(3, 8))
        await asyncio.to_thread(self.network.heal, index)
        logger.info("healed %s's link", name)

    async def bounce_broker(self) -> None:
        logger.info("kill -9 the broker")
        await self.control.kill()
        self.tally.broker_bounces += 1
        if self.rng.random() < 0.5:
            # A daemon restarted while the broker is down must wait for it (--connect-timeout).
            await self.kill_daemon(self.rng.randrange(len(self.daemons)))
        await asyncio.sleep(self.rng.uniform(2, 8))
        await self.control.start()
        logger.info("broker restarted")

    def restart_exited(self) -> None:
        """A daemon that died by itself (not one we killed) is counted and started again."""
        for daemon in self.daemons:
            assert daemon.process is not None
            code = daemon.process.poll()
            if code is not None:
                logger.info("%s exited with code %d; restarting", daemon.log_path.name, code)
                self.tally.exits[code] = self.tally.exits.get(code, 0) + 1
                daemon.start()

    async def warm_up(self, timeout: float = 90.0) -> None:
        """Faults start once every daemon has joined and been given partitions."""
        deadline = time.monotonic() + timeout
        while not all("assigned partitions: " in d.log() for d in self.daemons):
            if time.monotonic() > deadline:
                raise RuntimeError("the daemons did not all join the group in time")
            self.restart_exited()
            await asyncio.sleep(0.5)

    async def supervise(self) -> None:
        options = self.options
        await self.warm_up()
        bounces = options.broker_bounces
        if bounces is None:
            bounces = max(1, int(options.duration // 200))
        start = time.monotonic()
        bounce_at = [start + options.duration * (i + 1) / (bounces + 1) for i in range(bounces)]
        end = start + options.duration
        kinds = [kind for kind in FAULTS if kind != "partition" or self.network is not None]
        # Each kind of fault once first (in a random order, before any broker kill), so that a
        # short run such as CI's has them all.
        first = self.rng.sample(kinds, len(kinds))
        while time.monotonic() < end:
            await asyncio.sleep(
                min(self.rng.expovariate(1 / options.interval), max(0.0, end - time.monotonic()))
            )
            self.restart_exited()
            if time.monotonic() >= end:
                break
            if bounce_at and time.monotonic() >= bounce_at[0] and not first:
                bounce_at.pop(0)
                await self.bounce_broker()
                continue
            kind = first.pop() if first else self.rng.choices(kinds, [FAULTS[k] for k in kinds])[0]
            index = self.rng.randrange(len(self.daemons))
            if kind == "kill":
                await self.kill_daemon(index)
            elif kind == "zombie":
                await self.pause_daemon(index)
            else:
                await self.partition_host(index)

    # ---- the run ------------------------------------------------------------------------------

    async def drain(self) -> bool:
        """Every daemon running; wait until the stored positions, in every file, reach the end of
        the log (the traffic has stopped)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        ends: dict[tuple[str, int], int] = {}
        while time.monotonic() < deadline:
            self.restart_exited()
            with contextlib.suppress(Exception):
                ends = {
                    (topic, partition): end
                    for topic in self.topics
                    for partition, end in (
                        await log_end_offsets(
                            self.bootstrap, topic, isolation_level="read_committed"
                        )
                    ).items()
                }
                if all(self.reached(database, ends) for database in self.databases):
                    return True
            await asyncio.sleep(1)
        logger.error(
            "not drained in %.0f s: ends %s, positions %s",
            DRAIN_TIMEOUT_S,
            ends,
            {database.name: stored_positions(database) for database in self.databases},
        )
        return False

    def reached(self, database: Path, ends: dict[tuple[str, int], int]) -> bool:
        positions = stored_positions(database)
        return all(positions.get(tp, -1) >= end for tp, end in ends.items())

    def count_in_logs(self, *patterns: str) -> int:
        pattern = re.compile("|".join(patterns))
        return sum(len(pattern.findall(d.log())) for d in self.daemons)

    async def run(self) -> Summary:
        for topic in self.topics:
            await create_topic(self.bootstrap, topic, self.options.partitions)
        count = self.options.hosts or self.options.daemons
        self.daemons = [self.new_daemon(i).start() for i in range(count)]
        traffic = [
            asyncio.create_task(self.traffic.run()),
            asyncio.create_task(self.transactions()),
        ]
        if self.plain is not None:
            traffic.append(asyncio.create_task(self.plain.run()))
        verdicts: dict[str, Verdict] = {}
        drained = False
        snapshots = (
            SnapshotChecker(self.databases, self.topics[1:]) if self.plain is not None else None
        )
        try:
            async with snapshots or contextlib.nullcontext():
                await self.supervise()
                logger.info("faults done; draining")
                await self.heal()
                self.stop_traffic.set()
                await asyncio.wait_for(asyncio.gather(*traffic), 120)
                drained = await self.drain()
            for database in self.databases:
                for topic in self.topics:
                    verdicts[f"{database.name} {topic}"] = await check(
                        self.bootstrap, database, topic, self.models
                    )
        finally:
            self.stop_traffic.set()
            for task in traffic:
                task.cancel()
            await self.heal()
            for daemon in self.daemons:
                await daemon.stop_quietly()
        self.tally.produced = self.traffic.produced
        self.tally.send_failures = self.traffic.send_failures
        if self.plain is not None:
            self.tally.produced += self.plain.produced
            self.tally.send_failures += self.plain.send_failures
        return Summary(
            options=self.options,
            topic=self.topic,
            workdir=self.workdir,
            tally=self.tally,
            rebalances=self.count_in_logs(r"assigned partitions: \S"),
            fenced=self.count_in_logs(r"fenced on ", r"while we expected \d+; dropped"),
            resets=self.count_in_logs(r"discarded the partition's state"),
            restores=self.count_in_logs(r"restored \S+ from its changelog"),
            rollbacks=self.count_in_logs(r"a batch rolled back"),
            verdicts=verdicts,
            checks=len(self.databases) * len(self.topics),
            drained=drained,
            snapshots=snapshots,
        )

    async def heal(self) -> None:
        """Every daemon resumed and every host back on the network."""
        for daemon in self.daemons:
            if daemon.process is not None:
                daemon.process.send_signal(signal.SIGCONT)
        if self.network is not None:
            await asyncio.to_thread(self.network.heal_all)


async def run_soak(options: Options, control: AsyncBrokerControl | None) -> Summary:
    """The soak on ``control``'s broker; with ``options.netns``, on a network of namespaces and
    a broker of its own inside it (``control`` unused), both removed at the end."""
    workdir = options.workdir or ROOT / ".run" / "soak" / datetime.now(UTC).strftime(
        "%Y%m%dT%H%M%S"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    if not options.netns:
        assert control is not None
        return await Soak(options, control, workdir).run()
    network = await asyncio.to_thread(Network.create, options.hosts)
    try:
        # The broker's own namespace: KAFKA_BOOTSTRAP's port is free there whoever uses it here.
        _, port = parse_bootstrap(os.environ.get("KAFKA_BOOTSTRAP") or DEFAULT_BOOTSTRAP)
        broker = NamespaceBroker(network.broker, port, workdir / "kafka")
        logger.info("network namespaces made; starting the broker at %s", broker.bootstrap)
        await broker.up()
        try:
            return await Soak(options, broker, workdir, network).run()
        finally:
            await broker.down()
    finally:
        await asyncio.to_thread(network.remove)


async def run_until_terminated(options: Options, control: AsyncBrokerControl | None) -> Summary:
    """``run_soak`` for the command line: SIGTERM (a CI timeout, `make` interrupted) unwinds it
    like Ctrl-C, so the daemons are stopped and the broker and the namespaces removed."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_soak(options, control)


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of faults")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--daemons", type=int, default=3, help="daemons sharing one file")
    parser.add_argument(
        "--hosts",
        type=int,
        default=0,
        help="the multi-host soak: this many daemons, each with a file of its own, --changelog",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="plain records per second")
    parser.add_argument(
        "--interval", type=float, default=8.0, help="mean seconds between daemon faults"
    )
    parser.add_argument("--broker-bounces", type=int, help="default: one per 200 s, at least 1")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workdir", type=Path, help="default: .run/soak/<time>")
    parser.add_argument(
        "--netns",
        action=argparse.BooleanOptionalAction,
        help="the broker and each host in a network namespace of its own, and network"
        " partitions among the faults (needs root and `ip netns`); default: on with --hosts",
    )
    parser.add_argument(
        "--slot-holders",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --hosts, also run slot_holders.sql (a second UNIQUE index, INSERT OR REPLACE)",
    )
    args = parser.parse_args(argv)
    options = Options(**vars(args))
    if options.netns is None:
        options.netns = options.hosts > 0
    if options.netns and not options.hosts:
        parser.error("--netns needs --hosts: partitions cut a host off, not a shared file")
    return options


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s soak: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    options = parse(argv)
    control = None
    if not options.netns:
        control = BrokerControl(os.environ.get("KAFKA_BOOTSTRAP") or None)
        if not control.owned():
            print(
                f"soak: the broker at {control.bootstrap} was not started by tools/kafka_broker,"
                " so it cannot be killed and restarted; run `make soak`",
                file=sys.stderr,
            )
            return 2
    try:
        summary = asyncio.run(
            run_until_terminated(
                options, AsyncBrokerControl(control) if control is not None else None
            )
        )
    except NetnsUnavailable as error:
        print(f"soak: {error}", file=sys.stderr)
        return 2
    print(summary.text())
    return 0 if summary.ok else 1
