"""The SQL of the changelog that depends on a table's name and columns, built from its metadata.

The one exception to "SQL lives in queries.sql": a capture trigger, a delete by key and an
insert name the state table and each of its columns, and dropping one of the file's triggers
for an apply (``apply.py``, Python 3.11) names that trigger, which only the schema knows (a
``--sql`` processor's tables and triggers are the user's). Every name goes in as a quoted
identifier (``"a""b"``) or a string literal (``'it''s'``), so no table or column name can change
what a statement does.

What the triggers cannot see is refused before anything runs (``refuse_uncapturable``).

Capture (AFTER INSERT/UPDATE/DELETE, TEMP, on ``main``): each writes the changed row's record
into ``temp.changelog_capture``, the key as ``json_array(table, key columns...)`` and the value as
``json_object(column, value, ...)``, both built by SQLite (canonical text, no Python on the hot
path) and cast to BLOB so that Python receives the UTF-8 bytes Kafka sends. A BLOB becomes
``{"$blob": "<hex>"}``: SQLite's JSON functions refuse BLOBs, and a nested ``json_object`` keeps
its JSON subtype through ``CASE``, so it lands as an object, never as a string.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sqlstate.changelog.state_table import StateTable
from sqlstate.errors import ProcessorError
from sqlstate.state.queries import sql
from sqlstate.state.table_rows import quoted

# SQLite's default limit of arguments to a function (SQLITE_MAX_FUNCTION_ARG) is 127 before
# 3.48, and json_object takes two per column.
MAX_COLUMNS = 63


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _tagged(ref: str) -> str:
    """A column reference as a JSON value: BLOBs tagged, everything else as it is."""
    return f"CASE typeof({ref}) WHEN 'blob' THEN json_object('$blob', hex({ref})) ELSE {ref} END"


def capture_triggers(table: StateTable, columns: Sequence[str]) -> list[str]:
    """The TEMP triggers that record ``table``'s changed rows (``columns``: all of them, in
    declared order). An UPDATE that moves a row to another key also records a tombstone for the
    old key: a trigger of its own, ``UPDATE OF`` the key columns, so that SQLite does not even
    consider it for an UPDATE that sets none of them (an upsert adding to a count)."""
    if len(columns) > MAX_COLUMNS:
        raise ProcessorError(
            f"table {table.name} has {len(columns)} columns; under --changelog a state table has"
            f" at most {MAX_COLUMNS} (SQLite's json_object takes two arguments per column)"
        )
    name = quoted(table.name)

    new_value = _record_value(columns, "NEW")
    key_columns = ", ".join(map(quoted, table.key))
    moved = " OR ".join(f"OLD.{quoted(c)} IS NOT NEW.{quoted(c)}" for c in table.key)
    # Unqualified: SQLite refuses "temp." inside a trigger, and finds temp's table first. A plain
    # append: a conflict clause in a trigger gives way to the one of the statement that fired it
    # (an upsert's), so rows changed twice are reduced to their last value at the take.
    capture = "INSERT INTO changelog_capture (key, value)"
    return [
        f"CREATE TEMP TRIGGER IF NOT EXISTS {quoted('changelog_insert_' + table.name)}"
        f" AFTER INSERT ON main.{name} BEGIN"
        f" {capture} VALUES ({_record_key(table, 'NEW')}, {new_value}); END",
        # Created before the next one, the old key's tombstone comes before the new value
        # (SQLite runs a table's triggers in the order they were created; the tests check it):
        # one chunk of records never holds the new row beside the old.
        f"CREATE TEMP TRIGGER IF NOT EXISTS {quoted('changelog_rekey_' + table.name)}"
        f" AFTER UPDATE OF {key_columns} ON main.{name} WHEN {moved} BEGIN"
        f" {capture} VALUES ({_record_key(table, 'OLD')}, NULL); END",
        f"CREATE TEMP TRIGGER IF NOT EXISTS {quoted('changelog_update_' + table.name)}"
        f" AFTER UPDATE ON main.{name} BEGIN"
        f" {capture} VALUES ({_record_key(table, 'NEW')}, {new_value}); END",
        f"CREATE TEMP TRIGGER IF NOT EXISTS {quoted('changelog_delete_' + table.name)}"
        f" AFTER DELETE ON main.{name} BEGIN"
        f" {capture} VALUES ({_record_key(table, 'OLD')}, NULL); END",
    ]


def partition_rows(
    table: StateTable, columns: Sequence[str], partition: str, topic: str | None
) -> str:
    """Every row of ``table`` that belongs to one input partition, as the records a capture
    trigger makes of them (the same expressions, so the same bytes): the key column
    ``partition`` bound as ``:partition`` and, when the table has a column ``topic``, that
    bound as ``:topic``. What a claim publishes to seed a changelog that is still empty."""
    where = f"r.{quoted(partition)} = :partition"
    if topic is not None:
        where += f" AND r.{quoted(topic)} = :topic"
    return (
        f"SELECT {_record_key(table, 'r')}, {_record_value(columns, 'r')}"
        f" FROM main.{quoted(table.name)} AS r WHERE {where}"
    )


def _record_key(table: StateTable, row: str) -> str:
    """A changelog record's key made of ``row``'s key columns: the table, then the key."""
    parts = ", ".join(_tagged(f"{row}.{quoted(column)}") for column in table.key)
    return f"CAST(json_array({_literal(table.name)}, {parts}) AS BLOB)"


def _record_value(columns: Sequence[str], row: str) -> str:
    """A changelog record's value made of ``row``: every column, by name."""
    pairs = ", ".join(
        f"{_literal(column)}, {_tagged(f'{row}.{quoted(column)}')}" for column in columns
    )
    return f"CAST(json_object({pairs}) AS BLOB)"


def capture_trigger_names(table: StateTable) -> list[str]:
    """The names of ``capture_triggers``, in the order they are created (an apply drops them
    by these names; tests/unit/test_changelog_restore_apply.py checks they agree)."""
    return [f"changelog_{kind}_{table.name}" for kind in ("insert", "rekey", "update", "delete")]


def refuse_uncapturable(conn: sqlite3.Connection, table: StateTable) -> None:
    """``ProcessorError`` if ``table`` declares a change that no trigger would see.

    A foreign key's ON DELETE/ON UPDATE action: sqlstate runs SQLite with foreign_keys off
    (a standby applies a changed row as a delete and an insert, and a cascade there would delete
    rows its owner kept), so the declared action never runs on any host, which a schema that
    declares it does not expect. The same cascade as a trigger runs, and is captured.
    """
    actions = conn.execute(sql("foreign_key_actions"), {"table": table.name}).fetchall()
    if actions:
        parent, on_delete, on_update = actions[0]
        action = f"ON DELETE {on_delete}" if on_delete not in ("NO ACTION", "RESTRICT") else ""
        action = action or f"ON UPDATE {on_update}"
        raise ProcessorError(
            f"table {table.name} has a foreign key to {parent} with {action}, which sqlstate"
            " never runs (SQLite's foreign_keys stays off, on every host): under --changelog"
            f" write it as a trigger instead, e.g. AFTER DELETE ON {parent} BEGIN DELETE FROM"
            f" {table.name} WHERE ...; END"
        )


def delete_by_key(table: StateTable) -> str:
    """Delete ``table``'s row of one key, bound as ``?1 .. ?n`` in key order."""
    match = table.match or " AND ".join(
        f"{quoted(column)} IS ?{place}" for place, column in enumerate(table.key, start=1)
    )
    # On lines of their own: a match from queries.sql may start with -- comment lines.
    return f"DELETE FROM main.{quoted(table.name)} WHERE (\n{match}\n)"


def delete_partition(table: StateTable, partition: str, topic: str | None) -> str:
    """Delete every row of ``table`` that belongs to one input partition, as ``partition_rows``
    finds them: the key column ``partition`` bound as ``:partition`` and, when the table has a
    column ``topic``, that bound as ``:topic``. A partition restored whole
    (``apply.forget_for_restore``)."""
    where = f"{quoted(partition)} = :partition"
    if topic is not None:
        where += f" AND {quoted(topic)} = :topic"
    return f"DELETE FROM main.{quoted(table.name)} WHERE {where}"


def insert_row(table: str, columns: Sequence[str]) -> str:
    """Insert one row of ``table`` with ``columns`` bound as ``?`` in that order."""
    names = ", ".join(map(quoted, columns))
    return f"INSERT INTO main.{quoted(table)} ({names}) VALUES ({', '.join(['?'] * len(columns))})"


def drop_trigger(name: str) -> str:
    """Drop the file's (not a TEMP) trigger ``name``."""
    return f"DROP TRIGGER main.{quoted(name)}"


def drop_temp_trigger(name: str) -> str:
    """Drop this connection's TEMP trigger ``name`` (a capture trigger)."""
    return f"DROP TRIGGER temp.{quoted(name)}"
