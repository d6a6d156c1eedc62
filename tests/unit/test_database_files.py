"""Opening databases that are not what they should be: each gets a clear error, none is changed."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from sqlstate.errors import DatabaseError, SchemaTooNewError
from sqlstate.state import migrate
from sqlstate.state.database import Database
from tests.support.db import query_value, writing


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="does not exist"):
        await Database.open(tmp_path / "nope" / "s.db", busy_timeout_s=5.0)
    assert not (tmp_path / "nope").exists()


async def test_not_a_database_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not sqlite\n" * 200)
    before = digest(path)
    with pytest.raises(DatabaseError, match="not a usable SQLite database"):
        await Database.open(path, busy_timeout_s=5.0)
    assert digest(path) == before
    assert not await asyncio.to_thread(Path(f"{path}-wal").exists)


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await Database.open(path, busy_timeout_s=5.0)
    await migrate.apply_pending(store)
    await store.close()
    with writing(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES ('9999_future.sql', 'x')")
    before = digest(path)
    store = await Database.open(path, busy_timeout_s=5.0)
    try:
        with pytest.raises(SchemaTooNewError, match="9999_future"):
            await migrate.apply_pending(store)
    finally:
        await store.close()
    assert digest(path) == before


async def test_migrations_apply_once_and_list(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await Database.open(path, busy_timeout_s=5.0)
    try:
        assert [s.applied_at for s in await migrate.list_status(store)] == [None] * len(
            migrate.available()
        )
        assert await migrate.apply_pending(store) == [m.name for m in migrate.available()]
        assert await migrate.apply_pending(store) == []
        assert all(s.applied_at for s in await migrate.list_status(store))
    finally:
        await store.close()
    assert query_value(path, "PRAGMA journal_mode") == "wal"


def modes(path: Path) -> dict[str, int]:
    """The permission bits of the database and of the side files SQLite keeps beside it."""
    return {
        p.name: p.stat().st_mode & 0o777
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
        if p.exists()
    }


async def test_a_new_database_and_its_side_files_are_readable_by_their_owner_only(
    tmp_path: Path,
) -> None:
    """They hold record payloads: 0600 whatever the umask lets through (0644 by default). A
    file that exists keeps the mode its owner gave it, and so do its side files."""
    path = tmp_path / "s.db"
    store = await Database.open(path, busy_timeout_s=5.0)
    try:
        await migrate.apply_pending(store)
        open_modes = modes(path)  # while open, in WAL mode: the -wal and -shm exist
    finally:
        await store.close()
    assert open_modes == {"s.db": 0o600, "s.db-wal": 0o600, "s.db-shm": 0o600}
    assert modes(path) == {"s.db": 0o600}

    path.chmod(0o640)  # a group of readers, say
    store = await Database.open(path, busy_timeout_s=5.0)
    try:
        await migrate.apply_pending(store)
        assert modes(path) == {"s.db": 0o640, "s.db-wal": 0o640, "s.db-shm": 0o640}
    finally:
        await store.close()


def test_migration_file_names() -> None:
    names = [m.name for m in migrate.available()]
    assert names, "no migrations found"
    assert all(migrate.FILE_NAME.match(name) for name in names)
    numbers = [int(name[:4]) for name in names]
    assert numbers == list(range(1, len(names) + 1)), "migrations must be numbered 0001, 0002, ..."


def test_statements_split() -> None:
    script = "-- c\nCREATE TABLE a (x);\nCREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; END;\n"
    assert len(migrate.statements(script)) == 2
    with pytest.raises(ValueError, match="incomplete"):
        migrate.statements("CREATE TABLE a (x)")
