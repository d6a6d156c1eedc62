"""A state table's rows, read whole: what ``sqlstate verify`` compares, table by table.

The one other exception, beside the changelog's ``table_sql.py``, to "SQL lives in queries.sql":
reading every row of a table names that table and its columns, which only the schema knows (a
``--sql`` processor's tables are the user's). Every name goes in as a quoted identifier
(``"a""b"``), so no table or column name can change what the statement does.

Each function runs in the database thread, on the connection of a read; none writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlstate.state.queries import sql

#: sqlstate's bookkeeping: where partitions stand and what the state was made with, not state.
BOOKKEEPING = frozenset(
    {
        "positions",
        "schema_migrations",
        "topics",
        "topic_starts",
        "state_settings",
        "topic_processors",
        "changelog_offsets",
        "changelog_topics",
        "processor_definitions",
        "changelog_seeds",
    }
)

Row = tuple[Any, ...]


@dataclass(frozen=True)
class TableShape:
    """A state table as compared: its columns in declared order, and the columns that identify
    a row (empty: none does, and rows are compared whole)."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]


def quoted(name: str) -> str:
    """``name`` as a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def state_tables(conn: sqlite3.Connection) -> list[str]:
    """The file's tables that hold state: every table but sqlstate's bookkeeping, by name."""
    names = {row[0] for row in conn.execute(sql("table_names"))}
    return sorted(names - BOOKKEEPING)


def shape(conn: sqlite3.Connection, table: str, declared: Sequence[str] | None) -> TableShape:
    """``table``'s shape: keyed by ``declared`` columns when its processor names them, else by
    its PRIMARY KEY, else by none."""
    columns = [(row[0], row[1]) for row in conn.execute(sql("table_columns"), {"table": table})]
    primary = tuple(name for name, place in sorted(columns, key=lambda c: c[1]) if place)
    return TableShape(
        table, tuple(name for name, _ in columns), tuple(declared) if declared else primary
    )


def read_rows(conn: sqlite3.Connection, table: TableShape) -> list[Row] | None:
    """Every row of ``table``, its columns in ``table.columns``' order; None when the file has
    no such table or lacks one of the columns. Any other error (a lock, an I/O error) is raised:
    taken for a missing table, it would make every recomputed row look missing from the file."""
    present = {row[0] for row in conn.execute(sql("table_columns"), {"table": table.name})}
    if not present.issuperset(table.columns):
        return None
    listed = ", ".join(map(quoted, table.columns))
    return [tuple(row) for row in conn.execute(f"SELECT {listed} FROM main.{quoted(table.name)}")]


def read_tables(
    conn: sqlite3.Connection, tables: Iterable[TableShape]
) -> dict[str, list[Row] | None]:
    """``read_rows`` of each table, in the caller's one read transaction."""
    return {table.name: read_rows(conn, table) for table in tables}
