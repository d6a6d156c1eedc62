"""Opening a database a crash left behind: recovered by SQLite, and never changed when refused."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from sqlstate.state.database import Database

# A write transaction in rollback-journal mode, killed before COMMIT: a hot journal stays behind.
CRASH_IN_TRANSACTION = textwrap.dedent(
    """
    import os, sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA cache_size = 1")  # spill to the file before COMMIT
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?)", (("y" * 500,) for _ in range(5000)))
    os._exit(0)
    """
)


def crash_in_transaction(path: Path) -> bool:
    """Leave a hot journal at ``path``; whether the journal is there."""
    subprocess.run([sys.executable, "-c", CRASH_IN_TRANSACTION, str(path)], check=True, timeout=60)
    return Path(f"{path}-journal").exists()


async def test_hot_rollback_journal_is_replayed_not_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    assert await asyncio.to_thread(crash_in_transaction, path)

    # The read-only integrity check cannot replay the journal; the open must not refuse the
    # file for that, but let SQLite's own recovery roll the crashed transaction back.
    store = await Database.open(path, busy_timeout_s=5.0)
    try:
        assert await store.read(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone())
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    finally:
        conn.close()
