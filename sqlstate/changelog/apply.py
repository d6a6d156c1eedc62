"""Restore and standby side: records of a partition's changelog into this file, in the caller's
transaction.

``apply_changes`` is a transaction function like those of ``state/transactions.py`` (run it through
``Database.transaction``): in it,

1. compare-and-set on the file's changelog offset for the partition: records below it are
   already in the file (applied before, or written by an owner of the partition on this very
   file) and are skipped, so applying is monotonic and applying twice changes nothing. The one
   move back is ``forget_for_restore``'s, to restore a partition whole; a chunk whose reading
   began past the file's offset is then not applied (``standby.apply_chunk``);
2. every remaining record is checked, as input from anyone who can write the topic: a row must
   name a state table of this run's processors (never positions or another table of sqlstate's),
   carry exactly its columns, agree with its key, and belong to this changelog's topic and
   partition; a position must not go back, nor past the input partition's end. What fails is
   set aside (``Applied.quarantined``) and its offset passed over: one bad record never stops a
   host, nor keeps it from the records after it;
3. the remaining rows, last one per key: every touched row is deleted by its key, then each
   one's new value inserted (a tombstone only deletes). Deleting them all first means no insert
   can meet a row that a later record would move away, whatever unique indexes the table has:
   what is inserted is the owner's state at the end of these records. A row SQLite refuses (a
   constraint, an integer past 64 bits) is set aside in the same way;
4. the last acceptable position record sets the input partition's position (``follow_position``
   in queries.sql), if it counts offsets of the input topic the file counts (``identity.py``:
   another incarnation's position stops the host, exit 5, rather than be set aside);
5. the file's changelog offset moves to the end of these records.

The rows arrive complete, so the triggers of the file's own schema (a ``--sql`` processor may
derive one table from another with them) must not fire again here: the derived table's rows
come from the changelog too. They are off for the writes, through interfaces that Python and
SQLite document:

- Python 3.12 and later: ``Connection.setconfig(SQLITE_DBCONFIG_ENABLE_TRIGGER, False)``, on
  again after the writes. Nothing in the file changes.
- Python 3.11, whose sqlite3 has no ``setconfig``: the triggers are dropped inside the apply's
  transaction and created again from their own text (``sqlite_master.sql``) before it commits,
  in the order of their rows there, which decides the order SQLite fires them in. No other
  connection sees the schema without them (the write lock is held from BEGIN IMMEDIATE, WAL
  readers see only commits), and a failure rolls the drop back with everything else. What
  does change: the schema's version (other connections read the schema again, once) and the
  triggers' place in ``sqlite_master``, after the other objects, with the same text. This way
  goes when Python 3.11 does.

Also weighed: a flag that the triggers check (a TEMP row set only while applying) works only
for triggers sqlstate writes, and these are the user's, stored in the file; an authorizer
cannot leave out a trigger's DELETE or ``RAISE``; the C call ``sqlite3_db_config`` needs the
connection's ``sqlite3*``, which Python 3.11 does not give. Neither way costs anything on a file
whose schema has no trigger (the built-in processors): the apply only asks ``sqlite_master``.
The batch path never runs this code.

sqlstate's TEMP capture triggers (installed on the connection of a process under
``--changelog``) are not the file's: SQLite exempts TEMP triggers from
``SQLITE_DBCONFIG_ENABLE_TRIGGER`` since 3.35. What they catch here is not this file's owner's
change and is dropped before the commit. They make an applied row 2-3 times as costly, so a
transaction that applies ``QUIET_CAPTURE_FROM`` records or more (``capture_quieted``: a
restore's chunk, a standby's transaction) drops them and installs them again before it commits, as
``install_capture`` made them. Below that the triggers fire: dropping and installing them costs
about a millisecond, and expires every statement the connection has prepared, which the next
batch prepares again.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from aiokafka import TopicPartition

from sqlstate.changelog.capture import install_capture
from sqlstate.changelog.identity import check_position_topic
from sqlstate.changelog.offsets import changelog_offset, record_changelog_offset
from sqlstate.changelog.records import (
    POSITION_KEY,
    PositionChange,
    RowChange,
    RowCheck,
    decode,
)
from sqlstate.changelog.state_table import StateTable
from sqlstate.changelog.table_sql import (
    capture_trigger_names,
    delete_by_key,
    delete_partition,
    drop_temp_trigger,
    drop_trigger,
    insert_row,
)
from sqlstate.changelog.tables import partition_columns, table_columns
from sqlstate.errors import DatabaseError, ProcessorError
from sqlstate.state.queries import sql
from sqlstate.state.start import follow_topic_start

# Python 3.12's sqlite3 switches a connection's triggers off and on (``Connection.setconfig``);
# 3.11's cannot, and drops and creates them again instead (see the module's docstring).
CAN_SWITCH_TRIGGERS = sys.version_info >= (3, 12)

# Built once per table (and set of columns): the connection's statement cache keys on the text.
_delete_sql = functools.cache(delete_by_key)
_delete_partition_sql = functools.cache(delete_partition)
_insert_sql = functools.lru_cache(maxsize=1024)(insert_row)


#: Records from which a transaction's applies switch the capture triggers off for their writes
#: (see the module's docstring). Where dropping and installing them again starts to pay: applying
#: 100 rows took 1.2 ms with the triggers firing and 1.6 ms without them, 300 rows 5.0 and 3.0 ms,
#: 1,000 rows 19 and 8 ms (``key_counts``, SQLite 3.40, 2 vCPUs).
QUIET_CAPTURE_FROM = 200
#: Bytes of a quarantined record's key and value kept for the report.
QUARANTINE_KEPT = 1_000
# What SQLite (or binding a value for it) raises for one row it cannot store: a constraint, an
# integer past 64 bits, a string that is not Unicode text, an object or array as a value. Not
# OperationalError: a full disk or a locked file is the database's failure, not the record's.
_ROW_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    OverflowError,
    UnicodeEncodeError,
)


@dataclass(frozen=True)
class Quarantined:
    """A changelog record set aside instead of applied, and why (the first bytes of it)."""

    offset: int
    reason: str
    key: bytes
    value: bytes | None


@dataclass(frozen=True)
class Applied:
    """What one ``apply_changes`` did."""

    records: int  # records at or past the file's changelog offset
    skipped: int  # records below it: already in the file
    rows: int  # distinct rows written with a new value
    tombstones: int  # distinct rows deleted
    position: int | None  # the input partition's position set, if a position record came
    next_offset: int  # the file's changelog offset for the partition after the transaction
    quarantined: tuple[Quarantined, ...] = ()  # records passed over, not applied
    # The file's offset lay below where the records' reading began (``ChangelogChunk.start``):
    # nothing applied; read the partition again from ``next_offset``.
    behind: bool = False


#: A changelog record as ``apply_changes`` takes it: key, value (None: a tombstone), offset.
ChangelogRecordLike: TypeAlias = tuple[bytes, bytes | None, int]
# A row change checked against its table, with the record it came from.
_Change: TypeAlias = tuple[StateTable, RowChange, ChangelogRecordLike]


def apply_changes(
    conn: sqlite3.Connection,
    topic: str,
    partition: int,
    records: Sequence[ChangelogRecordLike],
    tables: Sequence[StateTable],
    *,
    now: str,
    next_offset: int | None = None,
    log_end_offset: int | None = None,
    input_end: int | None = None,
) -> Applied:
    """Apply ``records`` (in changelog offset order) of the changelog of input partition
    (``topic``, ``partition``). ``next_offset``: the changelog position after them, as the reader
    knows it (past a transaction marker); by default the last record's offset + 1.
    ``log_end_offset``: the changelog's end as the reader saw it (None: not known), for progress.
    ``input_end``: the input partition's log end, which no position may pass (None: not known).

    A record that is not a row of a state table keyed, shaped and placed as its table says, or
    a position that goes back or past ``input_end``, is not applied but returned in
    ``Applied.quarantined``; its offset is passed over all the same, so that following goes on.
    """
    tp = TopicPartition(topic, partition)
    applied = changelog_offset(conn, tp)
    fresh = [record for record in records if record[2] >= applied]
    end = max(applied, next_offset or 0, fresh[-1][2] + 1 if fresh else 0)
    if not fresh:
        if end > applied:
            record_changelog_offset(conn, tp, end, log_end_offset)
        return Applied(0, len(records), 0, 0, None, end)
    quarantined: list[Quarantined] = []

    def refuse(record: ChangelogRecordLike, reason: str) -> None:
        key, value, offset = record
        kept = None if value is None else value[:QUARANTINE_KEPT]
        quarantined.append(Quarantined(offset, reason, key[:QUARANTINE_KEPT], kept))

    position = _position(conn, tp, fresh, input_end, refuse, now)
    changes = _checked_changes(conn, tp, fresh, tables, refuse)
    with _main_triggers_off(conn), capture_quieted(conn, tables, len(fresh)):
        written, tombstones = _write(conn, changes, refuse)
    if position is not None:
        start = position.start
        if start is not None:
            follow_topic_start(conn, tp, start, now)
        conn.execute(
            sql("follow_position"),
            {
                "topic": topic,
                "partition": partition,
                "next_offset": position.next_offset,
                "now": now,
                "start_from": None if start is None else start.policy,
                "start_offset": None if start is None else start.offset,
            },
        )
    if conn.execute(sql("changelog_capture_installed")).fetchone()[0]:
        conn.execute(sql("clear_changelog_capture"))  # not this file's owner's changes
    record_changelog_offset(conn, tp, end, log_end_offset)
    return Applied(
        len(fresh),
        len(records) - len(fresh),
        written,
        tombstones,
        None if position is None else position.next_offset,
        end,
        tuple(sorted(quarantined, key=lambda q: q.offset)),
    )


def forget_for_restore(
    conn: sqlite3.Connection,
    tp: TopicPartition,
    tables: Sequence[StateTable],
    applied: int,
    log_start: int,
    claimed: Callable[[TopicPartition], bool] | None = None,
) -> tuple[int, bool] | None:
    """Make input partition ``tp`` ready to be restored whole from its changelog, whose tail
    alone could miss deletions (``horizon.py``): its rows in every state table and its position
    forgotten, its changelog offset moved back to ``log_start``, where the restore begins (a
    transaction function). One transaction: a crash leaves the file as it was, or a partition
    the next restore builds again from the start; meanwhile ``progress`` shows it far behind.
    The file's triggers stay off, as for an apply: its derived rows are state tables too.

    Only if the file still stands at ``applied``, the offset found too old: another process on
    the file may have moved it meanwhile (restored, or forgotten, the partition itself). Returns
    where to read the partition from and whether it was forgotten here: ``log_start`` once
    forgotten, else the file's offset as it now is; None, with nothing done, if ``claimed``
    (asked here) says a claim of this process took the partition meanwhile: its own restore
    decides."""
    if claimed is not None and claimed(tp):
        return None
    now_at = changelog_offset(conn, tp)
    partition = {"topic": tp.topic, "partition": tp.partition}
    if now_at != applied or conn.execute(sql("pending_seed"), partition).fetchone():
        # Moved meanwhile; or a hand-over's seed not yet published (``seed.py``): until it is,
        # the file's rows are the partition's state, and its changelog holds nothing else.
        return now_at, False
    several_topics = conn.execute(sql("other_topics"), partition).fetchone() is not None
    with _main_triggers_off(conn), capture_quieted(conn, tables, QUIET_CAPTURE_FROM):
        for table in tables:
            columns = [name for name, _ in table_columns(conn, table.name)]
            placed_by, topic = partition_columns(table, columns)
            if several_topics and topic is None:
                # Its rows of this partition number may be another input topic's, which this
                # changelog does not bring back: kept (docs/scaling.md, Restoring whole).
                continue
            conn.execute(_delete_partition_sql(table, placed_by, topic), partition)
    conn.execute(sql("forget_position_for_restore"), partition)
    if conn.execute(sql("changelog_capture_installed")).fetchone()[0]:
        conn.execute(sql("clear_changelog_capture"))  # not a change of this file's owner's
    record_changelog_offset(conn, tp, log_start)
    return log_start, True


def _position(
    conn: sqlite3.Connection,
    tp: TopicPartition,
    fresh: Sequence[ChangelogRecordLike],
    input_end: int | None,
    refuse: Callable[[ChangelogRecordLike, str], None],
    now: str,
) -> PositionChange | None:
    """The last acceptable position record: one that never goes back
    (the owner's positions only move forward) and stays within the input's log. A position of
    another incarnation of the input topic is no bad record but another log: it stops the host
    (``ChangelogLostError``, exit 5) before anything is written."""
    row = conn.execute(
        sql("read_position"), {"topic": tp.topic, "partition": tp.partition}
    ).fetchone()
    floor = 0 if row is None else int(row[2])
    accepted: PositionChange | None = None
    for record in fresh:
        if record[0] != POSITION_KEY:
            continue
        change = _decoded(record, refuse)
        if change is None:
            continue
        assert isinstance(change, PositionChange)
        check_position_topic(conn, tp.topic, tp.partition, change.topic_id, now)
        if change.next_offset < floor:
            refuse(record, f"position {change.next_offset} goes back from {floor}")
        elif input_end is not None and change.next_offset > input_end:
            refuse(
                record,
                f"position {change.next_offset} lies past the end of {tp.topic}-{tp.partition}"
                f" ({input_end})",
            )
        else:
            accepted, floor = change, change.next_offset
    return accepted


def _checked_changes(
    conn: sqlite3.Connection,
    tp: TopicPartition,
    fresh: Sequence[ChangelogRecordLike],
    tables: Sequence[StateTable],
    refuse: Callable[[ChangelogRecordLike, str], None],
) -> list[_Change]:
    """Each key's last row change, checked against the table it names. Only the state tables
    of this run's processors (sqlstate's dead letters among them) can be written: never
    positions, changelog offsets or any other table of sqlstate's, whatever a record names."""
    # Only each key's last record matters: full values, and a tombstone deletes.
    last = {record[0]: record for record in fresh if record[0] != POSITION_KEY}
    by_name = {table.name: table for table in tables}
    checks: dict[str, RowCheck] = {}
    changes: list[_Change] = []
    for record in last.values():
        change = _decoded(record, refuse)
        if change is None:
            continue
        assert isinstance(change, RowChange)
        table = by_name.get(change.table)
        if table is None:
            refuse(
                record,
                f"table {change.table!r} is not a state table of this run's processors:"
                " every host must run the same processors",
            )
            continue
        check = checks.get(table.name)
        if check is None:
            columns = (name for name, _ in table_columns(conn, table.name))
            check = checks[table.name] = RowCheck(
                table.name, table.key, columns, tp.topic, tp.partition
            )
        problem = check.problem(change)
        if problem is not None:
            refuse(record, problem)
            continue
        changes.append((table, change, record))
    return changes


def _decoded(
    record: ChangelogRecordLike, refuse: Callable[[ChangelogRecordLike, str], None]
) -> RowChange | PositionChange | None:
    """The change ``record`` carries; None (and the record set aside) if it does not decode."""
    try:
        return decode(record[0], record[1])
    except ProcessorError as error:
        refuse(record, str(error))
        return None


def _write(
    conn: sqlite3.Connection,
    changes: Sequence[_Change],
    refuse: Callable[[ChangelogRecordLike, str], None],
) -> tuple[int, int]:
    """Write ``changes``: every touched row deleted by its key, then each new value inserted
    (a tombstone only deletes). Deleting them all first means no insert can meet a row that a
    later record would move away, whatever unique indexes the table has. Rows, tombstones.

    If SQLite refuses a row, everything is undone to a savepoint and written again one change
    at a time, each in a savepoint of its own: the refused ones are set aside, the rest kept."""
    # By table name: a StateTable hashes all its fields at every lookup.
    deletes: dict[str, tuple[StateTable, list[tuple[Any, ...]]]] = {}
    inserts: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]] = {}
    tombstones = 0
    for table, (_, key, row), _ in changes:
        entry = deletes.get(table.name)
        if entry is None:
            entry = deletes[table.name] = (table, [])
        entry[1].append(key)
        if row is None:
            tombstones += 1
            continue
        columns = tuple(row)
        values = inserts.get((table.name, columns))
        if values is None:
            values = inserts[table.name, columns] = []
        values.append(tuple(row.values()))
    try:
        with _savepoint(conn):
            for table, keys in deletes.values():
                conn.executemany(_delete_sql(table), keys)
            for (name, columns), rows in inserts.items():
                conn.executemany(_insert_sql(name, columns), rows)
    except _ROW_ERRORS:
        return _write_one_by_one(conn, changes, refuse)
    return sum(len(values) for values in inserts.values()), tombstones


def _write_one_by_one(
    conn: sqlite3.Connection,
    changes: Sequence[_Change],
    refuse: Callable[[ChangelogRecordLike, str], None],
) -> tuple[int, int]:
    written = tombstones = 0
    for table, change, record in changes:
        try:
            with _savepoint(conn):
                conn.execute(_delete_sql(table), change.key)
                if change.row is not None:
                    conn.execute(
                        _insert_sql(table.name, tuple(change.row)), tuple(change.row.values())
                    )
        except _ROW_ERRORS as error:
            refuse(record, f"SQLite refused it: {error}")
            continue
        if change.row is None:
            tombstones += 1
        else:
            written += 1
    return written, tombstones


@contextlib.contextmanager
def _savepoint(conn: sqlite3.Connection) -> Iterator[None]:
    """A savepoint inside the apply's transaction: undone (and released) if the block raises."""
    conn.execute(sql("savepoint_apply"))
    try:
        yield
    except BaseException:
        # After a full disk or an I/O error SQLite may have rolled the whole transaction back,
        # savepoint included: the original error is the one to raise.
        with contextlib.suppress(sqlite3.Error):
            conn.execute(sql("rollback_to_apply"))
            conn.execute(sql("release_apply"))
        raise
    conn.execute(sql("release_apply"))


@contextlib.contextmanager
def _main_triggers_off(conn: sqlite3.Connection) -> Iterator[None]:
    """The file's own triggers off for the block, if it has any. Both ways expire the
    connection's prepared statements, which SQLite then prepares again: skipped when there is no
    trigger, as with the built-in processors. Run inside the apply's transaction: if the block
    raises, the transaction is rolled back, and with it whatever was switched or dropped here."""
    triggers = [(str(name), str(text)) for name, text in conn.execute(sql("main_triggers"))]
    if not triggers:
        yield
    elif CAN_SWITCH_TRIGGERS:
        with _switched_off(conn):
            yield
    else:
        with _dropped(conn, triggers):
            yield


def capture_quieted(
    conn: sqlite3.Connection, tables: Sequence[StateTable], records: int
) -> contextlib.AbstractContextManager[None]:
    """The capture triggers off for a block that applies ``records`` changelog records, if
    they are that many that it pays (``QUIET_CAPTURE_FROM``); otherwise left to fire. Nested
    (a standby's poll, then each of its chunks), the inner block finds them off already."""
    if records >= QUIET_CAPTURE_FROM:
        return _capture_off(conn, tables)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _capture_off(conn: sqlite3.Connection, tables: Sequence[StateTable]) -> Iterator[None]:
    """This connection's capture triggers dropped for the block and installed again after it,
    in the caller's transaction (TEMP objects: no other connection sees either). Only when they
    are exactly those ``install_capture`` makes for ``tables``, which is how they come back;
    otherwise (none, or others) they stay and fire. Not installed again if the block raises:
    the caller's rollback brings them back."""
    if not conn.in_transaction:
        raise DatabaseError("the capture triggers are dropped for an apply only in a transaction")
    names = [str(name) for (name,) in conn.execute(sql("capture_trigger_names"))]
    if not names or names != [name for table in tables for name in capture_trigger_names(table)]:
        yield
        return
    for name in names:
        conn.execute(drop_temp_trigger(name))
    yield
    install_capture(conn, tables)


@contextlib.contextmanager
def _switched_off(conn: sqlite3.Connection) -> Iterator[None]:
    """Python 3.12 and later: SQLite's switch, off for the block and on again after it."""
    if sys.version_info < (3, 12):
        raise AssertionError("Connection.setconfig came with Python 3.12")
    conn.setconfig(sqlite3.SQLITE_DBCONFIG_ENABLE_TRIGGER, False)
    try:
        yield
    finally:
        conn.setconfig(sqlite3.SQLITE_DBCONFIG_ENABLE_TRIGGER, True)


@contextlib.contextmanager
def _dropped(conn: sqlite3.Connection, triggers: Sequence[tuple[str, str]]) -> Iterator[None]:
    """Python 3.11: ``triggers`` (name, text, in the order of their rows in ``sqlite_master``)
    dropped for the block and created again after it, in that order (SQLite fires a table's
    triggers in an order that follows it), all in the caller's transaction. Not again if the block
    raises: the caller's rollback brings them back as they were, and a CREATE after SQLite
    rolled back by itself (a full disk) would commit on its own."""
    if not conn.in_transaction:
        raise DatabaseError("the file's triggers are dropped for an apply only in a transaction")
    for name, _ in triggers:
        conn.execute(drop_trigger(name))
    yield
    for _, text in triggers:
        conn.execute(text)  # the trigger's CREATE TRIGGER, as SQLite keeps it in the schema
    # A CREATE TRIGGER whose table a TEMP table shadows would land in the TEMP schema, and the
    # trigger would leave the file at the commit: refuse (rolls back) rather than lose it.
    again = [(str(name), str(text)) for name, text in conn.execute(sql("main_triggers"))]
    if again != list(triggers):
        raise DatabaseError(
            "the file's triggers did not come back as they were after an apply (a TEMP table"
            " of the same name as a trigger's table?); rolled back"
        )
