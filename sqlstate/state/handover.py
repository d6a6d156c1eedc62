"""The hand-over of ``sqlstate rebuild``: a rebuilt state takes the live file's place in one
write transaction on the live file, so that no file is ever renamed under open connections.

The transaction, on a connection of its own with the rebuilt (work) file attached:

1. ``lock``: its first statement bumps every partition's epoch and sets the owner to
   ``HANDED_OVER``. That takes the live file's write lock (a daemon's next commit waits on its
   busy timeout) and fences every owner: a daemon's next compare-and-set fails, and the row it
   then reads tells it that its processors were replaced (``batch_loop.py`` stops it). Returns
   the live positions, which no one can move until the transaction ends.
2. The caller brings the work file exactly up to those positions, through its own connection
   (this transaction reads the work file only after that, so it sees those commits).
3. ``swap``: refuses unless the work file's positions are the live ones, partition for
   partition; then drops every state object of the live file (its triggers, views, and tables
   other than sqlstate's bookkeeping, indexes with them), creates the work file's from their
   SQL in ``sqlite_master`` order (tables, rows copied, then indexes, views and triggers, so
   that no trigger fires on the copy), and takes the work file's processors
   (``topic_processors``) and migration records. Positions, topic IDs, starts and settings stay
   the live file's: they say where the state stands in Kafka, which the work file matches.
4. ``commit``, or ``rollback`` on any failure; a kill -9 before the commit leaves the old state
   whole, after it the new one. A reader holding a read transaction keeps its snapshot of the
   old state until it ends it; the next one reads the new state.

Tables are named by the files' schemas, so, as in ``table_rows.py``, their names go in as
quoted identifiers; every fixed statement is in ``queries.sql``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from sqlstate.errors import DatabaseError
from sqlstate.state.database import is_busy, utc_now
from sqlstate.state.handed_over import HAND_OVER
from sqlstate.state.queries import sql
from sqlstate.state.table_rows import BOOKKEEPING, quoted

#: The owner a hand-over writes in every position row: a daemon fenced by it must stop.
HANDED_OVER = "sqlstate rebuild"

T = TypeVar("T")
Offsets = dict[tuple[str, int], int]

# Dropped in this order, so that nothing is dropped while another object still names it.
_DROP_ORDER = ("trigger", "view", "table")


class HandOver:
    """One hand-over transaction on the live file; the caller ends it with ``commit`` or
    ``rollback``, then ``close``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, live: Path, work: Path, busy_timeout_s: float) -> HandOver:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(
                live, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute(sql("attach_rebuild"), {"path": str(work)})
            except BaseException:
                conn.close()
                raise
            return conn

        return cls(await asyncio.to_thread(connect))

    async def lock(self) -> Offsets:
        """Begin, fence every owner and return the live positions (step 1)."""
        return await self._run(_lock)

    async def swap(self, expected: Offsets, *, changelogs: Mapping[str, str] | None = None) -> None:
        """Replace the live state with the work file's (step 3), in the open transaction.
        ``changelogs``: the file moves to a new group, whose changelog topics (by input topic)
        it has read nothing of (they are empty: its daemon's claims publish the new state to
        them); they are recorded as the file's, so that a daemon run with the old group is
        refused rather than apply the old group's rows to the new state."""
        await self._run(lambda conn: _swap(conn, expected, changelogs))

    async def swap_followed(self, expected: Offsets) -> None:
        """Step 3 for a work file that followed a new group's changelogs: it must stand at or
        past the live positions, partition for partition; the live file takes its state, its
        positions and the changelog offsets it reached."""
        await self._run(lambda conn: _swap_followed(conn, expected))

    async def commit(self) -> None:
        await self._run(lambda conn: conn.execute(sql("commit")))

    async def rollback(self) -> None:
        def rollback(conn: sqlite3.Connection) -> None:
            if conn.in_transaction:
                conn.execute(sql("rollback"))

        await self._run(rollback)

    async def close(self) -> None:
        await asyncio.to_thread(self._conn.close)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.to_thread(work, self._conn)
        except sqlite3.Error as error:
            if is_busy(error):
                raise DatabaseError(
                    "the live database stayed locked past --busy-timeout: nothing was handed"
                    " over; run sqlstate rebuild again"
                ) from error
            raise DatabaseError(
                f"the hand-over failed, nothing was handed over: {error}"
            ) from error


def _lock(conn: sqlite3.Connection) -> Offsets:
    conn.execute(sql("begin"))
    now = utc_now()
    conn.execute(sql("fence_for_hand_over"), {"owner": HANDED_OVER, "now": now})
    # Every daemon started before it stops at its next write transaction (``handed_over.py``).
    conn.execute(
        sql("record_state_setting_again"),
        {"name": HAND_OVER, "value": uuid.uuid4().hex, "now": now},
    )
    return _offsets(conn, "live_next_offsets")


def _swap(
    conn: sqlite3.Connection, expected: Offsets, changelogs: Mapping[str, str] | None
) -> None:
    rebuilt = _offsets(conn, "rebuilt_next_offsets")
    if rebuilt != expected or _offsets(conn, "live_next_offsets") != expected:
        raise DatabaseError(
            "the rebuilt file does not stand at the live file's positions: nothing was handed"
            " over; run sqlstate rebuild again"
        )
    _replace_state(conn)
    if changelogs is not None:
        _forget_old_group(conn)
        conn.execute(sql("plan_seeds"), {"name": HAND_OVER})
        for topic, changelog in sorted(changelogs.items()):
            # No ID yet: the first restore or standby start records the one Kafka gives.
            conn.execute(
                sql("record_changelog_topic"),
                {"topic": topic, "changelog": changelog, "topic_id": None, "now": utc_now()},
            )


def _swap_followed(conn: sqlite3.Connection, expected: Offsets) -> None:
    rebuilt = _offsets(conn, "rebuilt_next_offsets")
    behind = sorted(tp for tp, offset in expected.items() if rebuilt.get(tp, -1) < offset)
    if behind or set(rebuilt) != set(expected) or _offsets(conn, "live_next_offsets") != expected:
        raise DatabaseError(
            "the rebuilt file does not stand at or past the live file's positions"
            f" ({', '.join(f'{t}-{p}' for t, p in behind) or 'other partitions'}): nothing was"
            " handed over; run sqlstate rebuild again"
        )
    _replace_state(conn)
    conn.execute(sql("take_rebuilt_positions"))
    _forget_old_group(conn)
    conn.execute(sql("take_rebuilt_changelog_offsets"))
    conn.execute(sql("take_rebuilt_changelog_topics"))


def _forget_old_group(conn: sqlite3.Connection) -> None:
    """What the live file knew of its changelogs: offsets, topics, seeds still to publish."""
    conn.execute(sql("forget_changelog_offsets"))
    conn.execute(sql("forget_changelog_topics"))
    conn.execute(sql("forget_seeds"))


def _replace_state(conn: sqlite3.Connection) -> None:
    """Drop the live file's state objects and create the work file's, with their rows, its
    processors and their migrations."""
    live = {
        (kind, name)
        for kind, name, table in conn.execute(sql("live_schema_objects"))
        if table not in BOOKKEEPING
    }
    for kind in _DROP_ORDER:
        for name in sorted(name for k, name in live if k == kind):
            conn.execute(f"DROP {kind.upper()} main.{quoted(name)}")
    objects = [
        (kind, name, text)
        for kind, name, table, text in conn.execute(sql("rebuilt_schema_objects")).fetchall()
        if table not in BOOKKEEPING
    ]
    for kind, name, text in objects:
        if kind == "table":
            conn.execute(text)  # unqualified CREATE: in main
            columns = ", ".join(
                quoted(row[0])
                for row in conn.execute(sql("rebuilt_table_columns"), {"table": name})
            )
            conn.execute(
                f"INSERT INTO main.{quoted(name)} ({columns})"
                f" SELECT {columns} FROM rebuild.{quoted(name)}"
            )
    for kind in ("index", "view", "trigger"):
        for k, _, text in objects:
            if k == kind:
                conn.execute(text)
    conn.execute(sql("forget_all_recorded_processors"))
    conn.execute(sql("take_rebuilt_processors"))
    conn.execute(sql("forget_replaced_migrations"))
    conn.execute(sql("take_rebuilt_migrations"))
    conn.execute(sql("forget_processor_definitions"))
    conn.execute(sql("take_rebuilt_definitions"))


def _offsets(conn: sqlite3.Connection, query: str) -> Offsets:
    return {(topic, partition): offset for topic, partition, offset in conn.execute(sql(query))}
