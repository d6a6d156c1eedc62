"""Read a sqlstate database the way its users do: any SQLite client, read-only; and change
one behind the daemon's back, as some tests must.

Every connection opened here is closed when its block ends: ``with sqlite3.connect(...)``
alone commits but leaves the connection open, which Python 3.13 reports as a
ResourceWarning (an error in this suite).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def connect_read_only(path: Path | str) -> sqlite3.Connection:
    """Open ``path`` read-only, as a user's SQLite client would while the daemon writes.

    ``mode=ro`` makes any write fail, so a test can't change what it checks; a file
    URI built by pathlib copes with spaces and '?' in the path.
    """
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True)


def query(path: Path | str, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """All rows of one query, on a connection opened and closed for it."""
    connection = connect_read_only(path)
    try:
        return [tuple(row) for row in connection.execute(sql, parameters)]
    finally:
        connection.close()


def query_value(path: Path | str, sql: str, parameters: Sequence[Any] = ()) -> Any:
    """The single value a query returns (e.g. ``SELECT count(*) ...``)."""
    rows = query(path, sql, parameters)
    if len(rows) != 1 or len(rows[0]) != 1:
        raise AssertionError(f"expected one value from {sql!r}, got {rows!r}")
    return rows[0][0]


@contextlib.contextmanager
def writing(path: Path | str, **options: Any) -> Iterator[sqlite3.Connection]:
    """A read-write connection for one block (``options`` go to ``sqlite3.connect``): what
    the block did is committed unless it raised, then the connection is closed."""
    connection = sqlite3.connect(path, **options)
    try:
        with connection:
            yield connection
    finally:
        connection.close()


@contextlib.contextmanager
def held_exclusively(path: Path | str) -> Iterator[None]:
    """Keep every other connection out of ``path`` for one block, even readers in WAL mode:
    a connection in exclusive locking mode keeps its lock after its first write."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("UPDATE positions SET owner = owner")
        holder.execute("COMMIT")
        yield
    finally:
        holder.close()


def corrupt_file(path: Path) -> None:
    """A migrated database of a few MB with one page in the middle overwritten."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one commit, not one per row
        conn.execute("CREATE TABLE filler (x)")
        conn.executemany("INSERT INTO filler VALUES (?)", (("y" * 100,) for _ in range(30_000)))
        conn.execute("COMMIT")
    finally:
        conn.close()
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.seek((size // 2) // 4096 * 4096)
        file.write(b"\xde\xad\xbe\xef" * 1024)
