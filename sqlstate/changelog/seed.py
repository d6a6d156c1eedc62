"""A changelog that is still empty, for a partition whose state this file already holds: the
claim publishes that whole state first (the seed), so that every other host can restore it.

It happens once per partition, after ``sqlstate rebuild`` handed a file over to a new group
(docs/rebuild.md): the file then holds the new processors' state of every partition at its
positions, and the new group's changelogs are empty. Anywhere else a claimed partition's
changelog holds its state already: every claim publishes the partition's start, so a changelog
that a claim ever wrote is never empty again (compaction keeps each key's last record, and a
changelog's offsets never go back).

The order is a batch's: the seed's rows, its position and its start go to the changelog in one
Kafka transaction, through the claim's producer (which fenced every earlier one), and only then
does the file record the changelog offset it reached. A crash between the two leaves the file
as it was and the changelog holding the seed: the next claim restores that seed onto the same
rows, which changes nothing.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Sequence

from aiokafka import TopicPartition

from sqlstate.changelog.offsets import record_changelog_offset
from sqlstate.changelog.producers import ChangelogProducer, publish_all
from sqlstate.changelog.state_table import StateTable
from sqlstate.changelog.table_sql import partition_rows
from sqlstate.changelog.tables import PARTITION, table_columns
from sqlstate.errors import ChangelogError
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
    "published the state of %(topic)s-%(partition)d to its empty changelog: %(records)d rows"
    " at position %(next_offset)d",
)

#: The column that, where a state table has it, says which input topic a row belongs to.
TOPIC = "topic"


class _Seed:
    """What a seed publishes: the partition's rows, position and start."""

    def __init__(self, rows: list[Row], next_offset: int, start: StartedAt | None) -> None:
        self.rows = rows
        self.next_offset = next_offset
        self.start = start


async def seed(
    database: Database,
    tp: TopicPartition,
    tables: Sequence[StateTable],
    producer: ChangelogProducer,
) -> bool:
    """Publish ``tp``'s state to its changelog, which the caller found empty, through the
    claim's ``producer``; whether there was a state to publish (a partition this file has no
    position for has none: its claim starts it). ``ChangelogError`` if the publish failed (the
    claim waits and tries again)."""
    found = await database.read(functools.partial(_read_seed, tp=tp, tables=tables))
    if found is None:
        return False
    (outcome,) = await publish_all([(producer, found.rows, found.next_offset, found.start)])
    if isinstance(outcome, ChangelogError):
        raise outcome
    await database.transaction(
        functools.partial(
            record_changelog_offset, tp=tp, next_offset=outcome, log_end_offset=outcome
        )
    )
    _SEEDED.log(**partition_fields(tp, records=len(found.rows), next_offset=found.next_offset))
    return True


def _read_seed(
    conn: sqlite3.Connection, tp: TopicPartition, tables: Sequence[StateTable]
) -> _Seed | None:
    """``tp``'s rows in every state table, its position and its start, in one read
    transaction; None if the file has no position for it."""
    position = conn.execute(
        sql("read_next_offset"), {"topic": tp.topic, "partition": tp.partition}
    ).fetchone()
    if position is None:
        return None
    rows: list[Row] = []
    for table in tables:
        columns = [name for name, _ in table_columns(conn, table.name)]
        partition = next(column for column in table.key if column.lower() == PARTITION)
        topic = next((column for column in columns if column.lower() == TOPIC), None)
        rows += conn.execute(
            partition_rows(table, columns, partition, topic),
            {"partition": tp.partition, "topic": tp.topic},
        ).fetchall()
    return _Seed(rows, int(position[0]), started_at(conn, tp))
