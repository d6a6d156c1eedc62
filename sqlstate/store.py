"""The SQLite database: owns the connection, its settings and every transaction sqlstate makes.

All statements come by name from ``queries.sql``. Connections use ``isolation_level=None`` so
that no implicit DEFERRED transaction can upgrade to a write and fail with SQLITE_BUSY without
waiting; each write transaction is an explicit ``BEGIN IMMEDIATE`` that waits up to the busy
timeout.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite
from aiokafka import TopicPartition

from sqlstate.errors import DatabaseBusyError, DatabaseError
from sqlstate.queries import sql

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Result codes (sqlite3.OperationalError.sqlite_errorcode & 0xff) that mean "try again later".
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_RETRY_PAUSE_S = 0.5


def utc_now() -> str:
    """Timestamps in the database: UTC, ISO 8601, millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def is_busy(error: BaseException) -> bool:
    """Whether a SQLite error only means another connection holds the lock."""
    code = getattr(error, "sqlite_errorcode", None)
    return (
        isinstance(error, sqlite3.OperationalError)
        and code is not None
        and (code & 0xFF) in _BUSY_CODES
    )


@dataclass(frozen=True)
class Claim:
    """What a consumer holds after claiming a partition: where to start and its fencing epoch."""

    next_offset: int
    epoch: int


@dataclass(frozen=True)
class Position:
    """One row of the positions table."""

    topic: str
    partition: int
    next_offset: int
    epoch: int
    owner: str
    log_end_offset: int | None
    updated_at: str


@dataclass(frozen=True)
class PartitionAdvance:
    """One partition's share of a batch: its records and the position move that goes with them."""

    tp: TopicPartition
    epoch: int
    expected_offset: int
    next_offset: int
    log_end_offset: int | None
    records: Sequence[Any]


@dataclass(frozen=True)
class Write:
    """One statement of a batch's transaction, as a processor prepares it: a named query from
    ``queries.sql`` and the rows of parameters to run it with (one ``executemany``)."""

    query: str
    rows: Sequence[Sequence[Any]] | Sequence[Mapping[str, Any]]


class Transaction:
    """A write transaction in progress; statements are named, from ``queries.sql``."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, name: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> int:
        """Run one statement; return how many rows it changed."""
        cursor = await self._conn.execute(sql(name), params)
        rowcount = cursor.rowcount
        await cursor.close()
        return rowcount

    async def executemany(self, name: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for many rows in a single call to the database thread."""
        await self._conn.executemany(sql(name), rows)

    async def write(self, write: Write) -> None:
        await self._conn.executemany(sql(write.query), write.rows)

    async def execute_script_statement(self, statement: str) -> None:
        """Run one statement of a migration file (the only SQL that is not a named query)."""
        await self._conn.execute(statement)

    async def executemany_count(self, name: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Like executemany, returning the total number of rows changed."""
        cursor = await self._conn.executemany(sql(name), rows)
        rowcount = cursor.rowcount
        await cursor.close()
        return rowcount

    async def fetchall(
        self, name: str, params: Mapping[str, Any] | Sequence[Any] = ()
    ) -> list[sqlite3.Row]:
        rows = await self._conn.execute_fetchall(sql(name), params)
        return list(rows)

    async def fetchone(
        self, name: str, params: Mapping[str, Any] | Sequence[Any] = ()
    ) -> sqlite3.Row | None:
        async with self._conn.execute(sql(name), params) as cursor:
            row: sqlite3.Row | None = await cursor.fetchone()
            return row


def _checked_path(path: Path, read_only: bool) -> Path:
    path = path.expanduser()
    if not path.parent.is_dir():
        raise DatabaseError(f"cannot open database {path}: folder {path.parent} does not exist")
    if read_only and not path.exists():
        raise DatabaseError(f"no database at {path}: run `sqlstate migrate` first")
    if path.is_dir():
        raise DatabaseError(f"cannot open database {path}: it is a folder")
    return path


class _HotJournal(DatabaseError):
    """A read-only connection found a rollback journal that a crash left to replay."""


PrepareWrites = Callable[[Mapping[TopicPartition, Sequence[Any]]], Sequence[Write]]
DiscardPartition = Callable[[Transaction, TopicPartition], Awaitable[None]]


class Store:
    """An open sqlstate database."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._stopping = False
        self.busy_retries = 0  # how often a locked database made a transaction wait and retry

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        busy_timeout_s: float = 5.0,
        read_only: bool = False,
        check_integrity: bool = True,
    ) -> Store:
        """Open (or, unless ``read_only``, create) the database and check it is a sound SQLite file.

        Nothing is written before the file is known to be a healthy SQLite database, so a wrong
        path, a foreign file or a corrupt database is reported and left exactly as it was.
        """
        path = _checked_path(path, read_only)
        if read_only or path.exists():
            # Check through a read-only connection: closing the last read-write connection
            # checkpoints the WAL into the main file, which would change a file we refuse to use.
            checker = await cls._connect(path, busy_timeout_s, read_only=True)
            try:
                await checker._check(check_integrity)
            except _HotJournal:
                await checker.close()
                if read_only:
                    raise
                # A crash left a rollback journal (no WAL yet): SQLite's recovery replays it on
                # the first read of a read-write connection, and there is no WAL to checkpoint.
                store = await cls._connect(path, busy_timeout_s, read_only=False)
                try:
                    await store._check(check_integrity)
                except BaseException:
                    await store.close()
                    raise
                return store
            except BaseException:
                await checker.close()
                raise
            if read_only:
                return checker
            await checker.close()
        return await cls._connect(path, busy_timeout_s, read_only=False)

    @classmethod
    async def _connect(cls, path: Path, busy_timeout_s: float, *, read_only: bool) -> Store:
        target = f"file:{path}?mode=ro" if read_only else str(path)
        try:
            conn = await aiosqlite.connect(
                target, uri=read_only, isolation_level=None, timeout=busy_timeout_s
            )
        except sqlite3.Error as error:
            raise DatabaseError(f"cannot open database {path}: {error}") from error
        conn.row_factory = sqlite3.Row
        return cls(conn, path)

    async def _check(self, check_integrity: bool) -> None:
        try:
            await self._fetchall("check_readable")
            if check_integrity:
                rows = await self._fetchall("quick_check")
                problems = [row[0] for row in rows if row[0] != "ok"]
                if problems:
                    raise self._corrupt(problems[0])
        except sqlite3.DatabaseError as error:
            if is_busy(error):
                raise DatabaseBusyError(
                    f"database {self.path} is locked by another connection: {error}"
                ) from error
            code = getattr(error, "sqlite_errorcode", 0)
            # quick_check itself fails this way when the damage is in the pages it must read.
            if (code & 0xFF) == sqlite3.SQLITE_CORRUPT:
                raise self._corrupt(str(error)) from error
            unusable = _HotJournal if code == sqlite3.SQLITE_READONLY_ROLLBACK else DatabaseError
            raise unusable(
                f"{self.path} is not a usable SQLite database ({error}); it was left as it is"
            ) from error

    def _corrupt(self, problem: str) -> DatabaseError:
        return DatabaseError(
            f"database {self.path} is corrupt ({problem}); it was left as it is:"
            " restore it from a backup, or move it away to rebuild from Kafka"
        )

    async def prepare_for_writing(self) -> None:
        """WAL, so readers never block the writer nor see an uncommitted batch; a page cache
        large enough for the pages a batch touches in a big database.

        Called only once the file is known to be ours: it rewrites the file header.
        """
        try:
            await self._conn.execute(sql("json_functions"))
        except sqlite3.OperationalError as error:
            raise DatabaseError(
                f"this Python's SQLite {sqlite3.sqlite_version} has no JSON functions ({error}),"
                " which sqlstate needs: use a Python built with SQLite 3.38 or later"
            ) from error
        await self._conn.execute(sql("journal_mode_wal"))
        await self._conn.execute(sql("synchronous_normal"))
        await self._conn.execute(sql("cache_size"))

    async def close(self) -> None:
        await self._conn.close()

    def stop_retrying(self) -> None:
        """Make a transaction waiting on a locked database give up (used at shutdown)."""
        self._stopping = True

    async def _fetchall(
        self, name: str, params: Mapping[str, Any] | Sequence[Any] = ()
    ) -> list[sqlite3.Row]:
        rows = await self._conn.execute_fetchall(sql(name), params)
        return list(rows)

    async def fetchall(
        self, name: str, params: Mapping[str, Any] | Sequence[Any] = ()
    ) -> list[sqlite3.Row]:
        """Run a named read-only query outside any write transaction."""
        try:
            return await self._fetchall(name, params)
        except sqlite3.Error as error:
            raise DatabaseError(f"cannot read {self.path}: {error}") from error

    async def in_transaction(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction and commit it.

        A locked database is waited for (busy timeout) and then retried with a warning, the whole
        transaction again, until it succeeds or shutdown begins. Any other failure rolls back and
        raises: nothing of a failed transaction is ever committed.
        """
        return await self._retrying(lambda: self._attempt(work))

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run a whole-transaction ``attempt`` again while the database is locked."""
        tries = 0
        while True:
            tries += 1
            try:
                return await attempt()
            except sqlite3.Error as error:
                if is_busy(error) and not self._stopping:
                    logger.warning(
                        "database %s is locked by another connection (attempt %d); retrying",
                        self.path,
                        tries,
                    )
                    self.busy_retries += 1
                    await asyncio.sleep(_RETRY_PAUSE_S)
                    continue
                if is_busy(error):
                    raise DatabaseBusyError(
                        f"database {self.path} stayed locked; gave up at shutdown"
                    ) from error
                raise DatabaseError(
                    f"database {self.path}: {error}; the batch was rolled back"
                ) from error

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function`` in the connection's own thread: one hand-off, however many
        statements it runs. aiosqlite (pinned to 0.22.x) has no public call for this;
        ``_execute`` is what each of its own methods uses."""
        execute = cast(Callable[..., Awaitable[T]], self._conn._execute)
        return await execute(function, *args)

    async def _attempt(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        try:
            await self._conn.execute(sql("begin_immediate"))
            result = await work(Transaction(self._conn))
            # After SQLITE_FULL or SQLITE_IOERR, SQLite may already have rolled back by itself.
            if not self._conn.in_transaction:
                raise DatabaseError(f"database {self.path}: the transaction was rolled back")
            await self._conn.execute(sql("commit"))
            return result
        except BaseException:
            # Shielded: a cancelled aiosqlite call still runs in its thread, and an open
            # transaction left behind would be committed by whoever commits next.
            await asyncio.shield(self._rollback())
            raise

    async def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                await self._conn.execute(sql("rollback"))
            except sqlite3.OperationalError:
                # A cancelled COMMIT may have finished meanwhile: nothing is left to roll back.
                logger.debug("rollback found no transaction open")

    # ---- positions ------------------------------------------------------------------------

    async def claim(
        self,
        start_offsets: Mapping[TopicPartition, int],
        owner: str,
        end_offsets: Mapping[TopicPartition, int] | None = None,
    ) -> dict[TopicPartition, Claim]:
        """Claim partitions in one transaction: bump each epoch, record the owner, read positions.

        ``start_offsets`` gives, per partition, where to start if the database has never seen it;
        ``end_offsets``, where its log ends now (recorded for the lag).
        """

        async def work(tx: Transaction) -> dict[TopicPartition, Claim]:
            now = utc_now()
            claims: dict[TopicPartition, Claim] = {}
            for tp, start_offset in start_offsets.items():
                row = await tx.fetchone(
                    "claim_partition",
                    {
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "start_offset": start_offset,
                        "owner": owner,
                        "log_end_offset": (end_offsets or {}).get(tp),
                        "now": now,
                    },
                )
                assert row is not None  # RETURNING always yields the claimed row
                claims[tp] = Claim(next_offset=row["next_offset"], epoch=row["epoch"])
            return claims

        return await self.in_transaction(work)

    async def read_position(self, tp: TopicPartition) -> Position | None:
        rows = await self.fetchall("read_position", {"topic": tp.topic, "partition": tp.partition})
        if not rows:
            return None
        row = rows[0]
        return Position(
            tp.topic, tp.partition, row["next_offset"], row["epoch"], row["owner"], None, ""
        )

    async def commit_batch(
        self, advances: Sequence[PartitionAdvance], prepare: PrepareWrites
    ) -> list[TopicPartition]:
        """Commit one batch: move each partition's position and apply its records, atomically.

        Each position moves by compare-and-set on (next offset, epoch). A partition whose row
        does not match was claimed or moved by another consumer: its records are left out of the
        transaction and it is returned as fenced. The other partitions commit.
        """
        now = utc_now()
        rows = [
            {
                "topic": advance.tp.topic,
                "partition": advance.tp.partition,
                "next_offset": advance.next_offset,
                "log_end_offset": advance.log_end_offset,
                "now": now,
                "expected_offset": advance.expected_offset,
                "epoch": advance.epoch,
            }
            for advance in advances
        ]
        records = {a.tp: a.records for a in advances if a.records}
        writes = prepare(records) if records else []
        # The usual case, nobody else moved our partitions: the whole transaction is one call
        # to the database thread, which then runs it while the event loop fetches the next
        # batch, instead of waiting for the loop between statements.
        if await self._retrying(lambda: self._in_thread(self._commit_unfenced, rows, writes)):
            return []

        async def work(tx: Transaction) -> list[TopicPartition]:
            # Some compare-and-set failed. Try all again in one call, in case it was a race that
            # has passed; if some row still does not match, the total cannot say which: undo
            # the moves and compare-and-set partition by partition. Then commit the records of
            # the partitions that were not fenced.
            await tx.execute("savepoint_positions")
            changed = await tx.executemany_count("advance_position", rows)
            fenced: list[TopicPartition] = []
            if changed != len(rows):
                await tx.execute("rollback_to_positions")
                for advance, row in zip(advances, rows, strict=True):
                    if await tx.execute("advance_position", row) != 1:
                        fenced.append(advance.tp)
            await tx.execute("release_positions")
            accepted = {tp: r for tp, r in records.items() if tp not in fenced}
            for write in prepare(accepted) if accepted else []:
                await tx.write(write)
            return fenced

        return await self.in_transaction(work)

    def _commit_unfenced(
        self, position_rows: Sequence[Mapping[str, Any]], writes: Sequence[Write]
    ) -> bool:
        """In the database thread: the batch's transaction, if every compare-and-set holds.

        Returns False, having changed nothing, when some partition's position did not match.
        Commits or rolls back before returning, so no transaction is ever left open, whatever
        happens to the awaiting task.
        """
        conn = self._conn._conn
        conn.execute(sql("begin_immediate"))
        try:
            if conn.executemany(sql("advance_position"), position_rows).rowcount != len(
                position_rows
            ):
                conn.execute(sql("rollback"))
                return False
            for write in writes:
                conn.executemany(sql(write.query), write.rows)
            # After SQLITE_FULL or SQLITE_IOERR, SQLite may already have rolled back by itself.
            if not conn.in_transaction:
                raise DatabaseError(f"database {self.path}: the transaction was rolled back")
            conn.execute(sql("commit"))
            return True
        except BaseException:
            if conn.in_transaction:
                conn.execute(sql("rollback"))
            raise

    async def reset_partition(
        self,
        tp: TopicPartition,
        epoch: int,
        next_offset: int,
        discard: DiscardPartition,
        log_end_offset: int | None = None,
    ) -> bool:
        """Discard a partition's state and move its position, in one transaction.

        Returns False, changing nothing, when another consumer has claimed the partition since.
        """

        async def work(tx: Transaction) -> bool:
            changed = await tx.execute(
                "reset_position",
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "next_offset": next_offset,
                    "log_end_offset": log_end_offset,
                    "now": utc_now(),
                    "epoch": epoch,
                },
            )
            if changed != 1:
                return False
            await discard(tx, tp)
            return True

        return await self.in_transaction(work)

    async def positions(self) -> list[Position]:
        return [Position(*row) for row in await self.fetchall("list_positions")]
