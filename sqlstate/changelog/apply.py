"""Restore and standby side: records of a partition's changelog into this file, one transaction.

``apply_changes`` is a transaction function like those of ``store.py`` (run it through
``Database.transaction``): in it,

1. compare-and-set on the file's changelog offset for the partition: records below it are
   already in the file (applied before, or written by an owner of the partition on this very
   file) and are skipped, so applying is monotonic and applying twice changes nothing;
2. the remaining records, last one per key: every touched row is deleted by its key, then each
   one's new value inserted (a tombstone only deletes). Deleting them all first means no insert
   can meet a row that a later record would move away, whatever unique indexes the table has:
   what is inserted is the owner's state at the end of these records;
3. the last position record sets the input partition's position (``follow_position`` in
   queries.sql), if it counts offsets of the input topic the file counts (``identity.py``);
4. the file's changelog offset moves to the end of these records.

The rows arrive complete, so the triggers of the file's own schema (a ``--sql`` processor may
derive one table from another with them) must not fire again here: the derived table's rows
come from the changelog too. They are switched off for the transaction. sqlstate's TEMP capture
triggers still fire (SQLite exempts TEMP triggers from that switch since 3.35); what they caught
is dropped before the commit.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from sqlstate.changelog.identity import check_position_topic
from sqlstate.changelog.offsets import changelog_offset, record_changelog_offset
from sqlstate.changelog.records import PositionChange, decode
from sqlstate.changelog.table_sql import delete_by_key, insert_row
from sqlstate.changelog.tables import StateTable
from sqlstate.errors import DatabaseError, ProcessorError
from sqlstate.queries import sql

# sqlite3_db_config's option that switches triggers off (sqlite3.h; Python 3.12 exports it).
_SQLITE_DBCONFIG_ENABLE_TRIGGER = 1003

# Built once per table (and set of columns): the connection's statement cache keys on the text.
_delete_sql = functools.cache(delete_by_key)
_insert_sql = functools.lru_cache(maxsize=1024)(insert_row)


@dataclass(frozen=True)
class Applied:
    """What one ``apply_changes`` did."""

    records: int  # records at or past the file's changelog offset
    skipped: int  # records below it: already in the file
    rows: int  # distinct rows written with a new value
    tombstones: int  # distinct rows deleted
    position: int | None  # the input partition's position set, if a position record came
    next_offset: int  # the file's changelog offset for the partition after the transaction


def apply_changes(
    conn: sqlite3.Connection,
    topic: str,
    partition: int,
    records: Sequence[tuple[bytes, bytes | None, int]],
    tables: Sequence[StateTable],
    *,
    now: str,
    next_offset: int | None = None,
    log_end_offset: int | None = None,
) -> Applied:
    """Apply ``records`` (in changelog offset order) of the changelog of input partition
    (``topic``, ``partition``). ``next_offset``: the changelog position after them, as the reader
    knows it (past a transaction marker); by default the last record's offset + 1.
    ``log_end_offset``: the changelog's end as the reader saw it (None: not known), for progress.
    ``ProcessorError`` for a record of a table not in ``tables`` or one that does not decode."""
    tp = TopicPartition(topic, partition)
    applied = changelog_offset(conn, tp)
    fresh = [record for record in records if record[2] >= applied]
    end = max(applied, next_offset or 0, fresh[-1][2] + 1 if fresh else 0)
    if not fresh:
        if end > applied:
            record_changelog_offset(conn, tp, end, log_end_offset)
        return Applied(0, len(records), 0, 0, None, end)
    # Only each key's last record matters: full values, and a tombstone deletes.
    last: dict[bytes, bytes | None] = {key: value for key, value, _ in fresh}
    by_name = {table.name: table for table in tables}
    deletes: dict[StateTable, list[tuple[Any, ...]]] = {}
    inserts: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]] = {}
    position: int | None = None
    tombstones = 0
    for key, value in last.items():
        change = decode(key, value)
        if isinstance(change, PositionChange):
            check_position_topic(conn, topic, partition, change.topic_id, now)
            position = change.next_offset
            continue
        table = by_name.get(change.table)
        if table is None or len(change.key) != len(table.key):
            raise ProcessorError(
                f"the changelog of {topic}-{partition} has a row of table {change.table} keyed"
                f" by {len(change.key)} columns, which none of this run's processors keeps so:"
                " every host must run the same processors"
            )
        deletes.setdefault(table, []).append(change.key)
        if change.row is None:
            tombstones += 1
        else:
            columns = tuple(change.row)
            inserts.setdefault((table.name, columns), []).append(tuple(change.row.values()))
    with _main_triggers_off(conn):
        for table, keys in deletes.items():
            conn.executemany(_delete_sql(table), keys)
        for (name, columns), rows in inserts.items():
            conn.executemany(_insert_sql(name, columns), rows)
    if position is not None:
        conn.execute(
            sql("follow_position"),
            {"topic": topic, "partition": partition, "next_offset": position, "now": now},
        )
    if conn.execute(sql("changelog_capture_installed")).fetchone()[0]:
        conn.execute(sql("clear_changelog_capture"))  # not this file's owner's changes
    record_changelog_offset(conn, tp, end, log_end_offset)
    written = sum(len(values) for values in inserts.values())
    return Applied(len(fresh), len(records) - len(fresh), written, tombstones, position, end)


@contextlib.contextmanager
def _main_triggers_off(conn: sqlite3.Connection) -> Iterator[None]:
    """The file's own triggers switched off for the block, if it has any. (Switching expires
    the connection's prepared statements, which SQLite then prepares again: skipped when
    there is no trigger, as with the built-in processors.)"""
    if not conn.execute(sql("main_has_triggers")).fetchone()[0]:
        yield
        return
    switch = _trigger_switch(conn)
    switch(False)
    try:
        yield
    finally:
        switch(True)


def _trigger_switch(conn: sqlite3.Connection) -> Callable[[bool], None]:
    """A function that switches the connection's triggers on or off."""
    setconfig = getattr(conn, "setconfig", None)
    if setconfig is not None:  # Python 3.12 and later
        return lambda on: setconfig(_SQLITE_DBCONFIG_ENABLE_TRIGGER, on)
    # Python 3.11's sqlite3 has no setconfig: call sqlite3_db_config on the connection's
    # handle. In CPython 3.11 the handle (sqlite3 *db) is the first field of the connection
    # object, right after the object header; the file name SQLite gives for that handle must
    # be the connection's own before anything is changed through it.
    library = _sqlite_library()
    handle = ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value
    file = conn.execute(sql("database_file")).fetchone()[0]
    if handle is None or library.sqlite3_db_filename(handle, b"main").decode() != file:
        raise DatabaseError(
            "cannot switch off the database's triggers to apply the changelog on this Python;"
            " run sqlstate on Python 3.12 or later"
        )

    def switch(on: bool) -> None:
        result = ctypes.c_int()
        code = library.sqlite3_db_config(
            handle, _SQLITE_DBCONFIG_ENABLE_TRIGGER, int(on), ctypes.byref(result)
        )
        if code != sqlite3.SQLITE_OK or result.value != int(on):
            raise DatabaseError(f"cannot switch the database's triggers {'on' if on else 'off'}")

    return switch


@functools.cache
def _sqlite_library() -> ctypes.CDLL:
    """The SQLite library Python's sqlite3 module uses: its extension module's symbols include
    it, whether linked in or loaded beside it."""
    module = importlib.import_module("_sqlite3")
    library = ctypes.CDLL(getattr(module, "__file__", None))
    library.sqlite3_db_filename.restype = ctypes.c_char_p
    library.sqlite3_db_filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    library.sqlite3_db_config.restype = ctypes.c_int
    library.sqlite3_db_config.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int),
    ]
    return library
