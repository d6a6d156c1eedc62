"""Read a sqlstate database the way its users do: any SQLite client, read-only."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
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
