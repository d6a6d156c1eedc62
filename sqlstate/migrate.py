"""Schema migrations: discover ``migrations/NNNN_name.sql``, list them, apply the pending ones.

Each migration is applied together with its row in ``schema_migrations`` in one transaction, so a
crash mid-migration leaves the schema as it was. The applied set is re-read inside that transaction:
several daemons starting at once on a new file apply each migration exactly once.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

from sqlstate.errors import SchemaTooNewError
from sqlstate.store import Store, Transaction, utc_now

logger = logging.getLogger(__name__)

FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    name: str
    script: str


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


def statements(script: str) -> list[str]:
    """Split a SQL script into complete statements (SQLite decides where one ends)."""
    result: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            result.append(pending.strip())
            pending = ""
    leftover = "\n".join(
        line for line in pending.splitlines() if line.strip() and not line.strip().startswith("--")
    )
    if leftover:
        raise ValueError(f"incomplete SQL statement at the end of a migration: {leftover[:80]!r}")
    return result


async def _applied(tx: Transaction) -> dict[str, str]:
    await tx.execute("create_migrations_table")
    rows = await tx.fetchall("applied_migrations")
    return {row["name"]: row["applied_at"] for row in rows}


def _check_not_newer(applied: dict[str, str], known: list[Migration], store: Store) -> None:
    unknown = sorted(set(applied) - {migration.name for migration in known})
    if unknown:
        raise SchemaTooNewError(
            f"database {store.path} has schema migration {unknown[-1]} that this sqlstate does not"
            " know: it was written by a newer sqlstate; upgrade sqlstate (the file was not changed)"
        )


async def list_status(store: Store) -> list[MigrationStatus]:
    """Every known migration, applied or pending, without changing the database."""
    known = available()
    exists = await store.fetchall("migrations_table_exists")
    applied: dict[str, str] = {}
    if exists[0][0]:
        applied = {
            row["name"]: row["applied_at"] for row in await store.fetchall("applied_migrations")
        }
    _check_not_newer(applied, known, store)
    return [MigrationStatus(m.name, applied.get(m.name)) for m in known]


async def apply_pending(store: Store) -> list[str]:
    """Apply every pending migration, each in its own transaction; return the names applied.

    Also switches the database to WAL: every writer comes through here first.
    """
    await list_status(store)  # refuses a newer schema before anything is written
    await store.prepare_for_writing()
    known = available()
    done: list[str] = []
    for migration in known:

        async def apply(tx: Transaction, migration: Migration = migration) -> bool:
            applied = await _applied(tx)
            _check_not_newer(applied, known, store)
            if migration.name in applied:
                return False
            for statement in statements(migration.script):
                await tx.execute_script_statement(statement)
            await tx.execute("record_migration", {"name": migration.name, "applied_at": utc_now()})
            return True

        if await store.in_transaction(apply):
            logger.info("applied schema migration %s to %s", migration.name, store.path)
            done.append(migration.name)
    return done


async def schema_version(store: Store) -> str:
    """The newest applied migration, e.g. ``0001_initial``, or ``none``."""
    statuses = [s for s in await list_status(store) if s.applied_at is not None]
    return statuses[-1].name.removesuffix(".sql") if statuses else "none"
