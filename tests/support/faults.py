"""Helpers of the fault tests: traffic, the faulty daemon as a subprocess, waits on processes.

Every wait is bounded; a timeout fails with the daemons' logs.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaProducer

from tests.support.daemon import Daemon, stored_positions, wait_for_positions
from tests.support.kafka import MessageLike, delete_records, log_end_offsets
from tests.support.kafka import produce as produce_messages
from tests.support.oracle import COUNTS, Model, Verdict, assert_exactly_once

ROOT = Path(__file__).resolve().parents[2]
# Short group timings so that a paused or dead member is noticed in seconds, not minutes.
GROUP_TIMING = (
    "--session-timeout-ms",
    "6000",
    "--max-poll-interval-ms",
    "20000",
    "--max-records",
    "50",
)


def daemon(
    bootstrap: str,
    topic: str,
    group_id: str,
    database: Path,
    *extra_args: str,
    name: str = "daemon",
    fault: str | None = None,
    at: int = 1,
    action: str = "kill",
    seconds: float = 8.0,
    wrapper_args: Sequence[str] = (),
) -> Daemon:
    """A ``sqlstate run`` through the fault wrapper (a plain run when ``fault`` is None)."""
    entry = ["-m", "tests.support.faulty_daemon", *wrapper_args]
    if fault is not None:
        entry += ["--fault", fault, "--at", str(at), "--action", action, "--seconds", str(seconds)]
    entry.append("--")
    # The wrapper lives in tests/, which is not installed: run it from the repository root.
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return Daemon(
        bootstrap,
        [topic],
        group_id,
        database,
        *GROUP_TIMING,
        *extra_args,
        name=name,
        entry=entry,
        env={"PYTHONPATH": pythonpath},
    )


async def produce(
    bootstrap: str, topic: str, count: int, partitions: int, keys: int = 40, seed: int = 0
) -> None:
    """``count`` records spread over the partitions, keys drawn from a small pool (and None)."""
    rng = random.Random(seed)
    pool: list[bytes | None] = [None, b"\xff\xfe"]
    pool += [f"k{i}".encode() for i in range(keys)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, b"v", key=rng.choice(pool), partition=i % partitions)
            for i in range(count)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def wait_for_log(daemon: Daemon, text: str, timeout: float = 60.0) -> None:
    """Wait until ``text`` appears in the daemon's log."""
    deadline = time.monotonic() + timeout
    while text not in daemon.log():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{text!r} not in {daemon.log_path.name} after {timeout}s:\n{daemon.log()[-4000:]}"
            )
        await asyncio.sleep(0.1)


def process_state(pid: int) -> str:
    """The one-letter state of a process from /proc (T: stopped, Z: dead, "": gone)."""
    return process_state_of(f"/proc/{pid}/stat")


def process_state_of(stat_path: str) -> str:
    """The one-letter state in a /proc stat file (of a process or of one of its threads)."""
    try:
        stat = Path(stat_path).read_text()
    except OSError:
        return ""
    return stat[stat.rfind(")") + 2 :].split()[0]


def threads_stopped(pid: int) -> bool:
    """Whether every thread of the process is stopped: kill(SIGSTOP) returns before the signal
    has stopped a thread running on another core (a commit could still end meanwhile)."""
    try:
        tasks = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    return all(process_state_of(f"/proc/{pid}/task/{task}/stat") in ("T", "") for task in tasks)


async def wait_stopped(daemon: Daemon, timeout: float = 60.0) -> None:
    """Wait until the daemon has stopped (SIGSTOP, its own or sent to it), every thread."""
    deadline = time.monotonic() + timeout
    while process_state(daemon.pid) != "T" or not threads_stopped(daemon.pid):
        if not daemon.running() or time.monotonic() > deadline:
            raise AssertionError(
                f"{daemon.log_path.name} did not stop itself:\n{daemon.log()[-4000:]}"
            )
        await asyncio.sleep(0.05)


async def caught_up(
    bootstrap: str,
    database: Path,
    topic: str,
    daemons: Sequence[Daemon],
    timeout: float = 90.0,
    models: Sequence[Model] = COUNTS,
) -> Verdict:
    """Wait until every partition's position reaches the end of the log, then apply the oracle
    (to the counts, or to each processor's state ``models`` describe)."""
    ends = await log_end_offsets(bootstrap, topic, isolation_level="read_committed")
    await wait_for_positions(
        database, {(topic, p): end for p, end in ends.items()}, timeout, daemons
    )
    return await assert_exactly_once(bootstrap, database, topic, models)


async def out_of_range_while_running(
    bootstrap: str, topic: str, database: Path, daemon: Daemon, messages: Sequence[MessageLike]
) -> int:
    """Make the running daemon's next fetch of partition 0 out of range; the offset cut at.

    The daemon is frozen for a moment, shorter than its session timeout, while ``messages``
    arrive (some to partition 0) and the log of partition 0 loses everything up to 50 records
    past its stored position.
    """
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        # The broker answers the fetch the daemon left waiting (fetch_max_wait_ms, 500 ms) with
        # no records before any arrive: its next fetch starts from its position.
        await asyncio.sleep(1)
        await produce_messages(bootstrap, topic, messages)
        cut = stored_positions(database)[(topic, 0)] + 50
        await delete_records(bootstrap, topic, {0: cut})
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    return cut
