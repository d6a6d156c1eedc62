"""Run ``sqlstate run`` as users do, as a subprocess, and watch it from outside.

What is measured comes from two places the daemon already offers:

- its log, at ``-v`` and in JSON (``--log-format json``), read by its fields, never by the
  wording of its messages: one ``batch_committed`` event per committed batch, with the records
  it counted and the time its transaction took, whose ``time`` is when the batch was committed;
  under ``--changelog``, ``changelog_published`` (the part of that time spent waiting for
  Kafka's transactions) and ``changelog_restored`` (a partition restored from its changelog);
  ``partitions_assigned`` for each assignment, ``database_busy`` for each retry on a locked
  database and ``started`` for the record parser in use;
- its database, read-only, polled until every partition's stored position reaches the log end:
  that, and not a log line, is what says the topic has been consumed.

Peak memory (``VmHWM``) and CPU time come from ``/proc``, read just before SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from bench.procfs import cpu_seconds, peak_rss_kib
from bench.report import Batch, RunResult
from sqlstate.state.reads import positions

_POLL_S = 0.05
_STOP_TIMEOUT_S = 30.0


def sqlstate_command() -> list[str]:
    """The ``sqlstate`` console script installed next to this interpreter, as users run it."""
    script = Path(sys.executable).with_name("sqlstate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sqlstate"]


@dataclass
class Committed:
    at: float  # epoch seconds, from the log line's timestamp (millisecond precision)
    records: int
    commit_ms: float


@dataclass
class DaemonProcess:
    """One ``sqlstate run`` and what its stderr has said so far."""

    name: str
    popen: subprocess.Popen[str]
    launched_at: float
    lines: list[str] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)  # the lines that are JSON
    reader: threading.Thread | None = None
    peak_rss_kib: int | None = None
    cpu_s: float | None = None

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log lines of the event ``name``, oldest first."""
        # A copy: the reader thread appends meanwhile.
        return [entry for entry in list(self.entries) if entry.get("event") == name]

    def committed(self) -> list[Committed]:
        return [
            Committed(
                datetime.fromisoformat(entry["time"]).timestamp(),
                entry["records"],
                entry["commit_s"] * 1000,
            )
            for entry in self.events("batch_committed")
        ]

    def assignment(self) -> set[int] | None:
        """The partitions of its latest assignment; None before the first."""
        assignments = self.events("partitions_assigned")
        if not assignments:
            return None
        return {claim["partition"] for claim in assignments[-1]["assigned"]}

    def published_ms(self) -> list[float]:
        """Under --changelog, each batch's wait for its changelog transactions (the
        ``changelog_published`` lines), in milliseconds."""
        return [entry["publish_s"] * 1000 for entry in self.events("changelog_published")]

    def busy_retries(self) -> int:
        return len(self.events("database_busy"))

    def c_parser(self) -> bool:
        """Whether it parsed records with aiokafka's C extension, as it said at start."""
        return any(entry["record_parser"] == "c" for entry in self.events("started"))

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.lines[-lines:])


def run_result(
    name: str,
    label: str,
    launched_at: float,
    daemons: list[DaemonProcess],
    counts_exact: bool,
) -> RunResult:
    """One run of one or more stopped daemons, as the report takes it: every batch each
    committed, and each one's memory, CPU and log figures."""
    return RunResult(
        name=name,
        label=label,
        launched_at=launched_at,
        batches=[Batch(c.at, c.records, c.commit_ms) for d in daemons for c in d.committed()],
        peak_rss_kib=[d.peak_rss_kib for d in daemons],
        counts_exact=counts_exact,
        cpu_s=[d.cpu_s for d in daemons],
        c_parser=all(d.c_parser() for d in daemons),
        busy_retries=sum(d.busy_retries() for d in daemons),
        publish_ms=[ms for d in daemons for ms in d.published_ms()],
    )


def _read_lines(stream: IO[str], lines: list[str], entries: list[dict[str, Any]]) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # not a log line: the CLI's one-line error, say
        if isinstance(entry, dict):
            entries.append(entry)


def launch(
    name: str,
    bootstrap: str,
    topic: str,
    group_id: str,
    database: Path,
    extra_args: tuple[str, ...] = (),
) -> DaemonProcess:
    command = [
        *sqlstate_command(),
        "-v",
        "--log-format",
        "json",
        "run",
        "-b",
        bootstrap,
        "-t",
        topic,
        "-g",
        group_id,
        "--database",
        str(database),
        "--client-id",
        name,
        *extra_args,
    ]
    launched_at = time.time()
    popen = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    process = DaemonProcess(name, popen, launched_at)
    assert popen.stderr is not None
    process.reader = threading.Thread(
        target=_read_lines, args=(popen.stderr, process.lines, process.entries), daemon=True
    )
    process.reader.start()
    return process


def stored_positions(database: Path, topic: str) -> dict[int, int]:
    """Each partition's next offset as committed; {} while the database is not there yet."""
    try:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    except sqlite3.OperationalError:
        return {}
    try:
        rows = conn.execute(
            "SELECT partition, next_offset FROM positions WHERE topic = ?", (topic,)
        ).fetchall()
    except sqlite3.OperationalError:  # not created or not migrated yet
        return {}
    finally:
        conn.close()
    return {int(partition): int(offset) for partition, offset in rows}


def wait_caught_up(
    database: Path,
    topic: str,
    end_offsets: dict[int, int],
    processes: list[DaemonProcess],
    timeout_s: float,
) -> float:
    """Poll until every partition's stored position equals its end; return when (epoch s)."""
    give_up = time.monotonic() + timeout_s
    while True:
        if stored_positions(database, topic) == end_offsets:
            return time.time()
        for process in processes:
            if process.popen.poll() is not None:
                raise RuntimeError(
                    f"{process.name} exited with {process.popen.returncode} before catching"
                    f" up:\n{process.log_tail()}"
                )
        if time.monotonic() > give_up:
            raise TimeoutError(
                f"positions {stored_positions(database, topic)} did not reach {end_offsets}"
                f" within {timeout_s:g}s"
            )
        time.sleep(_POLL_S)


def stop(process: DaemonProcess) -> None:
    """Record peak memory and CPU time, then stop the daemon gracefully; it must exit 0."""
    process.peak_rss_kib = peak_rss_kib(process.popen.pid)
    process.cpu_s = cpu_seconds(process.popen.pid)
    if process.popen.poll() is None:
        process.popen.send_signal(signal.SIGTERM)
    try:
        code = process.popen.wait(_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.popen.kill()
        process.popen.wait()
        raise RuntimeError(f"{process.name} did not stop within {_STOP_TIMEOUT_S:g}s") from None
    if process.reader is not None:
        process.reader.join(5)
    if code != 0:
        raise RuntimeError(f"{process.name} exited with {code}:\n{process.log_tail()}")


def stop_all(processes: list[DaemonProcess]) -> None:
    """``stop`` each one, all of them even when one fails; then raise the first failure."""
    failures: list[BaseException] = []
    for process in processes:
        try:
            stop(process)
        except (RuntimeError, TimeoutError) as error:
            failures.append(error)
    if failures:
        raise failures[0]


def hold_at_end(database: Path, topic: str, end_offsets: dict[int, int]) -> None:
    """A database whose positions put every partition of ``topic`` at its end, so that
    ``sqlstate run`` claims them and then waits, having nothing to consume."""
    subprocess.run(
        [*sqlstate_command(), "-q", "migrate", "--database", str(database)],
        check=True,
        capture_output=True,
    )
    with contextlib.closing(sqlite3.connect(database)) as conn, conn:
        conn.executemany(
            "INSERT INTO positions (topic, partition, next_offset, epoch, owner, log_end_offset,"
            " updated_at) VALUES (?, ?, ?, 0, 'bench', ?, '')",
            [(topic, partition, end, end) for partition, end in end_offsets.items()],
        )


def release_to_start(database: Path, topic: str) -> None:
    """Move every stored position of ``topic`` back to offset 0 (the bench's topics keep all
    their records). The daemons holding the partitions read it at their next claim."""
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as conn, conn:
        conn.execute("UPDATE positions SET next_offset = 0 WHERE topic = ?", (topic,))


def _raise_if_exited(processes: list[DaemonProcess]) -> None:
    for process in processes:
        if process.popen.poll() is not None:
            raise RuntimeError(
                f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}"
            )


def wait_for_assignment(processes: list[DaemonProcess], partitions: int, timeout_s: float) -> None:
    """Until the processes' latest assignments split all partitions between them, each some."""
    give_up = time.monotonic() + timeout_s
    while True:
        assignments = [process.assignment() for process in processes]
        if all(assignments):
            held = [tp for assignment in assignments if assignment for tp in assignment]
            if sorted(held) == list(range(partitions)):
                return
        _raise_if_exited(processes)
        if time.monotonic() > give_up:
            raise TimeoutError(
                f"the group did not settle within {timeout_s:g}s: the partitions of each"
                f" process's latest partitions_assigned event: {assignments}"
            )
        time.sleep(_POLL_S)


def wait_for_claims(
    processes: list[DaemonProcess], databases: list[Path], topic: str, timeout_s: float
) -> None:
    """Until each process's file names it the owner of every partition of its latest
    assignment: its claims committed (under --changelog a claim follows the assignment once the
    partition's changelog is read)."""
    give_up = time.monotonic() + timeout_s
    while True:
        if all(
            _owns(database, topic, process)
            for process, database in zip(processes, databases, strict=True)
        ):
            return
        _raise_if_exited(processes)
        if time.monotonic() > give_up:
            raise TimeoutError(
                f"the processes did not claim their partitions within {timeout_s:g}s"
            )
        time.sleep(_POLL_S)


def _owns(database: Path, topic: str, process: DaemonProcess) -> bool:
    assigned = process.assignment()
    if not assigned:
        return False
    # The owner a claim records starts with the client ID, which is the process's name.
    mine = f"{process.name}@"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
            held = {
                row.partition
                for row in positions(conn)
                if row.topic == topic and row.owner.startswith(mine)
            }
    except sqlite3.OperationalError:  # not created or not migrated yet
        return False
    return assigned <= held


@contextlib.contextmanager
def frozen(processes: list[DaemonProcess]) -> Iterator[None]:
    """The processes stopped (SIGSTOP) inside the block, then let go together (SIGCONT), each
    one that was stopped, whatever the block raised."""
    stopped: list[DaemonProcess] = []
    try:
        for process in processes:
            process.popen.send_signal(signal.SIGSTOP)
            stopped.append(process)
        yield
    finally:
        for process in stopped:
            process.popen.send_signal(signal.SIGCONT)


def stored_counts(database: Path, topic: str) -> dict[str, int]:
    """Total count per key of ``topic``, across partitions, as committed."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT key, sum(count) FROM key_counts WHERE topic = ? GROUP BY key", (topic,)
        ).fetchall()
    finally:
        conn.close()
    return {str(key): int(count) for key, count in rows}


def stored_state(database: Path, sql: str, topic: str) -> dict[str, object]:
    """``{key: value}`` of a two-column query over ``topic``'s committed state."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute(sql, (topic,)).fetchall()
    finally:
        conn.close()
    return {str(key): value for key, value in rows}
