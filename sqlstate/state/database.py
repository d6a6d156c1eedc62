"""The one way sqlstate reaches its SQLite file: open it, check it, run a transaction on it.

Every transaction sqlstate makes is a plain synchronous function of a ``sqlite3.Connection``
(a ``Work``), and ``Database.transaction`` (or ``Database.read``) is the single call that runs
one. It owns everything around the work:

- ``BEGIN IMMEDIATE`` for writes: the write lock is taken at BEGIN, where SQLite's busy timeout
  applies, never by a later write of a deferred transaction (which fails at once with
  SQLITE_BUSY). Reads run in a plain ``BEGIN``, so that all their statements see one snapshot.
- ``COMMIT``, or ``ROLLBACK`` on any failure, in the database thread before the call returns:
  no transaction is ever left open, whatever happens to the task that awaits it.
- While another connection holds the write lock past the busy timeout: a warning, a pause and
  the whole transaction again, until it succeeds or ``stop_retrying`` is called (shutdown). A
  caller with a deadline (a rebalance callback) gives its own lock wait instead, and is told at
  once when the lock did not come (``transaction``'s ``lock_wait_s``).
- SQLite's errors become ``DatabaseError`` (exit code 3) with the file's name and one line.
- Cancellation: the work is handed to the connection's one thread, where nothing can stop it
  half-way. A task cancelled before its work began (say, while ``BEGIN IMMEDIATE`` waits for
  another process's lock) makes the work roll back unrun and raises ``CancelledError``; one
  cancelled while its work runs waits for the outcome and reports it as it is: a transaction
  that committed returns its result, and the cancellation is delivered at the task's next await.

aiosqlite is how the event loop reaches that thread: one connection, one worker thread, one
FIFO queue. Each call through it costs about 100 microseconds against under one for the sqlite3
module, which is why a whole transaction is one call. aiosqlite 0.22 has no public call that
runs a function in its thread; ``hand_to_thread`` puts it on the queue aiosqlite's own methods
use. That function is the only code that touches aiosqlite's internals, the package is pinned to
0.22.x for it, and tests/unit/test_aiosqlite_internals.py checks, naming the installed version,
that they are still what it expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import aiosqlite

from sqlstate.errors import DatabaseBusyError, DatabaseError
from sqlstate.observe.logs import LogEvent, rounded
from sqlstate.observe.stats import Stats
from sqlstate.state.handed_over import note_hand_over, refuse_if_handed_over
from sqlstate.state.queries import sql

logger = logging.getLogger("sqlstate.database")  # its documented name
_CHECK_PASSED = LogEvent(
    logger,
    logging.INFO,
    "integrity_check_passed",
    "integrity check of %(database)s: ok (%(check_s).2f s)",
    data={"check_s": rounded(3)},
)
_BUSY = LogEvent(
    logger,
    logging.WARNING,
    "database_busy",
    "database %(database)s is locked by another connection (attempt %(attempt)d); retrying",
)

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]

# Result codes (sqlite3.Error.sqlite_errorcode & 0xff) that mean "another connection holds it".
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_RETRY_PAUSE_S = 0.5
# A failed switch to WAL met another connection's switch, which takes milliseconds.
_SWITCH_RETRY_PAUSE_S = 0.01
# quick_check reads every page, about 350 MB a second on a current core (2.4 s for the 823 MB of
# 10,000,000 keys). A file below this size is checked before anything is written, in under
# 0.2 s; a larger one, beside start-up (``open``'s ``on_corrupt``).
CHECK_FIRST_BELOW_BYTES = 64 * 2**20


def is_busy(error: BaseException) -> bool:
    """Whether a SQLite error only means another connection holds the lock."""
    code = getattr(error, "sqlite_errorcode", None)
    return (
        isinstance(error, sqlite3.OperationalError)
        and code is not None
        and (code & 0xFF) in _BUSY_CODES
    )


def _primary_code(error: BaseException) -> int:
    return int(getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF


class _HotJournal(DatabaseError):
    """A read-only connection found a rollback journal that a crash left to replay."""


class _Abandoned(Exception):
    """The caller gave up before the work began: it was rolled back unrun."""


class _Call:
    """One hand-off to the database thread; ``abandoned`` is set by a caller that gave up.

    Read in the database thread and written in the event loop's: a plain attribute is enough,
    since it only ever goes from False to True and is read after BEGIN returns.
    """

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False


def utc_now() -> str:
    """Timestamps in the database: UTC, ISO 8601, millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _checked_path(path: Path, read_only: bool) -> Path:
    path = path.expanduser()
    if not path.parent.is_dir():
        raise DatabaseError(f"cannot open database {path}: folder {path.parent} does not exist")
    if read_only and not path.exists():
        raise DatabaseError(f"no database at {path}: run `sqlstate migrate` first")
    if path.is_dir():
        raise DatabaseError(f"cannot open database {path}: it is a folder")
    return path


def _create_private(path: Path) -> None:
    """Create ``path`` empty and readable by its owner only (0600), before SQLite opens it.

    The file holds record payloads. SQLite would create it 0644 (less the umask), and it gives
    the ``-wal``, ``-shm`` and ``-journal`` files it creates later the mode of the main file, so
    this one mode covers them all. An empty file is an empty database to SQLite. Created here
    with its mode rather than chmod-ed after SQLite made it, so that no byte is ever written to
    a file others may read; and without ``umask``, which is process-wide and would race with
    other threads creating files. A file that appeared meanwhile keeps the mode it has. A file
    that cannot be created (a read-only folder, a full disk) is left for SQLite's own open to
    report, as it reports any file it cannot open (``DatabaseError``, exit code 3).
    """
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def _size(path: Path) -> int:
    """The bytes quick_check would read: the file and its WAL."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def _uri(path: Path, read_only: bool) -> str:
    """A ``file:`` URI for ``path``: ``#``, ``?`` and ``%`` in a file name are percent-encoded,
    so they name the file rather than start a fragment or a query."""
    uri = path.absolute().as_uri()
    return f"{uri}?mode=ro" if read_only else uri


class Database:
    """An open SQLite database file and the one way to run transactions on it."""

    def __init__(
        self, conn: aiosqlite.Connection, path: Path, stats: Stats, busy_timeout_s: float
    ) -> None:
        self._conn = conn
        self.path = path
        self._stats = stats
        self._busy_timeout_s = busy_timeout_s
        self._stopping = False
        # The background integrity check (``check_integrity_beside``): its task, its connection
        # while it runs or after it found damage, and what it found.
        self._checking: asyncio.Task[None] | None = None
        self._checker: Database | None = None
        self._corruption: DatabaseError | None = None
        # Whether this connection noted the file's hand-over (``handed_over.py``): its write
        # transactions then check that no other came since.
        self._hand_over_noted = False
        self._closing = False

    # ---- opening ------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        busy_timeout_s: float,
        read_only: bool = False,
        check_integrity: bool = True,
        stats: Stats | None = None,
        on_corrupt: Callable[[DatabaseError], None] | None = None,
    ) -> Database:
        """Open (or, unless ``read_only``, create, readable by its owner only) the database and
        check it is a sound SQLite file; with ``check_integrity``, also run ``PRAGMA
        quick_check`` over every page.

        Nothing is written before the file is known to be a SQLite file, and, unless the check
        runs beside (below), before it passed quick_check: a wrong path, a foreign file or a
        corrupt database is reported and left exactly as it was. With ``on_corrupt``, a file of
        ``CHECK_FIRST_BELOW_BYTES`` or more is checked beside whatever comes next instead
        (``check_integrity_beside``), and ``on_corrupt`` hears of damage.
        """
        path = _checked_path(path, read_only)
        stats = stats or Stats()
        if check_integrity and on_corrupt is not None and _size(path) >= CHECK_FIRST_BELOW_BYTES:
            database = await cls.open(
                path, busy_timeout_s=busy_timeout_s, check_integrity=False, stats=stats
            )
            database.check_integrity_beside(on_corrupt)
            return database
        if not read_only and not path.exists():
            await asyncio.to_thread(_create_private, path)
            return await cls._connect(path, busy_timeout_s, False, stats)
        # Check through a read-only connection: closing the last read-write connection
        # checkpoints the WAL into the main file, which would change a file we refuse to use.
        checker = await cls._connect(path, busy_timeout_s, True, stats)
        try:
            await checker._check(check_integrity)
        except _HotJournal:
            await checker.close()
            if read_only:
                raise
            # A crash left a rollback journal (no WAL yet): SQLite's recovery replays it on the
            # first read of a read-write connection, and there is no WAL to checkpoint.
            database = await cls._connect(path, busy_timeout_s, False, stats)
            try:
                await database._check(check_integrity)
            except BaseException:
                await database.close()
                raise
            return database
        except BaseException:
            await checker.close()
            raise
        if read_only:
            return checker
        await checker.close()
        return await cls._connect(path, busy_timeout_s, False, stats)

    @classmethod
    @contextlib.asynccontextmanager
    async def reading(cls, path: Path, busy_timeout_s: float) -> AsyncIterator[Database]:
        """``path`` opened as any reader opens it: read-only, never its write lock, no
        integrity check; closed without a checkpoint (a reader's close must not write)."""
        database = await cls.open(
            path, busy_timeout_s=busy_timeout_s, read_only=True, check_integrity=False
        )
        try:
            yield database
        finally:
            await database.close(checkpoint=False)

    @classmethod
    async def _connect(
        cls, path: Path, busy_timeout_s: float, read_only: bool, stats: Stats
    ) -> Database:
        try:
            conn = await aiosqlite.connect(
                _uri(path, read_only), uri=True, isolation_level=None, timeout=busy_timeout_s
            )
        except sqlite3.Error as error:
            raise DatabaseError(f"cannot open database {path}: {error}") from error
        conn.row_factory = sqlite3.Row
        return cls(conn, path, stats, busy_timeout_s)

    async def _check(self, check_integrity: bool) -> None:
        try:
            await self.read(_check_readable)
            if check_integrity:
                problem = await self.read(_quick_check)
                if problem is not None:
                    raise self._corrupt(problem)
        except _HotJournal:
            raise
        except DatabaseError as error:
            cause = error.__cause__
            if cause is None or is_busy(cause):
                raise
            # quick_check itself fails this way when the damage is in the pages it must read.
            if _primary_code(cause) == sqlite3.SQLITE_CORRUPT:
                raise self._corrupt(str(cause)) from cause
            unusable = (
                _HotJournal
                if getattr(cause, "sqlite_errorcode", 0) == sqlite3.SQLITE_READONLY_ROLLBACK
                else DatabaseError
            )
            raise unusable(
                f"{self.path} is not a usable SQLite database ({cause}); it was left as it is"
            ) from cause

    def _corrupt(self, problem: str) -> DatabaseError:
        return DatabaseError(
            f"database {self.path} is corrupt ({problem}); it was left as it is:"
            " restore it from a backup, or move it away to rebuild from Kafka"
        )

    async def prepare_for_writing(self) -> None:
        """WAL, so readers never block the writer nor see an uncommitted batch; synchronous
        NORMAL; the page cache; DELETE triggers for every row a REPLACE deletes (the changelog
        capture ships them) and foreign key actions off, in both modes, so that a processor's
        rows are the same with or without --changelog. Called only once the file is known to be
        ours: it rewrites the file header. A locked file fails here like any transaction would
        (exit code 3)."""
        await self.setting(_require_json_functions)
        # Two connections switching one new file to WAL at once can deadlock: each holds a
        # shared lock and wants the exclusive one, so SQLite answers one of them "locked" at
        # once, without waiting its busy timeout. Tried again, the switch finds WAL in place.
        deadline = asyncio.get_running_loop().time() + self._busy_timeout_s
        while True:
            try:
                await self.setting(_prepare_for_writing)
                return
            except DatabaseBusyError:
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                await asyncio.sleep(_SWITCH_RETRY_PAUSE_S)

    def check_integrity_beside(self, on_corrupt: Callable[[DatabaseError], None]) -> None:
        """Run ``PRAGMA quick_check`` on a read-only connection of its own, beside whatever this
        connection does; if it finds damage, call ``on_corrupt`` and refuse every later COMMIT.

        quick_check reads every page (about 2.4 s for 10,000,000 keys), so the daemon runs it
        beside joining the group and the first batches instead of before them. A batch that
        commits before the verdict commits as it would have; none commits after it.
        """
        self._checking = asyncio.create_task(self._check_beside(on_corrupt))

    async def _check_beside(self, on_corrupt: Callable[[DatabaseError], None]) -> None:
        started = time.perf_counter()
        checker = await Database._connect(self.path, self._busy_timeout_s, True, Stats())
        if self._closing:  # closed while connecting: nothing to check any more
            await checker.close()
            return
        self._checker = checker
        try:
            problem = await checker.read(_quick_check_in_background)
        except DatabaseError as error:
            problem = str(error.__cause__ or error)
        if self._closing:  # interrupted by ``close``: no verdict
            return
        if problem is None:
            self._checker = None
            await checker.close()
            seconds = time.perf_counter() - started
            _CHECK_PASSED.log(database=str(self.path), check_s=seconds)
            return
        # The checker stays open until ``close``: while it is, closing our read-write connection
        # is not the last close, so SQLite does not checkpoint the WAL into the damaged file.
        self._corruption = DatabaseError(
            f"database {self.path} is corrupt ({problem}); sqlstate stopped before committing"
            " anything more: restore it from a backup, or move it away to rebuild from Kafka"
        )
        on_corrupt(self._corruption)

    async def close(self, checkpoint: bool = True) -> None:
        """Close the connection (and a background integrity check still running).

        ``checkpoint=False`` leaves the file and its WAL byte for byte as they are (a run that
        promises to change nothing): SQLite's last read-write connection to close copies the
        WAL into the main file and deletes it, so a read-only connection is held open across
        the close. It is then the last one, and a read-only connection never checkpoints.
        """
        self._closing = True
        checker = self._checker
        if checker is not None and self._corruption is None:
            # Stop a quick_check still reading: sqlite3_interrupt is safe from any thread, and
            # aiosqlite calls it at once, not through the queue the quick_check holds.
            await checker._conn.interrupt()
        if self._checking is not None:
            with contextlib.suppress(asyncio.CancelledError, DatabaseError):
                await self._checking
        if self._checker is not None and self._corruption is None:
            await self._checker.close()  # first, so that ours is the last close: it checkpoints
            self._checker = None
        # After damage was found, the checker stays open for the same reason.
        holder = self._checker
        if holder is None and not checkpoint:
            holder = await self._reader()
        await self._conn.close()
        if holder is not None:
            await holder.close()

    async def _reader(self) -> Database | None:
        """A read-only connection that has read the file (and so holds it open)."""
        try:
            reader = await Database._connect(self.path, self._busy_timeout_s, True, Stats())
        except DatabaseError:
            return None
        try:
            await reader.read(_check_readable)
        except DatabaseError:
            await reader.close()
            return None
        return reader

    def stop_retrying(self) -> None:
        """Make a transaction waiting on a locked database give up (at shutdown, whether asked
        for by a signal or by a fatal error)."""
        self._stopping = True

    # ---- the one way to run SQL ---------------------------------------------------------------

    async def transaction(self, work: Work[T], lock_wait_s: float | None = None) -> T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction and commit it.

        A locked database is waited for (busy timeout) and then retried with a warning, the
        whole transaction again, until it succeeds or shutdown begins. Any other failure rolls
        back and raises: nothing of a failed transaction is ever committed.

        With ``lock_wait_s``, for a caller with a deadline (a rebalance callback): the write
        lock is waited for that long instead, once, and a database still locked then raises
        ``DatabaseBusyError`` with nothing run.
        """
        if lock_wait_s is None:
            return await self._call(functools.partial(self._run, work, "begin_immediate"), True)
        run = functools.partial(self._run, work, "begin_immediate", lock_wait_s=lock_wait_s)
        return await self._call(run, False)

    async def read(self, work: Work[T]) -> T:
        """Run ``work`` in one read transaction: every statement sees the same snapshot.

        Not retried: in WAL mode a read waits for nobody, so a read that stays locked past the
        busy timeout means a foreign lock (a rollback-journal writer, an exclusive lock), which
        is reported (exit code 3) rather than waited out forever.
        """
        return await self._call(functools.partial(self._run, work, "begin"), False)

    async def note_hand_over(self) -> None:
        """A daemon's, once the file is migrated: from now on each write transaction first
        checks that ``sqlstate rebuild`` did not hand the file over since (``handed_over.py``)."""
        await self.setting(note_hand_over)
        self._hand_over_noted = True

    async def setting(self, work: Work[T]) -> T:
        """Run ``work`` outside any transaction, once: for PRAGMAs that cannot run inside one."""
        return await self._call(functools.partial(self._run, work, None), False)

    async def _call(self, run: Callable[[_Call, sqlite3.Connection], T], retry: bool) -> T:
        tries = 0
        while True:
            tries += 1
            try:
                return await self._hand_off(run)
            except sqlite3.Error as error:
                if retry and is_busy(error) and not self._stopping:
                    _BUSY.log(database=str(self.path), attempt=tries)
                    self._stats.busy_retries += 1
                    await asyncio.sleep(_RETRY_PAUSE_S)
                    continue
                raise self._translate(error) from error

    def _translate(self, error: sqlite3.Error) -> DatabaseError:
        if is_busy(error):
            return DatabaseBusyError(
                f"database {self.path} is locked by another connection ({error});"
                + (" gave up at shutdown" if self._stopping else " try again once it is free")
            )
        if _primary_code(error) == sqlite3.SQLITE_FULL:
            return DatabaseError(
                f"database {self.path}: {error} (disk or max_page_count full); the transaction"
                " was rolled back"
            )
        return DatabaseError(f"database {self.path}: {error}; the transaction was rolled back")

    async def _hand_off(self, run: Callable[[_Call, sqlite3.Connection], T]) -> T:
        """Run ``run`` in the connection's thread and report its outcome as it is."""
        call = _Call()
        try:
            future = hand_to_thread(self._conn, functools.partial(run, call))
        except _Closed:
            raise DatabaseError(f"database {self.path} is closed") from None
        cancels = 0
        while not future.done():
            try:
                await asyncio.wait([future])
            except asyncio.CancelledError:
                # The work runs on in the database thread whatever happens here; if it has not
                # begun, it will roll back unrun. Either way, wait for the outcome.
                cancels += 1
                call.abandoned = True
        if cancels == 0:
            return future.result()
        task = asyncio.current_task()
        if future.cancelled() or future.exception() is not None:
            with contextlib.suppress(BaseException):
                future.result()  # retrieved, so that asyncio does not log it as never seen
            raise asyncio.CancelledError
        if task is not None:
            # Committed: say so, and let the cancellation take effect at the next await.
            task.uncancel()
            task.cancel()
        return future.result()

    def _run(
        self,
        work: Work[T],
        begin: str | None,
        call: _Call,
        conn: sqlite3.Connection,
        lock_wait_s: float | None = None,
    ) -> T:
        """In the database thread: BEGIN, the work, COMMIT; or ROLLBACK, whatever fails."""
        if call.abandoned:
            raise _Abandoned
        if begin is None:
            return work(conn)
        if lock_wait_s is None:
            conn.execute(sql(begin))
        else:
            self._begin_within(conn, begin, lock_wait_s)
        try:
            if call.abandoned:  # gave up while BEGIN waited for the lock
                raise _Abandoned
            if self._hand_over_noted and begin == "begin_immediate":
                refuse_if_handed_over(conn)
            result = work(conn)
            if self._corruption is not None and begin == "begin_immediate":
                raise self._corruption
            # After SQLITE_FULL or SQLITE_IOERR, SQLite may already have rolled back by itself.
            if not conn.in_transaction:
                raise DatabaseError(f"database {self.path}: the transaction was rolled back")
            conn.execute(sql("commit"))
            return result
        except BaseException:
            if conn.in_transaction:
                conn.execute(sql("rollback"))
            raise

    def _begin_within(self, conn: sqlite3.Connection, begin: str, seconds: float) -> None:
        """BEGIN with the connection's busy timeout set to ``seconds`` for this BEGIN only."""
        conn.execute(sql("busy_timeout").format(milliseconds=max(1, round(seconds * 1000))))
        try:
            conn.execute(sql(begin))
        finally:
            default_ms = round(self._busy_timeout_s * 1000)
            conn.execute(sql("busy_timeout").format(milliseconds=default_ms))


class _Closed(Exception):
    """The aiosqlite connection is closed or closing: nothing more can be handed to it."""


def hand_to_thread(
    connection: aiosqlite.Connection, work: Callable[[sqlite3.Connection], T]
) -> asyncio.Future[T]:
    """Queue ``work(conn)`` for ``connection``'s thread at once (``conn``: its sqlite3
    connection), and return the future of its outcome. ``_Closed`` if it is closed.

    At once, not at the loop's next turn (as a task running aiosqlite's own ``_execute`` would):
    the batch loop hands a commit over and goes straight on to parse the next batch, which may
    not yield for a while, and the database thread must be working on the commit meanwhile.

    The one use of aiosqlite's internals, as aiosqlite 0.22's own ``_execute`` hands a call
    over: ``_running`` (False once ``stop`` began), ``_connection`` (the sqlite3 connection, None
    once closed) and ``_tx``, the queue of (future, function) its worker thread takes in order,
    setting the future's result or exception with ``call_soon_threadsafe``.
    """
    conn = connection._connection
    if not connection._running or conn is None:
        raise _Closed
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    connection._tx.put_nowait((future, functools.partial(work, conn)))
    return future


def _check_readable(conn: sqlite3.Connection) -> None:
    conn.execute(sql("check_readable")).fetchall()


def _quick_check(conn: sqlite3.Connection) -> str | None:
    """The first problem ``PRAGMA quick_check`` reports, or None for a sound file."""
    problems = [row[0] for row in conn.execute(sql("quick_check")) if row[0] != "ok"]
    return problems[0] if problems else None


def _quick_check_in_background(conn: sqlite3.Connection) -> str | None:
    """``_quick_check`` at the lowest CPU priority: it shares the machine with the batches.

    The checking connection has a thread of its own, which ends with it; on Linux a thread's
    nice value is its own, so only the check yields the CPU to the batch loop and its commits.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    return _quick_check(conn)


def _require_json_functions(conn: sqlite3.Connection) -> None:
    try:
        conn.execute(sql("json_functions")).fetchall()
    except sqlite3.OperationalError as error:
        raise DatabaseError(
            f"this Python's SQLite {sqlite3.sqlite_version} has no JSON functions ({error}),"
            " which sqlstate needs: use a Python built with SQLite 3.38 or later"
        ) from error


def _prepare_for_writing(conn: sqlite3.Connection) -> None:
    for name in (
        "journal_mode_wal",
        "synchronous_normal",
        "cache_size",
        "recursive_triggers_on",
        "foreign_keys_off",
    ):
        conn.execute(sql(name)).fetchall()
