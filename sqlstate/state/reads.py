"""Read-only queries of the state: the positions, and the highest counts.

What ``sqlstate offsets`` and ``sqlstate counts`` show, what a snapshot checks its copy with,
what ``sqlstate wait`` looks at, and the row that fenced a batch (read inside the batch's
transaction). Each function runs in the
database thread, on the connection of a read or a transaction; none writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from aiokafka import TopicPartition

from sqlstate.state.model import Position
from sqlstate.state.queries import sql


def position(conn: sqlite3.Connection, tp: TopicPartition) -> Position | None:
    row = conn.execute(
        sql("read_position"), {"topic": tp.topic, "partition": tp.partition}
    ).fetchone()
    return None if row is None else Position(*row)


def next_offsets(
    conn: sqlite3.Connection, tps: Iterable[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """Each partition's stored next offset; None for one without a row."""
    offsets: dict[TopicPartition, int | None] = {}
    for tp in tps:
        row = conn.execute(
            sql("read_next_offset"), {"topic": tp.topic, "partition": tp.partition}
        ).fetchone()
        offsets[tp] = None if row is None else row[0]
    return offsets


def positions(conn: sqlite3.Connection) -> list[Position]:
    return [Position(*row) for row in conn.execute(sql("list_positions"))]


def top_counts(
    conn: sqlite3.Connection, topic: str | None, limit: int
) -> list[tuple[str, str | bytes | None, int]]:
    """The highest totals of the ``counts`` view: (topic, key, count)."""
    rows = conn.execute(sql("top_counts"), {"topic": topic, "limit": limit})
    return [(row["topic"], row["key"], row["count"]) for row in rows]


def top_counts_and_positions(
    conn: sqlite3.Connection, topic: str | None, limit: int
) -> tuple[list[tuple[str, str | bytes | None, int]], list[Position]]:
    """``top_counts`` and every position, from the same snapshot: the positions the totals
    were read at (the records below them, and only those, are counted)."""
    return top_counts(conn, topic, limit), positions(conn)
