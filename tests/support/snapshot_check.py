"""Whole batches in every committed snapshot, checked continuously while daemons write.

A reader of any host's file must see only states that existed on the partition's owner: a batch's
rows and its position together, or neither. For the counts processor over input topics whose
offsets are contiguous from 0 (a non-transactional producer, nothing deleted before it was
counted), that is one equation per partition: ``sum(count)`` of its ``key_counts`` rows equals its
``next_offset`` in ``positions``. A snapshot that shows batch K+1's rows with batch K's position
(or the other way round) breaks it.

``SnapshotChecker`` polls every file in read transactions, from a thread of its own (the sqlite3
module; the reads must not wait on the test's event loop, which is busy producing), as a user's
SQLite client would, and records each broken equation.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Sequence
from pathlib import Path

from tests.support.db import connect_read_only

# One statement: SQLite reads it in one snapshot, even outside an explicit transaction.
_SNAPSHOT = """
SELECT p.topic, p.partition, p.next_offset,
       (SELECT total(k.count) FROM key_counts AS k
        WHERE k.topic = p.topic AND k.partition = p.partition)
FROM positions AS p
UNION ALL
SELECT k.topic, k.partition, NULL, total(k.count)
FROM key_counts AS k
WHERE NOT EXISTS (
    SELECT 1 FROM positions AS p WHERE p.topic = k.topic AND p.partition = k.partition)
GROUP BY k.topic, k.partition
"""
# Violations kept at most: one broken file would otherwise fill the memory at 20 reads a second.
_MAX_VIOLATIONS = 100


class SnapshotChecker:
    """Polls database files in read transactions while daemons write, checking that every
    committed snapshot shows whole batches: per (topic, partition) in positions, sum(count) in
    key_counts == next_offset."""

    def __init__(
        self, files: Sequence[Path], topics: Collection[str], interval_s: float = 0.05
    ) -> None:
        self._files = list(files)
        self._topics = frozenset(topics)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checked = 0  # snapshots read so far
        self.violations: list[str] = []  # human-readable, empty when all good
        self.errors: list[str] = []  # reads that failed for another reason than "not there yet"

    async def __aenter__(self) -> SnapshotChecker:
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="snapshot-check", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            # The thread waits at most one interval and one read between checks of the flag.
            self._thread.join(timeout=30)
            self._thread = None

    def _poll(self) -> None:
        connections: dict[Path, sqlite3.Connection] = {}
        try:
            while not self._stop.is_set():
                for path in self._files:
                    self._check(connections, path)
                self._stop.wait(self._interval_s)
        finally:
            for connection in connections.values():
                connection.close()

    def _check(self, connections: dict[Path, sqlite3.Connection], path: Path) -> None:
        try:
            connection = connections.get(path)
            if connection is None:
                if not path.exists():
                    return
                connection = connections[path] = connect_read_only(path)
            rows = connection.execute(_SNAPSHOT).fetchall()
        except sqlite3.Error as error:
            # A file that the daemon has not created or migrated yet; a host whose file was
            # deleted (a lost disk) gets a new connection to its new file.
            stale = connections.pop(path, None)
            if stale is not None:
                stale.close()
            if "no such table" not in str(error) and "unable to open" not in str(error):
                self._note(self.errors, f"{path.name}: {error}")
            return
        self.checked += 1
        for topic, partition, next_offset, counted in rows:
            if topic not in self._topics or counted == (next_offset or 0):
                continue
            where = "no position" if next_offset is None else f"next_offset {next_offset}"
            self._note(
                self.violations,
                f"{path.name}: {topic}-{partition} shows {int(counted)} counted records"
                f" with {where}",
            )

    def _note(self, notes: list[str], note: str) -> None:
        # A half batch is seen again at every read until the rest commits: reported once.
        if len(notes) < _MAX_VIOLATIONS and note not in notes:
            notes.append(note)
