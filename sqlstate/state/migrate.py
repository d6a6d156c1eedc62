"""Schema migrations: discover ``migrations/NNNN_name.sql``, list them, apply the pending ones.

Each migration is applied together with its row in ``schema_migrations`` in one transaction, so a
crash mid-migration leaves the schema as it was. The applied set is re-read inside that transaction:
several daemons starting at once on a new file apply each migration exactly once.

Processors bring migrations of their own (``Processor.migrations``): they are applied the same
way after sqlstate's, and recorded as ``<processor>/<migration>``, so that two processors never
collide and sqlstate's own list stays its own.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

from sqlstate.errors import SchemaTooNewError
from sqlstate.observe.logs import LogEvent
from sqlstate.state.database import Database, utc_now
from sqlstate.state.queries import sql

logger = logging.getLogger("sqlstate.migrate")  # its documented name
_APPLIED = LogEvent(
    logger,
    logging.INFO,
    "migration_applied",
    "applied schema migration %(migration)s to %(database)s",
)
_PROCESSOR_APPLIED = LogEvent(
    logger,
    logging.INFO,
    "migration_applied",
    "applied migration %(migration)s of processor %(processor)s to %(database)s",
)

FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    """One step of a processor's schema: ``name`` as ``NNNN_what``; ``script`` one or more
    SQL statements, applied in one transaction together with its record."""

    name: str
    script: str


class ProcessorSchema(Protocol):
    """What migrating needs of a processor (``processors.Processor`` is one): the name that
    namespaces its recorded migrations, and the migrations."""

    @property
    def name(self) -> str: ...

    @property
    def migrations(self) -> Sequence[Migration]: ...


@dataclass(frozen=True)
class MigrationStatus:
    name: str
    applied_at: str | None  # None: pending


def available() -> list[Migration]:
    """The migrations this version of sqlstate ships, in order."""
    folder = resources.files("sqlstate").joinpath("migrations")
    found = [
        Migration(entry.name, entry.read_text("utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    for migration in found:
        if not FILE_NAME.match(migration.name):
            raise ValueError(f"migration file name {migration.name!r} is not NNNN_name.sql")
    return sorted(found, key=lambda migration: migration.name)


def bundled(package: str) -> list[Migration]:
    """The migrations a processor's package ships beside its code, ``migrations/NNNN_what.sql``
    in the package's folder (``sqlstate/processors/latest/migrations/0001_latest.sql``), in
    order; each is named by its file name without ``.sql``."""
    folder = resources.files(package).joinpath("migrations")
    found = [
        Migration(entry.name.removesuffix(".sql"), entry.read_text("utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    for migration in found:
        if not FILE_NAME.match(f"{migration.name}.sql"):
            raise ValueError(f"migration file name {migration.name!r} is not NNNN_name.sql")
    return sorted(found, key=lambda migration: migration.name)


def statements(script: str) -> list[str]:
    """Split a SQL script into complete statements (SQLite decides where one ends): the
    statements of a migration, applied one by one."""
    return split(script)


def split(script: str) -> list[str]:
    """``statements``, for callers that only check a script (the crash tests' fault injection
    wraps ``statements`` to count the statements of migrations being applied)."""
    result: list[str] = []
    pending = ""
    # Every statement ends at a ';', but not every ';' ends one (strings, comments, a trigger's
    # body): grow the text ';' by ';' until SQLite calls it complete.
    pieces = script.split(";")
    for piece in pieces[:-1]:
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            result.append(pending.strip())
            pending = ""
    pending += pieces[-1]
    leftover = "\n".join(
        line for line in pending.splitlines() if line.strip() and not line.strip().startswith("--")
    )
    if leftover:
        raise ValueError(f"incomplete SQL statement at the end of a migration: {leftover[:80]!r}")
    return result


def _applied(conn: sqlite3.Connection) -> dict[str, str]:
    """The applied migrations, {name: applied_at}; none when the bookkeeping table is missing."""
    if not conn.execute(sql("migrations_table_exists")).fetchone()[0]:
        return {}
    return {row["name"]: row["applied_at"] for row in conn.execute(sql("applied_migrations"))}


def namespaced(processor: str, migration: str) -> str:
    """How a processor's migration is recorded in ``schema_migrations``."""
    return f"{processor}/{migration}"


def _check_not_newer(
    applied: dict[str, str], known: list[Migration], path: Path, processor: str | None = None
) -> None:
    """Refuse a database with a migration of sqlstate (or of ``processor``) that this code does
    not know. Each checks only its own namespace."""
    prefix = "" if processor is None else namespaced(processor, "")
    mine = {name for name in applied if name.startswith(prefix) and "/" not in name[len(prefix) :]}
    unknown = sorted(mine - {migration.name for migration in known})
    if not unknown:
        return
    if processor is None:
        raise SchemaTooNewError(
            f"database {path} has schema migration {unknown[-1]} that this sqlstate does not"
            " know: it was written by a newer sqlstate; upgrade sqlstate (the file was not changed)"
        )
    raise SchemaTooNewError(
        f"database {path} has migration {unknown[-1]} of processor {processor}, which the"
        f" processor does not have now: the database was written by another version of it (for"
        " a --sql file: its schema section changed since it was applied). An applied migration"
        " is never changed; add a new one, or start on a new database (the file was not changed)"
    )


def _status(conn: sqlite3.Connection, known: list[Migration], path: Path) -> list[MigrationStatus]:
    applied = _applied(conn)
    _check_not_newer(applied, known, path)
    own = [MigrationStatus(m.name, applied.get(m.name)) for m in known]
    # Processors' migrations are listed as applied; which are pending only ``run`` knows.
    theirs = [MigrationStatus(name, at) for name, at in sorted(applied.items()) if "/" in name]
    return own + theirs


def _apply(
    conn: sqlite3.Connection,
    migration: Migration,
    known: list[Migration],
    path: Path,
    processor: str | None = None,
) -> bool:
    """In one transaction: apply ``migration`` and record it, unless it already is. The applied
    set is read again here, so that of several daemons starting at once only one applies it.
    ``known`` and ``migration`` are ``processor``'s, with their names as recorded."""
    conn.execute(sql("create_migrations_table"))
    applied = _applied(conn)
    _check_not_newer(applied, known, path, processor)
    if migration.name in applied:
        return False
    for statement in statements(migration.script):
        conn.execute(statement)
    conn.execute(sql("record_migration"), {"name": migration.name, "applied_at": utc_now()})
    return True


async def list_status(database: Database) -> list[MigrationStatus]:
    """Every known migration, applied or pending, without changing the database."""
    known = available()
    return await database.read(functools.partial(_status, known=known, path=database.path))


async def apply_pending(database: Database) -> list[str]:
    """Apply every pending migration, each in its own transaction; return the names applied.

    Also switches the database to WAL: every writer comes through here first.
    """
    await list_status(database)  # refuses a newer schema before anything is written
    await database.prepare_for_writing()
    known = available()
    done: list[str] = []
    for migration in known:
        apply = functools.partial(_apply, migration=migration, known=known, path=database.path)
        if await database.transaction(apply):
            _APPLIED.log(migration=migration.name, database=str(database.path))
            done.append(migration.name)
    return done


async def apply_processor_migrations(
    database: Database, processors: Sequence[ProcessorSchema]
) -> list[str]:
    """Apply every pending migration of each processor, in the processors' order, each in its own
    transaction with its record; return the names applied, as recorded."""
    done: list[str] = []
    for processor in processors:
        known = [
            Migration(namespaced(processor.name, m.name), m.script)
            for m in sorted(processor.migrations, key=lambda m: m.name)
        ]
        for migration in known:
            apply = functools.partial(
                _apply,
                migration=migration,
                known=known,
                path=database.path,
                processor=processor.name,
            )
            if await database.transaction(apply):
                _PROCESSOR_APPLIED.log(
                    migration=migration.name, processor=processor.name, database=str(database.path)
                )
                done.append(migration.name)
    return done


async def schema_version(database: Database) -> str:
    """The newest applied migration of sqlstate's own, e.g. ``0001_initial``, or ``none``."""
    statuses = [
        s for s in await list_status(database) if s.applied_at is not None and "/" not in s.name
    ]
    return statuses[-1].name.removesuffix(".sql") if statuses else "none"
