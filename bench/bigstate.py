"""A database that already holds many distinct keys, for the big-state measurement.

Built with the real schema (``sqlstate migrate``) and then bulk-inserted with the sqlite3 module,
in index order, which takes seconds where the daemon would take minutes.

Where the existing keys sit matters more than how many there are:

- ``interleaved`` (default): the keys belong to the benchmark's topic and sort between its live
  keys (``key-0000042/000004201`` sorts after ``key-0000042``), as in a real database where the
  keys that are hot today are scattered among all the keys ever seen. Every batch then touches
  index pages spread over the whole state: the honest worst case for commit cost.
- ``separate``: the keys belong to another topic, so the live keys' index pages are as compact as
  in a fresh database and only the depth of the B-tree grows.

The existing keys are never touched by the run: the bench checks that they are still all there,
each with its count of 1.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.sqlstate_process import sqlstate_command

Layout = Literal["interleaved", "separate"]
LAYOUTS: tuple[Layout, ...] = ("interleaved", "separate")

# The bulk insert only: a large page cache keeps the index build in memory.
_BUILD_CACHE_KIB = 256 * 1024


@dataclass(frozen=True)
class BigState:
    database: Path
    topic: str  # the topic the existing keys belong to
    keys: int
    layout: Layout
    seconds: float


def _rows(
    topic: str, keys: int, live_keys: int, partitions: int, layout: Layout
) -> Iterator[tuple[str, int, str, int]]:
    """(topic, partition, key, 1) in the index's order, so that inserts only append."""
    for partition in range(partitions):
        for j in range(partition, keys, partitions):
            if layout == "interleaved":
                # j * live_keys // keys grows with j, and the fixed-width suffix keeps the
                # string order equal to the order of j.
                yield topic, partition, f"key-{j * live_keys // keys:07d}/{j:09d}", 1
            else:
                yield topic, partition, f"old-{j:09d}", 1


def build(
    database: Path, topic: str, keys: int, live_keys: int, partitions: int, layout: Layout
) -> BigState:
    started = time.perf_counter()
    subprocess.run(
        [*sqlstate_command(), "-q", "migrate", "--database", str(database)],
        check=True,
        capture_output=True,
    )
    state_topic = topic if layout == "interleaved" else f"{topic}-old"
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        conn.execute(f"PRAGMA cache_size = -{_BUILD_CACHE_KIB}")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO key_counts (topic, partition, key, count) VALUES (?, ?, ?, ?)",
            _rows(state_topic, keys, live_keys, partitions, layout),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return BigState(database, state_topic, keys, layout, time.perf_counter() - started)


def existing_keys_intact(state: BigState) -> bool:
    """Whether every pre-existing key is still there with its count of 1."""
    conn = sqlite3.connect(f"file:{state.database}?mode=ro", uri=True)
    try:
        if state.layout == "interleaved":
            query = (
                "SELECT count(*), sum(count) FROM key_counts WHERE topic = ? AND key LIKE 'key-%/%'"
            )
        else:
            query = "SELECT count(*), sum(count) FROM key_counts WHERE topic = ?"
        rows, total = conn.execute(query, (state.topic,)).fetchone()
    finally:
        conn.close()
    return bool(rows == state.keys and total == state.keys)
