"""Run ``sqlstate run`` as users do, as a subprocess, and wait on what it writes to the database."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.db import query


class Daemon:
    """One ``sqlstate run`` process; its output goes to a log file next to the database."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        database: Path,
        *extra_args: str,
        name: str = "daemon",
        env: Mapping[str, str] | None = None,
        entry: Sequence[str] = ("-m", "sqlstate"),
        options: Sequence[str] = ("-v",),
    ) -> None:
        # ``options`` go before ``run``: -v, -vv, --log-format.
        self.args = [
            sys.executable,
            *entry,
            *options,
            "run",
            "--bootstrap-servers",
            bootstrap,
            "--group-id",
            group_id,
            "--database",
            str(database),
            "--session-timeout-ms",
            "6000",
            "--connect-timeout",
            "20",
            *[arg for topic in topics for arg in ("--topic", topic)],
            *extra_args,
        ]
        self.database = database
        self.log_path = database.parent / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Daemon:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def current_log(self) -> str:
        """What the process started last has written."""
        return self.log().rpartition(f"--- start {self.starts}\n")[2]

    async def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        """Wait until the current process has logged ``text`` (e.g. that it was assigned)."""
        deadline = time.monotonic() + timeout
        while text not in self.current_log():
            if not self.running() or time.monotonic() > deadline:
                raise AssertionError(f"daemon never logged {text!r}:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.05)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"daemon did not exit within {timeout}s:\n{self.log()[-3000:]}"
                )
            await asyncio.sleep(0.05)
        return code

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for a graceful exit."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def kill(self) -> None:
        """kill -9: no chance to clean up."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
        await self.wait(10)

    def resume(self) -> None:
        """SIGCONT: a process frozen with SIGSTOP (by a test, or by itself) carries on."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def stop_quietly(self) -> None:
        """Used by fixtures at the end of a test, whatever state the process is in."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        try:
            await self.terminate(15)
        except AssertionError:
            await self.kill()


def stored_positions(database: Path) -> dict[tuple[str, int], int]:
    """{(topic, partition): next_offset} read as any SQLite client would; {} if not there yet."""
    if not database.exists():
        return {}
    try:
        rows = query(database, "SELECT topic, partition, next_offset FROM positions")
    except sqlite3.OperationalError:
        return {}  # the schema is not there yet
    return {(topic, partition): offset for topic, partition, offset in rows}


async def wait_for_positions(
    database: Path,
    targets: Mapping[tuple[str, int], int],
    timeout: float = 60.0,
    daemons: Sequence[Daemon] = (),
) -> None:
    """Wait until every partition's stored position reaches its target (e.g. the log end)."""
    deadline = time.monotonic() + timeout
    while True:
        positions = stored_positions(database)
        if all(positions.get(tp, -1) >= end for tp, end in targets.items()):
            return
        # The daemon that writes this file has exited: the positions cannot move any more.
        writers = [d for d in daemons if d.database == database and d.process is not None]
        writer_exited = bool(writers) and not any(d.running() for d in writers)
        if writer_exited or time.monotonic() > deadline:
            logs = "\n".join(f"== {d.log_path.name}\n{d.log()[-3000:]}" for d in daemons)
            why = "its daemon exited" if writer_exited else f"in {timeout}s"
            raise AssertionError(
                f"positions {positions} did not reach {dict(targets)}: {why}\n{logs}"
            )
        await asyncio.sleep(0.2)


async def wait_for_progress(database: Path, minimum: int, timeout: float = 60.0) -> None:
    """Wait until the positions add up to at least ``minimum`` records."""
    deadline = time.monotonic() + timeout
    while sum(stored_positions(database).values()) < minimum:
        if time.monotonic() > deadline:
            raise AssertionError(f"no progress to {minimum} within {timeout}s")
        await asyncio.sleep(0.05)
