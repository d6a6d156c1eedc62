"""The guard: each processor writes only its own tables, and never steps outside the batch.

SQLite itself says what a statement does: compiling a statement calls the connection's
authorizer once for every table it reads or writes, every function it calls, every schema object
it creates or drops, and every statement of a trigger it fires. So the guard keeps a scratch
database in memory with the whole schema (sqlstate's migrations, then each processor's, in
order), remembers who created each table, view, index and trigger, and compiles each of a
processor's statements there with ``EXPLAIN`` under an authorizer that refuses:

- writing (INSERT, UPDATE, DELETE, also from a trigger) a table another owner created:
  sqlstate's ``positions``, ``key_counts``, ``schema_migrations``, ... or another processor's;
- creating an index or trigger on, dropping or altering an object another owner created;
- anything that would end or escape the batch's transaction: BEGIN, COMMIT, SAVEPOINT, ATTACH,
  PRAGMA, virtual tables, temporary objects; and schema changes outside migrations;
- ``random()`` and ``randomblob()``: state must be a function of the records.

A statement's ``setup`` (``Statement.setup``: how a SQL processor runs its record statement over
a batch in one call, ``batched.py``) may create only one temporary view and an ``INSTEAD OF``
trigger on it, both named ``sqlstate_batch_<processor>``; the trigger's statements are then
checked as the processor's own when the statement that fires them is compiled.

Nothing runs on the real database: ``EXPLAIN`` only compiles. A statement text is checked once,
the first time a processor returns it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from sqlstate.errors import ProcessorError
from sqlstate.processors.base import Parameters
from sqlstate.processors.batched import TEMPORARY_PREFIX
from sqlstate.queries import sql

SQLSTATE = "sqlstate"
# Tables of sqlstate's schema that a built-in processor writes: the counts are sqlstate's own.
WRITES_OF_BUILT_INS = {"counts": {"key_counts"}}

_WRITES = {sqlite3.SQLITE_INSERT: "insert into", sqlite3.SQLITE_UPDATE: "update"}
_WRITES[sqlite3.SQLITE_DELETE] = "delete from"
# Schema changes and the table each is about (argument 1 or 2 of the authorizer).
_CREATE = {
    sqlite3.SQLITE_CREATE_TABLE: "create table",
    sqlite3.SQLITE_CREATE_VIEW: "create view",
}
_ON_TABLE = {
    sqlite3.SQLITE_CREATE_INDEX: "create an index on",
    sqlite3.SQLITE_CREATE_TRIGGER: "create a trigger on",
    sqlite3.SQLITE_DROP_INDEX: "drop an index of",
    sqlite3.SQLITE_DROP_TRIGGER: "drop a trigger of",
    sqlite3.SQLITE_ALTER_TABLE: "alter",
}
_DROP = {sqlite3.SQLITE_DROP_TABLE: "drop table", sqlite3.SQLITE_DROP_VIEW: "drop view"}
_NEVER = {
    sqlite3.SQLITE_TRANSACTION: "a transaction statement (the batch is sqlstate's transaction)",
    sqlite3.SQLITE_SAVEPOINT: "a savepoint (the batch is sqlstate's transaction)",
    sqlite3.SQLITE_ATTACH: "ATTACH",
    sqlite3.SQLITE_DETACH: "DETACH",
    sqlite3.SQLITE_PRAGMA: "a PRAGMA",
    sqlite3.SQLITE_CREATE_VTABLE: "a virtual table",
    sqlite3.SQLITE_DROP_VTABLE: "a virtual table",
    sqlite3.SQLITE_CREATE_TEMP_TABLE: "a temporary table",
    sqlite3.SQLITE_CREATE_TEMP_INDEX: "a temporary index",
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER: "a temporary trigger",
    sqlite3.SQLITE_CREATE_TEMP_VIEW: "a temporary view",
    sqlite3.SQLITE_ANALYZE: "ANALYZE",
}
_UNREPEATABLE_FUNCTIONS = {"random", "randomblob"}
# SQLite's own bookkeeping, written as a side effect of CREATE and AUTOINCREMENT.
_INTERNAL_TABLES = {
    "sqlite_master",
    "sqlite_schema",
    "sqlite_sequence",
    "sqlite_temp_master",
    "sqlite_temp_schema",
}
# What a statement's setup may do besides creating its view and trigger: SQLite's own
# bookkeeping of them.
_SETUP_BOOKKEEPING = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_READ}


class Guard:
    """The scratch schema, who owns what in it, and the statements already checked."""

    def __init__(self) -> None:
        self._conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._owners: dict[str, str] = {}  # lowercase object name -> its owner
        self._checked: set[tuple[str, ...]] = set()
        self._who = SQLSTATE
        self._in_migration = False
        self._in_setup = False
        self._temporary: set[str] = set()  # the temporary views that setups made
        self._refusal: str | None = None

    def close(self) -> None:
        self._conn.close()

    def add_sqlstate_schema(self, scripts: Iterable[str]) -> None:
        """sqlstate's own migrations: everything they create is sqlstate's."""
        for script in scripts:
            self._conn.executescript(script)
        self._conn.execute(sql("create_migrations_table"))
        self._claim_new_objects(SQLSTATE)
        for processor, tables in WRITES_OF_BUILT_INS.items():
            for table in tables:
                self._owners[table] = processor

    def apply(self, processor: str, script: str, where: str) -> None:
        """Run a migration of ``processor`` (one or more statements) on the scratch schema, or
        raise ``ProcessorError`` saying why it may not be applied. ``where`` names it for
        people."""
        self._compile(processor, script, None, True, where)
        self._claim_new_objects(processor)

    def check(
        self,
        processor: str,
        statement: str,
        parameters: Parameters | None,
        where: str,
        setup: Sequence[str] = (),
    ) -> None:
        """Refuse (``ProcessorError``) a run-time statement that ``processor`` may not run.

        ``parameters``: one row it would run with, for the compiler to bind; ``setup``: what
        runs before it (``Statement.setup``), run here on the scratch schema."""
        checked = (processor, statement, *setup)
        if checked in self._checked:
            return
        for text in setup:
            self._in_setup = True
            try:
                self._compile(processor, text, None, False, where)
            finally:
                self._in_setup = False
        self._compile(processor, statement, parameters, False, where)
        self._checked.add(checked)

    def _compile(
        self,
        processor: str,
        statement: str,
        parameters: Parameters | None,
        migration: bool,
        where: str,
    ) -> None:
        self._who, self._in_migration, self._refusal = processor, migration, None
        self._conn.set_authorizer(self._authorize)
        try:
            if migration:
                self._conn.executescript(statement)
            elif self._in_setup:
                self._conn.execute(statement)
            else:
                self._conn.execute(f"EXPLAIN {statement}", () if parameters is None else parameters)
        except (sqlite3.Error, ValueError) as error:
            # ValueError: a parameter of a type SQLite cannot bind, or a NUL in the text.
            reason = self._refusal or str(error)
            raise ProcessorError(
                f"processor {processor} ({where}): {reason}: {_excerpt(statement)}"
            ) from error
        finally:
            self._conn.set_authorizer(None)

    def _authorize(
        self, action: int, first: str | None, second: str | None, database: str | None, _: Any
    ) -> int:
        reason = self._reason(action, first, second)
        if reason is None:
            return sqlite3.SQLITE_OK
        self._refusal = reason
        return sqlite3.SQLITE_DENY

    def _reason(self, action: int, first: str | None, second: str | None) -> str | None:
        if self._in_setup:
            return self._setup_reason(action, first, second)
        if action in _NEVER:
            return f"{_NEVER[action]} is not allowed in a processor"
        if action == sqlite3.SQLITE_FUNCTION and (second or "").lower() in _UNREPEATABLE_FUNCTIONS:
            return f"{second}() is not repeatable: state must be a function of the records"
        if action in _WRITES:
            table = (first or "").lower()
            if table in _INTERNAL_TABLES:
                return None
            return self._not_owned(f"{_WRITES[action]} {first}", table)
        if action in _CREATE or action in _ON_TABLE or action in _DROP:
            if not self._in_migration:
                return "schema changes belong in the processor's migrations"
            if action in _ON_TABLE:
                return self._not_owned(f"{_ON_TABLE[action]} {second}", (second or "").lower())
            if action in _DROP:
                return self._not_owned(f"{_DROP[action]} {first}", (first or "").lower())
        return None

    def _setup_reason(self, action: int, first: str | None, second: str | None) -> str | None:
        name = (first or "").lower()
        own = f"{TEMPORARY_PREFIX}{self._who}".lower()
        if action == sqlite3.SQLITE_CREATE_TEMP_VIEW and name == own and name not in self._owners:
            self._temporary.add(name)
            return None
        if (
            action == sqlite3.SQLITE_CREATE_TEMP_TRIGGER
            and name == own
            and (second or "").lower() in self._temporary
        ):
            return None
        if action in _SETUP_BOOKKEEPING and name in _INTERNAL_TABLES:
            return None
        return f"a statement's setup may only create the temporary view {own} and a trigger on it"

    def _not_owned(self, what: str, table: str) -> str | None:
        owner = self._owners.get(table)
        if owner is None or owner == self._who:
            return None  # its own, or made by this very statement
        sqlstate = owner == SQLSTATE or owner in WRITES_OF_BUILT_INS
        whose = "sqlstate's own table" if sqlstate else f"a table of processor {owner}"
        return f"it would {what}, {whose}"

    def _claim_new_objects(self, owner: str) -> None:
        for (name,) in self._conn.execute(sql("schema_objects")):
            self._owners.setdefault(name.lower(), owner)


def _excerpt(statement: str) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= 120 else flat[:117] + "..."
