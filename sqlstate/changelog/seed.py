"""The seed: a file handed over to a new group from the input publishes each partition's whole
state as the first transaction of the new group's changelog, so that every other host can
restore and follow it (docs/rebuild.md).

``sqlstate rebuild`` (``state/handover.py``) leaves one row per partition in ``changelog_seeds``
with the hand-over's value; nowhere else is a seed ever made. While a partition's row is there:

- its claim, once the restore has read the changelog to its end, publishes the partition's rows,
  position and start in one Kafka transaction through the claim's producer (which fenced every
  earlier one), the position record carrying the hand-over's value; then, in one SQLite
  transaction, the file records the changelog offset it reached and drops the row;
- whatever applies the changelog to the file (a restore, the standby) checks the first position
  record it meets (``own_seed``): the file's own seed (a kill -9 came between its Kafka commit
  and the file's) is applied, onto the same rows, and the row dropped; any other is another
  host's state, of which this file, built from the input, is no prefix: nothing is applied, the
  daemon stops with exit code 5, and ``sqlstate rebuild`` run again follows that group instead.
  Chunks without records (past a seed a kill aborted) change nothing, and the row stays until a
  seed commits.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition

from sqlstate.changelog.offsets import record_changelog_offset
from sqlstate.changelog.producers import ChangelogProducer
from sqlstate.changelog.records import POSITION_KEY, PositionChange, decode
from sqlstate.changelog.state_table import StateTable
from sqlstate.changelog.table_sql import partition_rows
from sqlstate.changelog.tables import partition_columns, table_columns
from sqlstate.errors import ChangelogLostError, ProcessorError
from sqlstate.observe.logs import LogEvent, partition_fields
from sqlstate.state.database import Database
from sqlstate.state.model import Row
from sqlstate.state.queries import sql
from sqlstate.state.start import StartedAt, started_at

logger = logging.getLogger(__name__)
_SEEDED = LogEvent(
    logger,
    logging.INFO,
    "changelog_seeded",
    "published the state of %(topic)s-%(partition)d to its new changelog: %(records)d rows"
    " at position %(next_offset)d",
)


@dataclass(frozen=True)
class _Seed:
    """What a seed publishes: the partition's rows, position and start, and the hand-over's
    value."""

    rows: list[Row]
    next_offset: int
    start: StartedAt | None
    hand_over: str


async def seed(
    database: Database,
    tp: TopicPartition,
    tables: Sequence[StateTable],
    producer: ChangelogProducer,
) -> bool:
    """At a claim, once ``tp``'s changelog is restored to its end: publish ``tp``'s seed through
    the claim's ``producer`` if it is still to be published; whether it was.
    ``ChangelogError`` if the publish failed (the claim waits and tries again)."""
    found = await database.read(functools.partial(_read_seed, tp=tp, tables=tables))
    if found is None:
        return False
    offset = await producer.publish(found.rows, found.next_offset, found.start, found.hand_over)
    await database.transaction(functools.partial(_seeded, tp=tp, offset=offset))
    _SEEDED.log(**partition_fields(tp, records=len(found.rows), next_offset=found.next_offset))
    return True


def own_seed(
    conn: sqlite3.Connection, tp: TopicPartition, records: Sequence[tuple[bytes, bytes | None, int]]
) -> bool:
    """Before changelog ``records`` of ``tp`` are applied (in the same transaction): whether
    they hold this file's own seed, which the caller then marks published (``seed_applied``);
    ``ChangelogLostError`` if they begin with another host's state instead."""
    row = conn.execute(sql("pending_seed"), {"topic": tp.topic, "partition": tp.partition})
    pending = row.fetchone()
    if pending is None or not records:
        return False
    first = next((record for record in records if record[0] == POSITION_KEY), None)
    change = None
    if first is not None:
        try:
            change = decode(first[0], first[1])
        except ProcessorError:
            change = None
    if isinstance(change, PositionChange) and change.seed == pending[0]:
        return True
    raise ChangelogLostError(
        f"this file holds the state of {tp.topic}-{tp.partition} that sqlstate rebuild built"
        " from the input, and this group's changelog of it begins with another host's state"
        " (another host handed over from the input too): nothing was applied. Run sqlstate"
        " rebuild again with the same flags: it builds the file from this group's changelogs"
    )


def seed_applied(conn: sqlite3.Connection, tp: TopicPartition) -> None:
    """The file's own seed of ``tp`` is in the changelog and in the file: none is to be made."""
    conn.execute(sql("forget_seed"), {"topic": tp.topic, "partition": tp.partition})


def _seeded(conn: sqlite3.Connection, tp: TopicPartition, offset: int) -> None:
    record_changelog_offset(conn, tp, offset, offset)
    seed_applied(conn, tp)


def _read_seed(
    conn: sqlite3.Connection, tp: TopicPartition, tables: Sequence[StateTable]
) -> _Seed | None:
    """``tp``'s seed, read in one transaction; None if none is to be made."""
    params = {"topic": tp.topic, "partition": tp.partition}
    pending = conn.execute(sql("pending_seed"), params).fetchone()
    position = conn.execute(sql("read_next_offset"), params).fetchone()
    if pending is None or position is None:
        return None
    rows: list[Row] = []
    for table in tables:
        columns = [name for name, _ in table_columns(conn, table.name)]
        partition, topic = partition_columns(table, columns)
        rows += conn.execute(partition_rows(table, columns, partition, topic), params).fetchall()
    return _Seed(rows, int(position[0]), started_at(conn, tp), str(pending[0]))
