"""Every committed snapshot of every file is a state that existed on the owner: while the soak
runs, read each file over and over as a user's SQLite client would and check, per (topic,
partition) in ``positions``, that ``sum(count)`` in ``key_counts`` equals ``next_offset``.

That holds for the counts processor over a topic whose offsets are contiguous from 0 (plain
records only: no transaction markers, no aborted records): a snapshot that breaks it holds half
a batch (a changelog transaction applied in part, or state without its position).

Stand-in, with the same interface, for ``tests/support/snapshot_check.py`` until that lands;
then this file goes and the soak imports ``SnapshotChecker`` from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Collection, Sequence
from pathlib import Path

from tests.support.db import connect_read_only

# Per partition of the given topics: its position and the counts it holds, in one read
# transaction so that both come from the same committed batch.
SNAPSHOT = """
SELECT p.topic, p.partition, p.next_offset,
       (SELECT ifnull(sum(k.count), 0) FROM key_counts AS k
        WHERE k.topic = p.topic AND k.partition = p.partition)
FROM positions AS p
"""

Half = tuple[str, str, int, int, int]  # file name, topic, partition, next_offset, counted


def half_batches(file: Path, topics: Collection[str]) -> list[Half] | None:
    """The partitions of one committed snapshot of ``file`` whose counts and position disagree;
    None when the file cannot be read yet (not created, or its schema not there)."""
    if not file.exists():
        return None
    try:
        conn = connect_read_only(file)
    except sqlite3.Error:
        return None
    try:
        conn.execute("BEGIN")
        rows = conn.execute(SNAPSHOT).fetchall()
        conn.execute("COMMIT")
    except sqlite3.Error:
        return None  # no tables yet, or a checkpoint that briefly locks readers out
    finally:
        conn.close()
    return [
        (file.name, topic, partition, next_offset, counted)
        for topic, partition, next_offset, counted in rows
        if topic in topics and counted != next_offset
    ]


class SnapshotChecker:
    """Checks ``files`` every ``interval_s`` for the block; ``checked`` snapshots read,
    ``violations`` one line per distinct half batch seen."""

    def __init__(
        self, files: Sequence[Path], topics: Collection[str], interval_s: float = 0.05
    ) -> None:
        self.files = list(files)
        self.topics = frozenset(topics)
        self.interval_s = interval_s
        self.checked = 0
        self.violations: list[str] = []
        self.seen: set[Half] = set()
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SnapshotChecker:
        self.task = asyncio.create_task(self.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 60)

    def check_all(self) -> None:
        for file in self.files:
            found = half_batches(file, self.topics)
            if found is None:
                continue
            self.checked += 1
            for half in found:
                if half not in self.seen:
                    self.seen.add(half)
                    name, topic, partition, next_offset, counted = half
                    self.violations.append(
                        f"{name}: {topic}-{partition} counts {counted} records"
                        f" at next_offset {next_offset}"
                    )

    async def run(self) -> None:
        while not self.stop.is_set():
            # The reads are blocking SQLite calls: off the event loop the soak's clients use.
            await asyncio.to_thread(self.check_all)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.interval_s)
