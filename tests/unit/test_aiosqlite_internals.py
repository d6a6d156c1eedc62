"""aiosqlite's internals that ``Database`` hands its transactions through
(``sqlstate.state.database.hand_to_thread``) are still what aiosqlite 0.22 had: an aiosqlite that
changed them fails here, saying which version it is and what changed, rather than somewhere in
the middle of a transaction."""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from pathlib import Path

import aiosqlite
import pytest

from sqlstate.errors import DatabaseError
from sqlstate.state.database import Database, hand_to_thread


def changed(what: str) -> str:
    return (
        f"aiosqlite {aiosqlite.__version__} changed what sqlstate.state.database.hand_to_thread"
        f" relies on (written for aiosqlite 0.22): {what}"
    )


async def test_a_connection_has_the_attributes_hand_to_thread_uses(tmp_path: Path) -> None:
    connection = await aiosqlite.connect(tmp_path / "s.db")
    try:
        running = getattr(connection, "_running", None)
        assert running is True, changed(f"Connection._running is {running!r}, not True, when open")
        conn = getattr(connection, "_connection", None)
        assert isinstance(conn, sqlite3.Connection), changed(
            f"Connection._connection is {type(conn).__name__}, not its sqlite3.Connection"
        )
        tx = getattr(connection, "_tx", None)
        assert isinstance(tx, queue.SimpleQueue), changed(
            f"Connection._tx is {type(tx).__name__}, not the SimpleQueue its thread serves"
        )
    finally:
        await connection.close()
    assert (connection._running, connection._connection) == (False, None), changed(
        "a closed Connection no longer has _running False and _connection None"
    )


async def test_work_handed_over_runs_in_the_connections_thread_in_turn(tmp_path: Path) -> None:
    """In aiosqlite's worker thread, after the calls queued before it, with the result or the
    exception delivered to the future."""
    connection = await aiosqlite.connect(tmp_path / "s.db", isolation_level=None)
    try:
        own = asyncio.ensure_future(connection.execute("CREATE TABLE t (x)"))
        await asyncio.sleep(0)  # aiosqlite's own call is queued once its task has started

        def work(conn: sqlite3.Connection) -> tuple[int, list[tuple[str]]]:
            names = conn.execute("SELECT name FROM sqlite_master").fetchall()
            return threading.get_ident(), names

        thread, names = await asyncio.wait_for(hand_to_thread(connection, work), 10)
        await own
        assert thread != threading.get_ident(), changed("the work ran in the event loop's thread")
        assert thread == connection._thread.ident, changed("the work ran in another thread")
        assert names == [("t",)], changed("the work did not run after the call queued before it")

        def failing(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT * FROM no_such_table")

        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await asyncio.wait_for(hand_to_thread(connection, failing), 10)
    finally:
        await connection.close()


async def test_a_closed_database_takes_no_more_work(tmp_path: Path) -> None:
    database = await Database.open(tmp_path / "s.db", busy_timeout_s=1)
    await database.close()
    with pytest.raises(DatabaseError, match="is closed"):
        await database.transaction(lambda conn: None)
