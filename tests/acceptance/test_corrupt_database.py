"""A corrupt database: ``sqlstate run`` refuses to start, says so, and leaves every byte alone.

A file this small is checked before anything is written (a large one is checked beside start-up:
tests/unit/test_database.py).

Starting over silently would recount from wherever Kafka's retention now begins and hide the loss,
so refusing is the only safe answer. The files are compared byte for byte, the WAL included: a
read-write SQLite connection checkpoints the WAL into the main file when it closes, which would
change the very file the daemon claims to leave as it was.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.workload import database_digests

# Fills the schema with enough rows to span many pages, then (``keep_wal``) commits once more and
# exits without closing, as a killed daemon would: the last commit stays in the -wal file.
POPULATE = textwrap.dedent(
    """
    import os, sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO positions (topic, partition, next_offset, epoch, owner, updated_at)"
        " VALUES ('t', 0, 30000, 1, 'x', '')"
    )
    conn.executemany(
        "INSERT INTO key_counts VALUES ('t', 0, ?, 1)",
        ((f"key-{i}-" + "x" * 40,) for i in range(30000)),
    )
    conn.execute("COMMIT")
    if sys.argv[2] != "keep_wal":
        conn.close()  # the last connection to close checkpoints and removes the WAL
        sys.exit(0)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("UPDATE positions SET next_offset = 30001")
    conn.execute("INSERT INTO key_counts VALUES ('t', 0, 'last', 1)")
    os._exit(0)
    """
)


def quick_check_of_copy(database: Path, tmp_path: Path) -> str:
    """What SQLite says about the damage, asked of a copy so the original stays untouched."""
    copy = tmp_path / "copy.db"
    copy.write_bytes(database.read_bytes())
    wal = Path(f"{database}-wal")
    if wal.exists():
        Path(f"{copy}-wal").write_bytes(wal.read_bytes())
    conn = sqlite3.connect(copy)
    try:
        return str(conn.execute("PRAGMA quick_check").fetchone()[0])
    except sqlite3.DatabaseError as error:
        return str(error)
    finally:
        conn.close()


@pytest.mark.parametrize("wal", ["checkpointed", "keep_wal"])
def test_corrupt_database_is_refused_and_left_unchanged(
    tmp_path: Path, kafka_bootstrap: str, wal: str
) -> None:
    database = tmp_path / "state.db"
    sqlstate = [sys.executable, "-m", "sqlstate"]
    subprocess.run(
        [*sqlstate, "migrate", "--database", str(database)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    subprocess.run([sys.executable, "-c", POPULATE, str(database), wal], check=True, timeout=60)
    assert Path(f"{database}-wal").exists() == (wal == "keep_wal")

    # Overwrite one whole page in the middle of the file with garbage.
    size = database.stat().st_size
    with database.open("r+b") as file:
        file.seek((size // 2) // 4096 * 4096)
        file.write(b"\xde\xad\xbe\xef" * 1024)
    assert quick_check_of_copy(database, tmp_path) != "ok"
    before = database_digests(database)

    result = subprocess.run(
        [
            *sqlstate,
            "run",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic",
            "t",
            "--group-id",
            "g",
            "--database",
            str(database),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 3, result.stderr
    assert "is corrupt" in result.stderr
    assert "left as it is" in result.stderr
    assert "Traceback" not in result.stderr
    assert database_digests(database) == before
