"""Processes: whether a pid still runs our broker, starting one detached, and reading its log.

A process is only ever signalled by the pid we recorded, after ``pid_runs`` has checked that the
pid still runs our broker, never by name.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tools.kafka_broker.errors import BrokerError

LOG_TAIL_LINES = 60


def _proc_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    return stat[stat.rfind(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    with contextlib.suppress(ChildProcessError):
        # Reap it if it happens to be our child, so that it does not linger as a zombie.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_fields(pid)
    return fields is None or fields[0] != "Z"


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit; whether it did."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def pid_runs(pid: int, *needles: str) -> bool:
    """Whether ``pid`` is alive and its command line contains every needle.

    This guards against a recycled pid: we signal only a process that still runs the
    broker we started. Without /proc (macOS) we can only trust the pid.
    """
    if not pid_alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return False
    return all(needle in command for needle in needles)


def spawn_detached(command: Sequence[str], log_file: Path, cwd: Path) -> int:
    """Start ``command`` in its own session, detached from us; return its pid.

    A tiny intermediate Python starts it and exits at once, so the broker is never our
    child: it cannot become our zombie, Ctrl-C in our terminal does not reach it, and
    pytest never sees a still-running ``Popen`` object (a ResourceWarning, hence an
    error under ``filterwarnings=error``).
    """
    launcher = (
        "import subprocess, sys\n"
        "log = open(sys.argv[1], 'ab')\n"
        "child = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log,\n"
        "                         stderr=subprocess.STDOUT, start_new_session=True)\n"
        "print(child.pid)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", launcher, str(log_file), *command],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip().isdigit():
        raise BrokerError(f"could not start {command[0]}: {result.stderr.strip()}")
    return int(result.stdout)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a file, without reading all of a big one."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 256 * 1024))
            data = file.read()
    except FileNotFoundError:
        return f"(no log file at {path})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
