"""How far this file has applied each partition's changelog (``changelog_offsets``).

The offset is the next changelog offset whose record is not in the file, keyed by the input
topic and partition (changelog partition p carries input partition p). It moves in the same
transaction as the state it describes: the owner's batch (its last produced offset + 1, after
the changelog transaction committed) or an apply. A restore starts reading there.
"""

from __future__ import annotations

import sqlite3

from aiokafka import TopicPartition

from sqlstate.state.queries import sql


def record_changelog_offset(
    conn: sqlite3.Connection,
    tp: TopicPartition,
    next_offset: int,
    log_end_offset: int | None = None,
) -> None:
    """Record that the file holds ``tp``'s changelog below ``next_offset``; in the transaction
    that wrote that state. The owner sets it as it is: after a claim it is the changelog's only
    writer, and a changelog topic created again starts its offsets over."""
    conn.execute(
        sql("record_changelog_offset"),
        {
            "topic": tp.topic,
            "partition": tp.partition,
            "next_offset": next_offset,
            "log_end_offset": log_end_offset,
        },
    )


def changelog_offset(conn: sqlite3.Connection, tp: TopicPartition) -> int:
    """The next changelog offset of ``tp`` not applied in this file; 0 when none was."""
    row = conn.execute(
        sql("read_changelog_offset"), {"topic": tp.topic, "partition": tp.partition}
    ).fetchone()
    return 0 if row is None else int(row[0])


def changelog_offsets(conn: sqlite3.Connection) -> dict[TopicPartition, int]:
    """Every partition's applied changelog offset (for progress and snapshots)."""
    return {
        TopicPartition(row[0], row[1]): row[2]
        for row in conn.execute(sql("list_changelog_offsets"))
    }
