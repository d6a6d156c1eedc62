"""``sqlstate snapshot``: a consistent copy of a live database file, taken while a daemon writes.

The copy is made with SQLite's online backup API (``sqlite3.Connection.backup``) from a
read-only connection that holds one read transaction for the whole copy. That is the point:
a backup reads the source in steps, and when another connection writes to the source between
two steps, SQLite starts the backup over (it cannot know which copied pages changed). Under a
daemon that commits every few milliseconds, a large file would start over without end. In WAL
mode a read transaction pins one snapshot of the file (the daemon's commits go on into the WAL
behind it, and are never waited for), so every step reads that same snapshot: the backup never
restarts and the copy is exactly the database as of one commit. The price is that the WAL
cannot be checkpointed past that snapshot while the copy runs, so it grows for that long (about
a second per 100 MB copied).

The copy is written to a temporary file beside DEST and renamed into place only once it passed
``PRAGMA quick_check``: a crash or a failure never leaves a half copy under DEST's name (at
worst a ``.DEST.*.snapshot`` file in DEST's folder). Right before the rename, DEST and its
side files are looked at again: without ``--force``, one that appeared during the copy is
refused, never replaced nor left to meet the copy. The copy is a normal sqlstate database in
WAL mode: positions, epochs and every processor's state, as of one committed batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlstate.errors import ConfigError, DatabaseError
from sqlstate.observe.logs import LogEvent, rounded
from sqlstate.settings import default
from sqlstate.state.database import Database, is_busy
from sqlstate.state.model import Position
from sqlstate.state.queries import sql
from sqlstate.state.store import Store

logger = logging.getLogger("sqlstate.snapshot")  # its documented name
_WRITTEN = LogEvent(
    logger,
    logging.INFO,
    "snapshot_written",
    "snapshot of %(database)s written to %(snapshot)s: %(bytes)d bytes in %(snapshot_s).2f s",
    data={"snapshot_s": rounded(3)},
)

# Like the other commands beside a daemon, it waits for a locked file as long as ``run`` does.
BUSY_TIMEOUT_S: float = default("busy_timeout_s")
# Pages copied per backup step. Since the source's snapshot is held, the step size does not
# decide consistency; it bounds the work between two chances to report progress and to yield.
# 1,024 pages of 4 KiB: 4 MiB, a few milliseconds of copying.
PAGES_PER_STEP = 1024
# The side files SQLite keeps beside a database file.
_SIDE_FILES = ("-wal", "-shm", "-journal")
_MEANWHILE = " (it appeared while the copy was made)"


@dataclass(frozen=True)
class Snapshot:
    """What ``take`` wrote: the copy's file, its size, and the positions inside it."""

    source: Path
    path: Path
    size_bytes: int
    pages: int
    steps: int  # backup steps: ceil(pages / pages_per_step) when the copy never restarted
    seconds: float
    positions: list[Position]


@dataclass(frozen=True)
class _Copied:
    pages: int
    steps: int


async def take(
    source: Path,
    dest: Path,
    *,
    force: bool = False,
    busy_timeout_s: float = BUSY_TIMEOUT_S,
    pages_per_step: int = PAGES_PER_STEP,
) -> Snapshot:
    """Copy the database ``source`` to ``dest`` (refused if ``dest`` exists, unless ``force``)
    as of one committed transaction, check the copy and move it into place.

    The backup runs in the source connection's thread, the checks through ``Database``: the
    event loop never waits on SQLite. ``ConfigError`` (exit code 2) for a DEST refused as
    given, ``DatabaseError`` (exit code 3) for a source that cannot be read or a copy that
    cannot be written; either way DEST is left as it was.
    """
    started = time.perf_counter()
    # The file system calls are quick, but each may block (a slow disk, a network mount).
    dest = await asyncio.to_thread(_checked_dest, source, dest, force)
    temporary = await asyncio.to_thread(_temporary_beside, dest)
    try:
        database = await Database.open(
            source, busy_timeout_s=busy_timeout_s, read_only=True, check_integrity=False
        )
        try:
            copied = await database.read(
                functools.partial(
                    _copy, name=source, target=temporary, pages_per_step=pages_per_step
                )
            )
        finally:
            await database.close()
        positions = await _checked_copy(temporary, source, busy_timeout_s)
        size = await asyncio.to_thread(_move_into_place, temporary, dest, force, busy_timeout_s)
    except BaseException:
        # Whatever failed, and also a Ctrl-C: nothing of the copy stays behind.
        _remove_with_side_files(temporary)
        raise
    snapshot = Snapshot(
        source=source,
        path=dest,
        size_bytes=size,
        pages=copied.pages,
        steps=copied.steps,
        seconds=time.perf_counter() - started,
        positions=positions,
    )
    _WRITTEN.log(
        database=str(source),
        snapshot=str(dest),
        bytes=snapshot.size_bytes,
        partitions=len(positions),
        snapshot_s=snapshot.seconds,
    )
    return snapshot


def _checked_dest(source: Path, dest: Path, force: bool) -> Path:
    """DEST as an absolute path, once it is known that it may be written."""
    source, dest = source.expanduser(), dest.expanduser().absolute()
    if dest.is_dir():
        raise ConfigError(f"snapshot destination {dest} is a folder: give the copy's file name")
    if not dest.parent.is_dir():
        raise DatabaseError(f"cannot write snapshot {dest}: folder {dest.parent} does not exist")
    if source.exists() and dest.exists() and os.path.samefile(source, dest):
        raise ConfigError(f"snapshot destination {dest} is the database itself")
    if not force:
        _refuse_existing(dest, "")
    return dest


def _refuse_existing(dest: Path, when: str) -> None:
    """``ConfigError`` if DEST or one of its side files exists (``when``: since when).

    A ``-wal`` (or ``-journal``) without its file counts too: renamed in beside it, the copy
    would meet a log that is not its own, and SQLite would replay it into the copy, changing
    its positions and state behind a quick_check that said ok."""
    # lexists: a symbolic link counts even when it leads nowhere (SQLite would follow it).
    existing = [p for p in (dest, *_side_files(dest)) if os.path.lexists(p)]
    if existing:
        raise _exists(existing[0], when)


def _exists(path: Path, when: str) -> ConfigError:
    return ConfigError(
        f"snapshot destination {path} exists{when}: give another name, or --force to replace it"
    )


def _temporary_beside(dest: Path) -> Path:
    """An empty file in DEST's folder, so that the final rename stays within one filesystem.

    ``mkstemp`` creates it readable by its owner only (0600), before anything is copied into
    it, and the copy keeps that mode under DEST's name: it holds record payloads."""
    try:
        handle, name = tempfile.mkstemp(
            dir=dest.parent, prefix=f".{dest.name}.", suffix=".snapshot"
        )
    except OSError as error:
        raise DatabaseError(
            f"cannot write snapshot {dest}: {error.strerror or error} in folder {dest.parent}"
        ) from error
    os.close(handle)
    return Path(name)


def _copy(source: sqlite3.Connection, name: Path, target: Path, pages_per_step: int) -> _Copied:
    """In the source connection's thread, inside its read transaction: the backup."""
    # The first read takes the transaction's snapshot; every step below reads that one.
    if not source.execute(sql("migrations_table_exists")).fetchone()[0]:
        raise DatabaseError(f"{name} is not a sqlstate database (no migrations table)")
    if sys.platform == "linux":
        # Share the machine with the daemon: this thread is the backup's own (it ends with the
        # connection), and on Linux a thread's nice value is its own.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    steps = 0
    pages = 0

    def progress(status: int, remaining: int, total: int) -> None:
        nonlocal steps, pages
        steps += 1
        pages = total

    try:
        copy = sqlite3.connect(target, isolation_level=None)
    except sqlite3.Error as error:
        raise _not_written(target, error) from error
    try:
        source.backup(copy, pages=pages_per_step, progress=progress)
    except sqlite3.Error as error:
        # The backup reports what failed on the copy's side (a full disk, a write error):
        # reading the source inside its snapshot does not wait for anybody.
        raise _not_written(target, error) from error
    finally:
        copy.close()
    return _Copied(pages=pages, steps=steps)


def _not_written(target: Path, error: sqlite3.Error) -> DatabaseError:
    # SQLite's own words say what failed: "database or disk is full", "disk I/O error".
    return DatabaseError(
        f"cannot write snapshot in {target.parent}: {error}; nothing was left behind"
    )


async def _checked_copy(copy: Path, source: Path, busy_timeout_s: float) -> list[Position]:
    """quick_check the copy, make sure it is in WAL mode, and read its positions."""
    try:
        database = await Database.open(copy, busy_timeout_s=busy_timeout_s)
    except DatabaseError as error:
        cause = error.__cause__ or error
        raise DatabaseError(
            f"the copy of {source} failed its check ({cause}): {source} itself is likely"
            " damaged; run `sqlite3 FILE 'PRAGMA quick_check'` on it. Nothing was written"
        ) from error
    try:
        await database.prepare_for_writing()
        return await Store(database).positions()
    finally:
        # The last connection to close checkpoints the WAL into the file and deletes it: the
        # copy is then one file, which the rename moves whole.
        await database.close()


def _move_into_place(temporary: Path, dest: Path, force: bool, busy_timeout_s: float) -> int:
    """Rename the checked copy to DEST, durably, and return its size.

    DEST and its side files are looked at again here, right before the rename: the copy took a
    while, and any of them may have appeared meanwhile. Without ``force`` the copy is linked to
    DEST, which fails if DEST exists even at the last instant (a rename would replace it). With
    ``force``, an existing DEST is replaced, unless a process has it open (a daemon's
    database); its side files go first, since they must never meet the copy."""
    _sync(temporary)
    size = temporary.stat().st_size
    if force:
        if dest.exists() and _in_use(dest, busy_timeout_s):
            raise DatabaseError(
                f"snapshot destination {dest} is open in another process (a daemon?): stop it"
                " first, or give another name"
            )
        for side in _side_files(dest):
            side.unlink(missing_ok=True)
        os.replace(temporary, dest)
    else:
        _refuse_existing(dest, _MEANWHILE)
        _link_new(temporary, dest)
    _sync(dest.parent)
    return size


def _link_new(temporary: Path, dest: Path) -> None:
    """Give the copy DEST's name only if DEST does not exist: a hard link, unlike a rename,
    never replaces a file. On a filesystem without hard links, a rename right after the check."""
    try:
        os.link(temporary, dest)
    except FileExistsError as error:
        raise _exists(dest, _MEANWHILE) from error
    except OSError:
        os.replace(temporary, dest)
        return
    temporary.unlink()


def _in_use(path: Path, busy_timeout_s: float) -> bool:
    """Whether another connection has the SQLite file open. In WAL mode every connection holds
    a shared lock on the file for as long as it is open, so an exclusive lock is refused."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=min(busy_timeout_s, 1.0))
    try:
        conn.execute(sql("locking_mode_exclusive")).fetchall()
        conn.execute(sql("begin_exclusive"))
        conn.execute(sql("rollback"))
    except sqlite3.Error as error:
        return is_busy(error)  # anything else (not a SQLite file): nobody's database
    finally:
        conn.close()
    return False


def _side_files(path: Path) -> Iterator[Path]:
    return (path.with_name(path.name + suffix) for suffix in _SIDE_FILES)


def _remove_with_side_files(path: Path) -> None:
    for leftover in (path, *_side_files(path)):
        leftover.unlink(missing_ok=True)


def _sync(path: Path) -> None:
    """fsync a file, or a folder (so that a rename in it survives a power loss)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
