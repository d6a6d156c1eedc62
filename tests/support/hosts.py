"""Hosts simulated on one machine, for the multi-host tests and the soak: each host one
``sqlstate run --changelog`` with a database file of its own, all of them in one group.

On real hosts each file sits on its own machine; here the files sit side by side, which changes
nothing for sqlstate: no two processes share a file, and whatever moves between them goes through
Kafka (the changelog topics). Every wait is bounded and fails with the hosts' logs.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from pathlib import Path

from sqlstate.processors.base import Record
from tests.support.daemon import Daemon, wait_for_positions
from tests.support.db import query
from tests.support.faults import daemon
from tests.support.oracle import Verdict, check
from tests.support.workload import end_offsets

# The owner column of a partition this file follows (applies from the changelog) and does not own.
STANDBY = "standby"
# The current process's assignments: "assigned partitions: t-0, t-1; ..." or "assigned no
# partitions; ...", one line per rebalance.
ASSIGNMENT = re.compile(r"assigned (?:no partitions|partitions: ([^;\n]*))")
# Under --changelog a partition is claimed after its restore, from the batch loop.
CLAIMS = re.compile(r"claimed partitions held since the rebalance .*")


def host_database(workdir: Path, index: int) -> Path:
    return workdir / f"host-{index}.db"


def lose_file(database: Path) -> None:
    """Delete a (stopped) host's database file with its -wal and -shm: a host lost with its disk."""
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        path.unlink(missing_ok=True)


def host(
    bootstrap: str,
    topic: str,
    group_id: str,
    workdir: Path,
    index: int,
    *extra_args: str,
    fault: str | None = None,
    at: int = 1,
    action: str = "kill",
) -> Daemon:
    """Host ``index``: ``sqlstate run --changelog`` on ``host-<index>.db`` (its log beside it,
    ``host-<index>.log``), with the fault tests' short group timings and optionally a fault
    (``tests.support.faults.daemon``)."""
    return daemon(
        bootstrap,
        topic,
        group_id,
        host_database(workdir, index),
        "--changelog",
        "--client-id",
        f"host-{index}",
        *extra_args,
        name=f"host-{index}",
        fault=fault,
        at=at,
        action=action,
    )


def assignment(host: Daemon, topic: str) -> set[int] | None:
    """The partitions of ``topic`` in the current process's last assignment; None before its
    first."""
    lines = ASSIGNMENT.findall(host.current_log())
    if not lines:
        return None
    return {int(p) for p in re.findall(rf"{re.escape(topic)}-(\d+)\b", lines[-1])}


async def wait_for_assignments(
    hosts: Sequence[Daemon], topic: str, partitions: int, timeout: float = 60.0
) -> list[set[int]]:
    """Wait until the last assignments of ``hosts`` split the topic's partitions between them,
    each partition to one host; those assignments."""
    deadline = time.monotonic() + timeout
    while True:
        assigned = [assignment(h, topic) for h in hosts]
        split = [a for a in assigned if a is not None]
        if len(split) == len(hosts) and sorted(p for a in split for p in a) == list(
            range(partitions)
        ):
            return split
        if time.monotonic() > deadline or not all(h.running() for h in hosts):
            raise AssertionError(
                f"the assignments {assigned} did not split {partitions} partitions"
                f" in {timeout}s:\n{logs(hosts)}"
            )
        await asyncio.sleep(0.2)


def claimed(host: Daemon, topic: str) -> dict[int, int]:
    """{partition: offset} of the current process's claims of ``topic`` so far (the last one per
    partition): where each partition was claimed, restored from its changelog."""
    offsets: dict[int, int] = {}
    for line in CLAIMS.findall(host.current_log()):
        for partition, offset in re.findall(rf"{re.escape(topic)}-(\d+)@(\d+)", line):
            offsets[int(partition)] = int(offset)
    return offsets


def owners(database: Path, topic: str) -> dict[int, str]:
    """{partition: owner column of its position}: a host's owner string, or ``standby``."""
    rows = query(database, "SELECT partition, owner FROM positions WHERE topic = ?", (topic,))
    return {partition: owner for partition, owner in rows}


async def converged(
    bootstrap: str,
    topic: str,
    hosts: Sequence[Daemon],
    *,
    deleted: Sequence[Record] = (),
    timeout: float = 90.0,
) -> list[Verdict]:
    """Wait until every host's file stands at the end of the log in every partition (with
    standbys: the complete state), then apply the oracle to each file; fail with every file's
    verdict."""
    targets = await end_offsets(bootstrap, topic)
    deadline = time.monotonic() + timeout
    for h in hosts:
        await wait_for_positions(h.database, targets, max(1.0, deadline - time.monotonic()), hosts)
    verdicts = [await check(bootstrap, h.database, topic, deleted=deleted) for h in hosts]
    assert all(v.ok for v in verdicts), "\n".join(
        f"{h.database.name}: {v.describe()}" for h, v in zip(hosts, verdicts, strict=True)
    )
    return verdicts


def logs(hosts: Sequence[Daemon], tail: int = 3000) -> str:
    return "\n".join(f"== {h.log_path.name}\n{h.log()[-tail:]}" for h in hosts)


def roles(database: Path, topic: str) -> dict[int, str | None]:
    """{partition: progress.role}: ``owns``, ``follows`` or ``unfollowed`` under --changelog."""
    rows = query(database, "SELECT partition, role FROM progress WHERE topic = ?", (topic,))
    return {partition: role for partition, role in rows}


KEPT = ("owns", "follows")


async def wait_for_copies(
    hosts: Sequence[Daemon], topic: str, partitions: int, copies: int, timeout: float = 60.0
) -> None:
    """Wait until, by the files' ``progress``, every partition is owned in one file of ``hosts``
    and followed in ``copies - 1`` others, and no file says it keeps more."""
    deadline = time.monotonic() + timeout
    while True:
        files = [roles(h.database, topic) for h in hosts]
        by = {p: [f.get(p) for f in files] for p in range(partitions)}
        if all(
            found.count("owns") == 1 and found.count("owns") + found.count("follows") == copies
            for found in by.values()
        ):
            return
        if time.monotonic() > deadline or not all(h.running() for h in hosts):
            raise AssertionError(
                f"each partition not kept in {copies} files in {timeout}s: {by}\n{logs(hosts)}"
            )
        await asyncio.sleep(0.2)
