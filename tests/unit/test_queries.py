"""Every named query parses and compiles against the migrated schema (the built-in processors'
migrations included)."""

from __future__ import annotations

import contextlib
import re
import sqlite3

import pytest

from sqlstate.state import migrate, queries
from sqlstate.state.queries import parse


def test_parse_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_every_query_compiles() -> None:
    with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        for migration in migrate.available():
            conn.executescript(migration.script)
        for processor in ("latest", "windowed-counts"):
            for migration in migrate.bundled(processor):
                conn.executescript(migration.script)
        conn.execute(queries.sql("create_migrations_table"))
        conn.execute(queries.sql("create_changelog_capture"))
        transaction_control = {"begin_immediate", "commit", "rollback"}
        # Templates around a SQL processor's own statement: tests/unit/test_sql_file.py runs them.
        batch_form = {"batch_records_view", "batch_records_trigger", "insert_batch_records"}
        for name, statement in queries._all().items():
            if name in transaction_control | batch_form or statement.upper().startswith(
                ("PRAGMA", "SAVEPOINT", "ROLLBACK", "RELEASE")
            ):
                continue
            if name.startswith("changelog_match_"):
                # A condition that finds a row of the table it is named after, not a statement.
                table = name.removeprefix("changelog_match_")
                statement = f"SELECT 1 FROM {table} WHERE (\n{statement}\n)"
            # A PRAGMA takes no bound parameters: its {placeholders} are formatted in as integers.
            statement = re.sub(r"\{\w+\}", "0", statement)
            conn.execute(f"EXPLAIN {statement}", _dummy_params(statement))


def _dummy_params(statement: str) -> dict[str, None] | tuple[None, ...]:
    if "?" in statement:
        numbered = [int(n) for n in re.findall(r"\?(\d+)", statement)]
        return (None,) * (max(numbered) if numbered else statement.count("?"))
    return {name: None for name in re.findall(r":(\w+)", statement)}
