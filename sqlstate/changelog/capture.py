"""The owner's side: catch every row a batch changes, as changelog records, in its transaction.

``install_capture`` runs once per connection under ``--changelog``, after every migration (the
triggers need the tables' columns): a TEMP table and, on each state table, TEMP triggers AFTER
INSERT, UPDATE and DELETE (``table_sql.py``). TEMP objects live in the connection, never in the
file: other connections, other processes and the single-host mode see no trigger at all, so
without ``--changelog`` nothing is installed and nothing is slower.

The triggers fire inside the statements that change the rows, so the records are made in the
batch's own transaction: a rollback takes them back with the rows. Whatever changes a row is
caught the same way, a processor's statement, a user's trigger, an upsert's UPDATE, a
retention DELETE or a partition forgotten on reset, and the rows a ``REPLACE`` deletes through
another UNIQUE index (``INSERT OR REPLACE``, an UPSERT or ``UPDATE OR REPLACE``, a constraint
declared ``ON CONFLICT REPLACE``): SQLite fires DELETE triggers for those only under ``PRAGMA
recursive_triggers``, which every writing connection turns on (``Database.prepare_for_writing``).
A foreign key's cascade never runs: ``foreign_keys`` stays off (on a standby, which applies a
changed row as a delete and an insert, it would delete rows the owner kept), and a state table
that declares one is refused at start (``table_sql.refuse_uncapturable``).

After one partition's statements ran, ``take_changes`` returns that partition's records and
empties the table, so the next partition starts empty.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sqlstate.changelog.state_table import StateTable
from sqlstate.changelog.table_sql import capture_triggers
from sqlstate.changelog.tables import table_columns
from sqlstate.errors import ProcessorError
from sqlstate.state.queries import sql


def install_capture(conn: sqlite3.Connection, tables: Sequence[StateTable]) -> None:
    """Create the capture table and the triggers on each of ``tables`` for this connection.
    Idempotent. Run it outside a transaction (``Database.setting``) once migrations are done."""
    conn.execute(sql("create_changelog_capture"))
    for table in tables:
        columns = [name for name, _ in table_columns(conn, table.name)]
        if not columns:
            raise ProcessorError(
                f"changelog table {table.name} is not in the database: capture is installed"
                " after the migrations"
            )
        for trigger in capture_triggers(table, columns):
            conn.execute(trigger)


def take_changes(conn: sqlite3.Connection) -> list[tuple[bytes, bytes | None]]:
    """The records of the rows changed since the last take, then forget them: one per row
    (its last value, or None for a deleted row), ordered by each row's last change."""
    last: dict[bytes, bytes | None] = {}
    for key, value in conn.execute(sql("take_changelog_capture")):
        # Taken out and put back: a dict keeps its keys in the order they were first put in.
        last.pop(key, None)
        last[key] = value
    if last:
        conn.execute(sql("clear_changelog_capture"))
    return list(last.items())


def discard_changes(conn: sqlite3.Connection) -> None:
    """Forget what the triggers caught so far: what follows is one partition's alone."""
    conn.execute(sql("clear_changelog_capture"))
