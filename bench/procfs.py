"""Peak resident memory of a process, read from ``/proc`` (Linux), with no extra dependency."""

from __future__ import annotations

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
