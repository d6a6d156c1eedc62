"""Peak resident memory and CPU time of a process, read from ``/proc`` (Linux), no dependency."""

from __future__ import annotations

import os
from pathlib import Path


def peak_rss_kib(pid: int | str) -> int | None:
    """``VmHWM``, the high-water mark of resident memory, in KiB; None if it cannot be read.

    ``pid`` is a process id or ``"self"``. Read it just before the process is signalled to stop,
    so that shutdown does not count.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int | str) -> float | None:
    """User plus system CPU time the process has used so far, all threads; None if unreadable.

    CPU time is much less disturbed than wall time by other programs sharing the machine, so it
    says how much work a run took even when its throughput was pushed around.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; the fields after it are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")
