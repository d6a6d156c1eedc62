"""Where a partition the file has never seen starts (``--start-from``), decided in its claim.

The claim transaction (``transactions.py``) creates a partition's row at its first claim, and
only then: a partition with a row keeps its position, whatever ``--start-from`` says now, and
under ``--changelog`` a partition another host started has a row by then (its restore applied
the owner's position). So the start is decided once per partition, by the owner that first
claims it, in the transaction that records its position, with the same fencing.

Kafka is asked before the transaction (``kafka/bounds.py``): the offset of ``latest`` (the end
the consumer reads to) or of a record time (ListOffsets by timestamp), as a ``Start``. Here,
inside the transaction, the rule:

- a topic's partition count is recorded at the file's first claim of any of its partitions
  (``topic_starts``), or before it, under --changelog, from another host's position records
  (``follow_topic_start``); a partition numbered at or past it was added to the topic later, and
  starts at its earliest offset whatever the policy: its records were all written after the
  file started, and the consumer learns of a new partition only at a metadata refresh, so
  ``latest`` would silently skip what was written meanwhile;
- any other partition starts at the policy's offset, kept within the log's bounds (read a
  moment before the offset: the log may have moved between the two reads);
- with no ``Start`` (``earliest``, or a claim made without asking), the log's first offset.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import NamedTuple

from aiokafka import TopicPartition

from sqlstate.state.queries import sql

EARLIEST = "earliest"


@dataclass(frozen=True)
class Start:
    """Where ``--start-from`` puts a partition of a topic, read from Kafka before its claim:
    the policy as recorded (``latest``, or the UTC time of a timestamp start), the offset it
    resolved to, and how many partitions the topic has now."""

    policy: str
    offset: int
    partitions: int


class StartedAt(NamedTuple):
    """Where a partition's state begins, as recorded with its position: the policy that chose
    it and the offset. Under --changelog every position record carries it, so that every
    file's copy of the partition says where its state begins; and with it the topic's
    partition count at its first claim (``topic_partitions``), so that a host that only
    followed the topic so far knows which partitions were added later when it first claims
    one (its own count, taken then, would hold them too)."""

    policy: str
    offset: int
    topic_partitions: int | None = None


def started_at(conn: sqlite3.Connection, tp: TopicPartition) -> StartedAt | None:
    """The start recorded with ``tp``'s position, and its topic's recorded partition count;
    None if no start is."""
    row = conn.execute(sql("read_start"), {"topic": tp.topic, "partition": tp.partition}).fetchone()
    return None if row is None or row[1] is None else StartedAt(row[0], row[1], row[2])


def follow_topic_start(
    conn: sqlite3.Connection, tp: TopicPartition, start: StartedAt, now: str
) -> None:
    """Record the partition count that another host's position record carries for ``tp``'s
    topic, unless this file has one: the count of the topic's first claim in the group."""
    if start.topic_partitions is not None:
        conn.execute(
            sql("record_topic_start"),
            {"topic": tp.topic, "partitions": start.topic_partitions, "now": now},
        )


def first_start(
    conn: sqlite3.Connection,
    tp: TopicPartition,
    start: Start | None,
    first: int,
    end: int,
    now: str,
) -> tuple[str, int]:
    """The policy and offset the partition starts at should the file have no position for it:
    ``first``/``end`` are its log's bounds. Called at every claim, in its transaction: the
    first claim of a topic records its partition count (a file made before it was recorded
    records it at its first claim since)."""
    if start is None:
        return EARLIEST, first
    conn.execute(
        sql("record_topic_start"),
        {"topic": tp.topic, "partitions": max(start.partitions, tp.partition + 1), "now": now},
    )
    partitions = conn.execute(sql("read_topic_start"), {"topic": tp.topic}).fetchone()[0]
    if tp.partition >= partitions:
        return EARLIEST, first
    return start.policy, min(max(start.offset, first), end)
