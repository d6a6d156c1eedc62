"""The one transaction path against a second process holding the write lock: waits, retries,
gives up at shutdown, survives cancellation anywhere, and reports a commit iff it committed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sqlstate.errors import DatabaseBusyError, DatabaseError
from sqlstate.observe.stats import Stats
from sqlstate.state import database as database_module
from sqlstate.state import migrate
from sqlstate.state.database import Database
from tests.support.db import corrupt_file, query

# Takes a lock with the given BEGIN, says so, and keeps it until a line arrives on stdin.
HOLDER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute(sys.argv[2])
    print("held", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    conn.close()
    """
)


class Holder:
    """Another process holding a lock on the database, until ``release``."""

    def __init__(self, path: Path, begin: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path), begin],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        assert self._process.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self._process.returncode is None:
            self._process.communicate("\n", timeout=10)  # also closes both pipes


@contextlib.contextmanager
def holder(path: Path, begin: str = "BEGIN IMMEDIATE") -> Iterator[Holder]:
    held = Holder(path, begin)
    try:
        yield held
    finally:
        held.release()


async def open_database(path: Path, busy_timeout_s: float, stats: Stats | None = None) -> Database:
    database = await Database.open(path, busy_timeout_s=busy_timeout_s, stats=stats)
    await migrate.apply_pending(database)
    return database


def insert(owner: str, pause_s: float = 0.0) -> Callable[[sqlite3.Connection], str]:
    """A transaction's work: one positions row, after ``pause_s`` in the database thread."""

    def work(conn: sqlite3.Connection) -> str:
        time.sleep(pause_s)
        conn.execute(
            "INSERT INTO positions (topic, partition, next_offset, epoch, owner, log_end_offset,"
            " updated_at) VALUES ('t', ?, 0, 1, ?, NULL, '')",
            (len(owner), owner),
        )
        return owner

    return work


def owners(path: Path) -> list[str]:
    return [row[0] for row in query(path, "SELECT owner FROM positions ORDER BY owner")]


def write_lock_is_free(path: Path) -> bool:
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


async def test_cancelled_while_begin_waits_for_the_lock(tmp_path: Path) -> None:
    """The queued BEGIN still runs once the other process lets go: it must not keep the lock."""
    path = tmp_path / "s.db"
    database = await open_database(path, busy_timeout_s=10)
    try:
        with holder(path) as other:
            task = asyncio.create_task(database.transaction(insert("cancelled")))
            await asyncio.sleep(0.3)  # in BEGIN IMMEDIATE, waiting for the holder
            task.cancel()
            await asyncio.sleep(0.1)
            assert not task.done()  # it waits for the database thread's outcome
            other.release()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert write_lock_is_free(path)
        assert owners(path) == []  # the work never ran
        assert await database.transaction(insert("later")) == "later"
    finally:
        await database.close()
    assert owners(path) == ["later"]


async def test_cancelled_while_the_work_runs_reports_the_commit(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    database = await open_database(path, busy_timeout_s=5)
    seen: list[object] = []

    async def caller() -> None:
        seen.append(await database.transaction(insert("committed", pause_s=0.5)))
        await asyncio.sleep(0)  # the cancellation is delivered at the next await
        seen.append("not reached")

    try:
        task = asyncio.create_task(caller())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["committed"]
        assert write_lock_is_free(path)
    finally:
        await database.close()
    assert owners(path) == ["committed"]


async def test_cancelled_while_failing_work_runs_commits_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    database = await open_database(path, busy_timeout_s=5)

    def fails(conn: sqlite3.Connection) -> None:
        insert("half")(conn)
        time.sleep(0.4)
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    try:
        task = asyncio.create_task(database.transaction(fails))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert write_lock_is_free(path)
    finally:
        await database.close()
    assert owners(path) == []


async def test_a_lock_held_past_the_busy_timeout_is_waited_for_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    stats = Stats()
    database = await open_database(path, busy_timeout_s=0.2, stats=stats)
    try:
        with holder(path) as other:
            task = asyncio.create_task(database.transaction(insert("patient")))
            await asyncio.sleep(1.5)
            assert not task.done()
            other.release()
            assert await asyncio.wait_for(task, 10) == "patient"
    finally:
        await database.close()
    assert stats.busy_retries >= 1
    assert owners(path) == ["patient"]


async def test_shutdown_stops_the_retries(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    database = await open_database(path, busy_timeout_s=0.2)
    try:
        with holder(path):
            task = asyncio.create_task(database.transaction(insert("never")))
            await asyncio.sleep(0.5)
            database.stop_retrying()
            with pytest.raises(DatabaseBusyError, match="gave up at shutdown") as raised:
                await asyncio.wait_for(task, 5)
        assert raised.value.exit_code == 3
        assert write_lock_is_free(path)
    finally:
        await database.close()
    assert owners(path) == []


async def test_sqlite_errors_become_database_errors_and_roll_back(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    database = await open_database(path, busy_timeout_s=1)

    def half_then_fail(conn: sqlite3.Connection) -> None:
        insert("half")(conn)
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    try:
        with pytest.raises(DatabaseError, match=r"no such table.*rolled back") as raised:
            await database.transaction(half_then_fail)
        assert raised.value.exit_code == 3
    finally:
        await database.close()
    assert owners(path) == []


@pytest.mark.parametrize("name", ["x#y.db", "what?.db", "100%25.db", "a b.db"])
async def test_odd_file_names_open_that_very_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    database = await open_database(path, busy_timeout_s=1)
    await database.transaction(insert("here"))
    await database.close()
    files = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert files == [name]  # the last close checkpointed and removed the WAL
    reader = await Database.open(path, busy_timeout_s=1, read_only=True)
    try:
        assert await reader.read(
            lambda conn: conn.execute("SELECT owner FROM positions").fetchall()
        )
    finally:
        await reader.close()


def sqlstate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlstate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_counts_of_a_name_with_a_hash_opens_no_other_file(tmp_path: Path) -> None:
    result = sqlstate("counts", "--database", "x#y.db", cwd=tmp_path)
    assert result.returncode == 3
    assert "no database at x#y.db" in result.stderr
    assert list(tmp_path.iterdir()) == []
    migrated = sqlstate("migrate", "--database", "x#y.db", cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert sqlstate("counts", "--database", "x#y.db", cwd=tmp_path).returncode == 0
    # A read-only reader of a WAL file may leave its -wal and -shm beside it, nothing else.
    assert {p.name for p in tmp_path.iterdir()} <= {"x#y.db", "x#y.db-wal", "x#y.db-shm"}


def test_a_file_locked_at_the_journal_mode_pragma_exits_3_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE other (x)")  # a rollback-journal file: WAL is switched on later
    conn.commit()
    conn.close()
    # A writer in rollback-journal mode lets readers in (the checks pass) but keeps the lock
    # that switching to WAL needs.
    with holder(path, "BEGIN IMMEDIATE"):
        result = sqlstate("migrate", "--database", str(path), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sqlstate: error: database")
    assert "locked" in lines[0]
    assert query(path, "PRAGMA journal_mode") == [("delete",)]


async def test_a_large_file_is_checked_beside_and_no_commit_follows_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    database = await open_database(path, busy_timeout_s=1)
    await database.close()
    await asyncio.to_thread(corrupt_file, path)
    before = await asyncio.to_thread(path.read_bytes)
    # As if the file were 64 MiB or more: the check runs beside, after open returned.
    monkeypatch.setattr(database_module, "CHECK_FIRST_BELOW_BYTES", 0)
    found: list[DatabaseError] = []
    verdict = asyncio.Event()

    def on_corrupt(error: DatabaseError) -> None:
        found.append(error)
        verdict.set()

    database = await Database.open(path, busy_timeout_s=1, on_corrupt=on_corrupt)
    try:
        await asyncio.wait_for(verdict.wait(), 10)
        assert "is corrupt" in str(found[0])
        with pytest.raises(DatabaseError, match="stopped before committing anything more"):
            await database.transaction(insert("after the verdict"))
    finally:
        await database.close()
    # Nothing committed after the verdict, and the close did not checkpoint into the file.
    assert await asyncio.to_thread(path.read_bytes) == before


async def test_a_sound_large_file_checked_beside_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.db"
    database = await open_database(path, busy_timeout_s=1)
    await database.close()
    monkeypatch.setattr(database_module, "CHECK_FIRST_BELOW_BYTES", 0)
    caplog.set_level(logging.INFO, logger="sqlstate.database")
    found: list[DatabaseError] = []
    passed = asyncio.Event()
    loop = asyncio.get_running_loop()

    class Verdict(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("integrity check"):
                loop.call_soon_threadsafe(passed.set)

    handler = Verdict()
    logging.getLogger("sqlstate.database").addHandler(handler)
    database = await Database.open(path, busy_timeout_s=1, on_corrupt=found.append)
    try:
        assert await database.transaction(insert("during the check")) == "during the check"
        await asyncio.wait_for(passed.wait(), 10)
        assert await database.transaction(insert("after the check")) == "after the check"
    finally:
        logging.getLogger("sqlstate.database").removeHandler(handler)
        await database.close()
    assert found == []
    assert owners(path) == ["after the check", "during the check"]


async def test_connections_switching_one_new_file_to_wal_at_once_all_succeed(
    tmp_path: Path,
) -> None:
    # Daemons started together on one new file: SQLite answers one of two simultaneous
    # switches to WAL "locked" at once, without its busy timeout (each holds a shared lock).
    for attempt in range(20):
        path = tmp_path / f"s{attempt}.db"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE other (x)")  # rollback-journal mode until the switch
        conn.commit()
        conn.close()
        databases = [
            await Database._connect(path, busy_timeout_s=5.0, read_only=False, stats=Stats())
            for _ in range(4)
        ]
        try:
            await asyncio.gather(*(database.prepare_for_writing() for database in databases))
        finally:
            for database in databases:
                await database.close()
        assert query(path, "PRAGMA journal_mode") == [("wal",)]
