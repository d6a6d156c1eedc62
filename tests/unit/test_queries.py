"""Every named query of every package (sqlstate's own, the processor framework's, each built-in
processor's) parses and compiles against the migrated schema (the built-in processors'
migrations included)."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path

import pytest

import sqlstate
from sqlstate.state import migrate, queries
from sqlstate.state.queries import parse

ROOT = Path(sqlstate.__file__).parent


def packages_with(name: str) -> list[str]:
    """Every package of sqlstate that holds ``name`` (a file or a folder) beside its code."""
    depth = name.count("/")
    found = [path.parents[depth].relative_to(ROOT).parts for path in ROOT.glob(f"**/{name}")]
    return sorted({".".join(("sqlstate", *parts)) for parts in found})


def test_every_package_sql_is_found() -> None:
    assert packages_with(queries.FILE) == [
        "sqlstate.processors",
        "sqlstate.processors.counts",
        "sqlstate.processors.latest",
        "sqlstate.processors.windowed_counts",
        "sqlstate.state",
    ]
    assert packages_with("migrations/0001_*.sql") == [
        "sqlstate",
        "sqlstate.processors.latest",
        "sqlstate.processors.windowed_counts",
    ]


def test_parse_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_every_query_compiles() -> None:
    with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        for migration in migrate.available():
            conn.executescript(migration.script)
        for package in packages_with("migrations/0001_*.sql"):
            if package != "sqlstate":  # sqlstate's own: migrate.available(), above
                for migration in migrate.bundled(package):
                    conn.executescript(migration.script)
        conn.execute(queries.sql("create_migrations_table"))
        conn.execute(queries.sql("create_changelog_capture"))
        conn.execute(queries.sql("create_hand_over_seen"))
        # sqlstate rebuild's hand-over reads the work file attached as "rebuild".
        conn.execute("ATTACH DATABASE ':memory:' AS rebuild")
        for table in (
            "positions",
            "topic_processors",
            "schema_migrations",
            "changelog_offsets",
            "changelog_topics",
            "processor_definitions",
        ):
            conn.execute(f"CREATE TABLE rebuild.{table} AS SELECT * FROM main.{table} WHERE 0")
        transaction_control = {"begin_immediate", "commit", "rollback"}
        # Templates around a SQL processor's own statement: tests/unit/test_sql_file.py runs them.
        batch_form = {"batch_records_view", "batch_records_trigger", "insert_batch_records"}
        every = [
            (name, statement)
            for package in packages_with(queries.FILE)
            for name, statement in queries.named(package).items()
        ]
        for name, statement in every:
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
