"""The guard: each processor writes only its own tables, and never steps outside the batch.

SQLite itself says what a statement does: compiling a statement calls the connection's
authorizer once for every table it reads or writes, every function it calls, every schema object
it creates or drops, and every statement of a trigger it fires. So the guard keeps a scratch
database in memory with the whole schema (sqlstate's migrations, then each processor's, in
order), remembers who created each table, view, index and trigger, and compiles each of a
processor's statements there with ``EXPLAIN`` under an authorizer that refuses:

- writing (INSERT, UPDATE, DELETE, also from a trigger) a table another owner created:
  sqlstate's ``positions``, ``key_counts``, ``schema_migrations``, ... or another processor's;
  reading sqlstate's own tables and views (they hold owners, epochs and times, not records);
  and ``sqlite_sequence``, SQLite's AUTOINCREMENT counters, which every table shares;
- creating an index or trigger on, dropping or altering an object another owner created;
- an object named in sqlstate's name space, ``changelog_*`` or ``sqlstate_*``: sqlstate makes
  TEMP objects of those names on its connection (the changelog's capture table and triggers,
  the batch views), and an unqualified name finds the TEMP object first;
- writing, reading or dropping any TEMP object but the processor's own batch view (below): the
  scratch schema holds sqlstate's TEMP capture table, so a name resolves as it will at run time;
- anything that would end or escape the batch's transaction: BEGIN, COMMIT, SAVEPOINT, ATTACH,
  PRAGMA, VACUUM, virtual tables, temporary objects; and schema changes outside migrations.
  Some statements reach no authorizer call (``VACUUM INTO``, ``DROP ... IF EXISTS`` of an object
  the scratch schema lacks), so each statement's first keyword is checked too: a run-time
  statement is a query or a write (SELECT, INSERT, UPDATE, DELETE, REPLACE, WITH, VALUES), a
  migration statement also CREATE, DROP or ALTER;
- a function that is not one of SQLite's deterministic built-ins, or a reading of the clock
  (``determinism.py``), or a read of the database's own bookkeeping (``pragma_*``, ``dbstat``,
  ``sqlite_stat1``): state must be a function of the records.

A statement's ``setup`` (``Statement.setup``: how a SQL processor runs its record statement over
a batch in one call, ``batched.py``) may create only one temporary view and an ``INSTEAD OF``
trigger on it, both named ``sqlstate_batch_<processor>``; the trigger's statements are then
checked as the processor's own when the statement that fires them is compiled.

Nothing runs on the real database: ``EXPLAIN`` only compiles, and migrations run on the scratch
schema one statement at a time, each checked before it runs. A statement text is checked once,
the first time a processor returns it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from sqlstate.errors import ProcessorError
from sqlstate.processors.base import Parameters
from sqlstate.processors.batched import TEMPORARY_PREFIX
from sqlstate.processors.determinism import clock_reading, function_refusal
from sqlstate.state import migrate
from sqlstate.state.queries import Queries, sql

# sql(): sqlstate's own statements (its schema, mirrored here); processors_sql(): the guard's
# looks at the scratch schema, in processors/queries.sql.
processors_sql = Queries("sqlstate.processors")
SQLSTATE = "sqlstate"
# Tables of sqlstate's schema that a built-in processor writes. Only counts: its key_counts (and
# the counts view) came with sqlstate's first migration, from before processors had migrations
# of their own, so no migration of counts creates it and it is given to counts by name here (the
# registry keeps that name for the built-in). Creating it in a migration of counts instead would
# record a new migration in every existing file, which an older sqlstate then refuses.
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
_TRANSACTION = "a transaction statement (the batch is sqlstate's transaction)"
_SAVEPOINT = "a savepoint (the batch is sqlstate's transaction)"
_NEVER = {
    sqlite3.SQLITE_TRANSACTION: _TRANSACTION,
    sqlite3.SQLITE_SAVEPOINT: _SAVEPOINT,
    sqlite3.SQLITE_ATTACH: "ATTACH",
    sqlite3.SQLITE_DETACH: "DETACH",
    sqlite3.SQLITE_PRAGMA: "a PRAGMA",
    sqlite3.SQLITE_CREATE_VTABLE: "a virtual table",
    sqlite3.SQLITE_DROP_VTABLE: "a virtual table",
    sqlite3.SQLITE_CREATE_TEMP_TABLE: "a temporary table",
    sqlite3.SQLITE_CREATE_TEMP_INDEX: "a temporary index",
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER: "a temporary trigger",
    sqlite3.SQLITE_CREATE_TEMP_VIEW: "a temporary view",
    sqlite3.SQLITE_DROP_TEMP_TABLE: "dropping a temporary table",
    sqlite3.SQLITE_DROP_TEMP_INDEX: "dropping a temporary index",
    sqlite3.SQLITE_DROP_TEMP_TRIGGER: "dropping a temporary trigger",
    sqlite3.SQLITE_DROP_TEMP_VIEW: "dropping a temporary view",
    sqlite3.SQLITE_ANALYZE: "ANALYZE",
}
# SQLite's own bookkeeping of the schema, written as a side effect of CREATE (and of reading a
# table-valued function, which SQLite registers on first use). Not sqlite_sequence: SQLite
# writes it for AUTOINCREMENT without asking the authorizer, so a write that asks is explicit.
_INTERNAL_TABLES = {
    "sqlite_master",
    "sqlite_schema",
    "sqlite_temp_master",
    "sqlite_temp_schema",
}
# Tables whose rows are not the records' doing: the virtual tables that show the database's own
# bookkeeping (``pragma_data_version`` changes with every other connection's commit, ``dbstat``
# with the file's layout) and SQLite's statistics. (Not an allowlist of the schema's tables: a
# CTE's name is reported as a table too.)
_UNREPEATABLE_PREFIXES = ("pragma_", "sqlite_")
_UNREPEATABLE_TABLES = {"dbstat"}
_READABLE = _INTERNAL_TABLES | {"sqlite_sequence"}
# SQLite's own functions that ALTER TABLE calls to rewrite the schema's text; no statement can
# call them ("no such function"), so they reach the authorizer only from an ALTER.
_ALTER_FUNCTIONS = {
    "sqlite_drop_column",
    "sqlite_rename_column",
    "sqlite_rename_quotefix",
    "sqlite_rename_table",
    "sqlite_rename_test",
}
#: sqlstate's name space: sqlstate's TEMP objects (``changelog_capture``, the capture triggers,
#: ``sqlstate_batch_*``) and its tables (``changelog_offsets``). No processor object starts so.
RESERVED_PREFIXES = ("changelog_", "sqlstate_")
# The first keyword of each statement a processor may run: at run time, queries and writes; in
# a migration, schema changes too. The rest, refused, with what they are.
_RUN_TIME_KINDS = {"select", "insert", "update", "delete", "replace", "with", "values"}
_MIGRATION_KINDS = _RUN_TIME_KINDS | {"create", "drop", "alter"}
_SCHEMA_KINDS = _MIGRATION_KINDS - _RUN_TIME_KINDS
_KIND_NAMES = {"begin": _TRANSACTION, "commit": _TRANSACTION, "end": _TRANSACTION}
_KIND_NAMES |= {"rollback": _TRANSACTION, "savepoint": _SAVEPOINT, "release": _SAVEPOINT}
_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]*)", re.DOTALL)
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
        """sqlstate's own migrations: everything they create is sqlstate's. And its TEMP capture
        table (``--changelog``), so that a processor's names resolve here as on its connection."""
        for script in scripts:
            self._conn.executescript(script)
        self._conn.execute(sql("create_migrations_table"))
        self._conn.execute(sql("create_changelog_capture"))
        self._claim_new_objects(SQLSTATE, "sqlstate's schema")
        for processor, tables in WRITES_OF_BUILT_INS.items():
            for table in tables:
                self._owners[table] = processor

    def apply(self, processor: str, script: str, where: str) -> None:
        """Run a migration of ``processor`` (one or more statements) on the scratch schema, or
        raise ``ProcessorError`` saying why it may not be applied. ``where`` names it for
        people."""
        try:
            statements = migrate.split(script)
        except ValueError as error:
            raise ProcessorError(f"processor {processor} ({where}): {error}") from error
        for statement in statements:
            self._compile(processor, statement, None, True, where)
            self._claim_new_objects(processor, where)
            self._check_defaults(processor, statement, where)

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
        shown: str | None = None,
    ) -> None:
        """Compile (run, for a migration or a setup) ``statement`` under the authorizer.
        ``shown``: the statement people wrote, when ``statement`` is derived from it."""
        self._who, self._in_migration, self._refusal = processor, migration, None
        reason = self._text_reason(statement, migration)
        if reason is not None:
            raise ProcessorError(
                f"processor {processor} ({where}): {reason}: {_excerpt(shown or statement)}"
            )
        self._conn.set_authorizer(self._authorize)
        try:
            if migration or self._in_setup:
                self._conn.execute(statement)
            else:
                self._conn.execute(f"EXPLAIN {statement}", () if parameters is None else parameters)
        except (sqlite3.Error, ValueError) as error:
            # ValueError: a parameter of a type SQLite cannot bind, or a NUL in the text.
            reason = self._refusal or str(error)
            raise ProcessorError(
                f"processor {processor} ({where}): {reason}: {_excerpt(shown or statement)}"
            ) from error
        finally:
            self._conn.set_authorizer(None)

    def _text_reason(self, statement: str, migration: bool) -> str | None:
        """What the authorizer cannot see: the statement's kind (``VACUUM INTO`` and a ``DROP
        ... IF EXISTS`` of a missing object never call it) and a reading of the clock."""
        match = _FIRST_WORD.match(statement)
        kind = match.group(1).lower() if match else ""
        allowed = (
            {"create"} if self._in_setup else _MIGRATION_KINDS if migration else _RUN_TIME_KINDS
        )
        if kind and kind not in allowed:
            if kind in _SCHEMA_KINDS:
                return "schema changes belong in the processor's migrations"
            return f"{_KIND_NAMES.get(kind, kind.upper())} is not allowed in a processor"
        return clock_reading(statement)

    def _check_defaults(self, processor: str, statement: str, where: str) -> None:
        """A column's DEFAULT runs with the INSERTs that leave the column out, but the
        authorizer sees its functions only here, compiled on their own."""
        for name, owner in list(self._owners.items()):
            if owner != processor:
                continue
            for (default,) in self._conn.execute(
                processors_sql("column_defaults"), {"table": name}
            ).fetchall():
                self._compile(processor, f"SELECT {default}", None, False, where, statement)

    def _authorize(
        self, action: int, first: str | None, second: str | None, database: str | None, _: Any
    ) -> int:
        reason = self._reason(action, first, second, database)
        if reason is None:
            return sqlite3.SQLITE_OK
        self._refusal = reason
        return sqlite3.SQLITE_DENY

    def _reason(
        self, action: int, first: str | None, second: str | None, database: str | None
    ) -> str | None:
        if self._in_setup:
            return self._setup_reason(action, first, second)
        if action in _NEVER:
            return f"{_NEVER[action]} is not allowed in a processor"
        if action == sqlite3.SQLITE_FUNCTION:
            if self._in_migration and (second or "").lower() in _ALTER_FUNCTIONS:
                return None
            return function_refusal(second or "")
        if action == sqlite3.SQLITE_READ:
            return self._read_reason((first or "").lower(), database)
        if action in _WRITES:
            return self._write_reason(f"{_WRITES[action]} {first}", (first or "").lower(), database)
        if action in _CREATE or action in _ON_TABLE or action in _DROP:
            if not self._in_migration:
                return "schema changes belong in the processor's migrations"
            if action in _ON_TABLE:
                return self._not_owned(f"{_ON_TABLE[action]} {second}", (second or "").lower())
            if action in _DROP:
                return self._not_owned(f"{_DROP[action]} {first}", (first or "").lower())
        return None

    def _own_view(self) -> str:
        return f"{TEMPORARY_PREFIX}{self._who}".lower()

    def _read_reason(self, table: str, database: str | None) -> str | None:
        if database == "temp":
            if table == self._own_view() or table in _INTERNAL_TABLES:
                return None
            return f"it would read {table}, a temporary object of sqlstate's"
        if self._owners.get(table) == SQLSTATE:
            # Positions, claims and topics: owners, epochs, the times of claims and commits.
            return (
                f"it would read {table}, sqlstate's own table, which holds who ran when, not the"
                " records: state must be a function of the records"
            )
        if table in _READABLE or not (
            table.startswith(_UNREPEATABLE_PREFIXES) or table in _UNREPEATABLE_TABLES
        ):
            return None
        return (
            f"it would read {table}, the database's own bookkeeping, not the records': state"
            " must be a function of the records"
        )

    def _write_reason(self, what: str, table: str, database: str | None) -> str | None:
        if table in _INTERNAL_TABLES:
            return None  # made or dropped, the object's own refusal says why
        if database == "temp":
            if table == self._own_view():
                return None  # the batch form's insert into its own view (batched.py)
            return f"it would {what}, a temporary object of sqlstate's"
        if table == "sqlite_sequence":
            return (
                f"it would {what}, SQLite's AUTOINCREMENT counters, which every processor's"
                " tables share"
            )
        return self._not_owned(what, table)

    def _setup_reason(self, action: int, first: str | None, second: str | None) -> str | None:
        name = (first or "").lower()
        own = self._own_view()
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

    def _claim_new_objects(self, owner: str, where: str) -> None:
        """Record ``owner`` as the maker of every object new in the schema; refuse a name in
        sqlstate's name space (a CREATE, or an ALTER TABLE ... RENAME TO, made it)."""
        for (name,) in self._conn.execute(processors_sql("schema_objects")).fetchall():
            lowered = name.lower()
            if lowered in self._owners:
                continue
            if owner != SQLSTATE and lowered.startswith(RESERVED_PREFIXES):
                reserved = " and ".join(f"{prefix}*" for prefix in RESERVED_PREFIXES)
                raise ProcessorError(
                    f"processor {owner} ({where}): the name {name} is sqlstate's: sqlstate names"
                    f" its own tables and TEMP objects {reserved}, and an unqualified name finds"
                    " the TEMP object first; rename it"
                )
            self._owners[lowered] = owner


def _excerpt(statement: str) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= 120 else flat[:117] + "..."
