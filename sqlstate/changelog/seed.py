"""A changelog that is still empty, for a partition whose state this file already holds: the
claim publishes that whole state first (the seed), so that every other host can restore it.

It happens once per partition, after ``sqlstate rebuild`` handed a file over to a new group
(docs/rebuild.md): the file then holds the new processors' state of every partition at its
positions, and the new group's changelogs hold nothing committed (empty, or only a seed that a
kill aborted). Anywhere else a claimed partition's changelog holds its state already: every
claim commits the partition's start there, so a file with a position for it has read a
committed record of it (compaction keeps each key's last record). The seed is also limited to a
file that was handed over.

The order is a batch's: the seed's rows, its position and its start go to the changelog in one
Kafka transaction, through the claim's producer (which fenced every earlier one), and only then
does the file record the changelog offset it reached.

A file handed over from the input holds a state the new group's changelogs never carried: it is
no prefix of them, and nothing of them may be applied onto it, but the seed it publishes itself
(``refuse_foreign_seed``). So should another host have seeded a partition first (both handed
over from the input at once), applying stops with exit code 5 before anything is written:
``sqlstate rebuild`` run again builds the file from that group's changelogs instead. The file
records that it publishes its own seed before it does, so a crash between the seed's Kafka
commit and the file's record of the offset it reached restores that seed onto the same rows.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Sequence

from aiokafka import TopicPartition

from sqlstate.changelog.offsets import (
    changelog_offset_recorded,
    forget_changelog_offset,
    record_changelog_offset,
)
from sqlstate.changelog.producers import ChangelogProducer, publish_all
from sqlstate.changelog.state_table import StateTable
from sqlstate.changelog.table_sql import partition_rows
from sqlstate.changelog.tables import PARTITION, table_columns
from sqlstate.errors import ChangelogError, ChangelogFenced, ChangelogLostError
from sqlstate.observe.logs import LogEvent, partition_fields
from sqlstate.state.database import Database
from sqlstate.state.handover import HAND_OVER
from sqlstate.state.model import Row
from sqlstate.state.queries import sql
from sqlstate.state.recorded import state_setting
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
    """Publish ``tp``'s state to its changelog, in which the caller found nothing committed,
    through the claim's ``producer``; whether there was a state to publish (a partition this
    file has no position for has none: its claim starts it). ``ChangelogError`` if the publish
    failed (the claim waits and tries again)."""
    found = await database.read(functools.partial(_read_seed, tp=tp, tables=tables))
    if found is None:
        return False
    # Recorded first: the changelog from its offset 0 is this file's own seed from now on, so
    # that a crash right after the publish commits restores it onto the same rows
    # (``refuse_foreign_seed``).
    await database.transaction(
        functools.partial(record_changelog_offset, tp=tp, next_offset=0, log_end_offset=None)
    )
    (outcome,) = await publish_all([(producer, found.rows, found.next_offset, found.start)])
    if isinstance(outcome, ChangelogFenced):
        # Certainly not committed, and a newer owner's producer now writes the changelog: what
        # it holds from now on is not this file's seed.
        await database.transaction(functools.partial(forget_changelog_offset, tp=tp))
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
    transaction; None if the file has no position for it, or was never handed over."""
    position = conn.execute(
        sql("read_next_offset"), {"topic": tp.topic, "partition": tp.partition}
    ).fetchone()
    if position is None or state_setting(conn, HAND_OVER) is None:
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


def refuse_foreign_seed(conn: sqlite3.Connection, tp: TopicPartition) -> None:
    """Before changelog records of ``tp`` are applied (a transaction function's first step):
    ``ChangelogLostError`` if this file holds ``tp``'s state from a hand-over from the input,
    has applied nothing of its changelog and has not begun to publish its own seed: those
    records are another host's state, not the continuation of this one."""
    if changelog_offset_recorded(conn, tp) or state_setting(conn, HAND_OVER) is None:
        return
    position = {"topic": tp.topic, "partition": tp.partition}
    if conn.execute(sql("read_next_offset"), position).fetchone() is None:
        return
    raise ChangelogLostError(
        f"this file holds the state of {tp.topic}-{tp.partition} that sqlstate rebuild built"
        " from the input, and this group's changelog of it already holds another state (another"
        " host handed over from the input too, or this host stopped right after publishing"
        " its own): nothing was applied. Run sqlstate rebuild again with the same flags: it"
        " builds the file from this group's changelogs"
    )
