"""Running prepared statements in the open transaction: the one place a processor's SQL runs."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence

from sqlstate.state.model import Statement


def run_statements(conn: sqlite3.Connection, statements: Sequence[Statement]) -> Counter[str]:
    """Run prepared statements in order; return what the counting ones returned."""
    counters: Counter[str] = Counter()
    for statement in statements:
        for setup in statement.setup:
            conn.execute(setup)
        if statement.counter is None:
            conn.executemany(statement.sql, statement.rows)
            continue
        for row in statement.rows:
            counters[statement.counter] += int(conn.execute(statement.sql, row).fetchone()[0] or 0)
    return counters
