"""Which tables hold state under ``--changelog``, and the columns that identify their rows.

A changelog record carries one row, keyed by its table and key columns, so every table whose
rows a processor changes must say what identifies a row:

- a Python processor declares it: ``changelog_tables: Mapping[str, Sequence[str]]``, its table
  -> the key columns in order, and optionally ``changelog_matches: Mapping[str, str]``, its
  table -> a SQL condition over ``?1 .. ?n`` (the key's values in that order) that finds the
  row through the table's unique index. Without a match, ``"column" IS ?i`` per key column is
  used, which an index over the plain columns serves; an index over an expression such as
  ``ifnull(key, 0)`` needs the same expression in the match. A Python processor without
  ``changelog_tables`` is refused under ``--changelog``;
- a ``--sql`` processor's keys come from its schema: each table it creates is keyed by its
  PRIMARY KEY, else by its first UNIQUE index over plain columns; a table with neither is
  refused, naming the table;
- sqlstate's own ``rejected_records`` (dead letters, ``--on-bad-record dead-letter``) is always a
  state table: a file without dead letters has no row there and its triggers never fire, and a
  standby must take the dead letters of an owner run with the option whatever its own settings.

Every state table is keyed by the partition too: its key holds a column named ``partition``,
which the processor fills with the record's partition (``:partition``; ``tp.partition`` in
Python), as the built-ins and the examples do. Each input partition has one owner, which ships
its rows through that partition's changelog; a row keyed without the partition (say
``totals(customer PRIMARY KEY, n)``) would be written by the owners of several partitions, each
shipping its own full value, and every standby would keep whichever came last, losing the other
partitions' shares; forgetting one partition could not take its share out either. So such a
table is refused at start under ``--changelog``, naming it: keep one row per partition and sum
them in a view (``examples/customer_totals.sql``). Without ``--changelog`` one file holds every
partition and nothing is refused.

Rows whose key columns hold NULL in a table that allows it (a rowid table's PRIMARY KEY, or a
UNIQUE index, treats NULLs as distinct) share one changelog key: declare key columns NOT NULL,
or key on ``ifnull(column, ...)`` with a match as the built-ins do.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping, Sequence

from sqlstate.changelog.state_table import StateTable
from sqlstate.changelog.table_sql import capture_triggers, delete_by_key, refuse_uncapturable
from sqlstate.errors import ProcessorError
from sqlstate.processors.base import Processor
from sqlstate.processors.guard import WRITES_OF_BUILT_INS
from sqlstate.processors.sql_file import SqlFileProcessor
from sqlstate.state import migrate
from sqlstate.state.queries import sql

#: sqlstate's own state table: the dead letters.
DEAD_LETTERS = "rejected_records"
DEAD_LETTERS_KEY = ("topic", "partition", "offset")
#: The column that every state table's key holds: the record's partition.
PARTITION = "partition"
#: The column that, where a state table has it, says which input topic a row belongs to.
TOPIC = "topic"


def state_tables(processors: Sequence[Processor]) -> list[StateTable]:
    """Every state table of ``processors`` (in order, sqlstate's dead letters first), or
    ``ProcessorError`` for a processor or table whose rows cannot be keyed.

    Works on a scratch schema in memory (sqlstate's migrations, then each processor's), so it
    can run before the database is opened; the database's schema is the same, since a schema
    that differs from the processors' migrations is refused at start.
    """
    scratch = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for migration in migrate.available():
            scratch.executescript(migration.script)
        dead_letters = StateTable(DEAD_LETTERS, DEAD_LETTERS_KEY)
        owned = [("sqlstate", _checked(scratch, "sqlstate", dead_letters))]
        sqlstates = _table_names(scratch)
        not_theirs: list[tuple[str, str]] = []
        for processor in processors:
            owner = processor.name
            if isinstance(processor, SqlFileProcessor) and processor.path is not None:
                owner = f"{owner} (--sql {processor.path})"
            theirs = _tables_of(scratch, processor)
            owned += [(owner, table) for table in theirs]
            allowed = WRITES_OF_BUILT_INS.get(processor.name, set())
            not_theirs += [
                (owner, table.name)
                for table in theirs
                if table.name in sqlstates and table.name not in allowed
            ]
        for _, table in owned:
            # Refused here, at start, rather than when the capture triggers are made.
            capture_triggers(table, [name for name, _ in table_columns(scratch, table.name)])
            refuse_uncapturable(scratch, table)
    finally:
        scratch.close()
    tables = [table for _, table in owned]
    names = [table.name for table in tables]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ProcessorError(
            f"table {twice[0]} is declared as state by two processors: each table's rows"
            " must come from one processor"
        )
    if not_theirs:
        # A standby would apply the rows its changelog_tables ship into sqlstate's table.
        owner, name = not_theirs[0]
        raise ProcessorError(
            f"processor {owner}: changelog_tables names {name}, sqlstate's own table: a"
            " processor's state tables are the ones its migrations create"
        )
    for owner, table in owned:
        _check_keyed_by_partition(owner, table)
    return tables


def _check_keyed_by_partition(owner: str, table: StateTable) -> None:
    """Refuse a table whose rows more than one partition's owner would write (module doc)."""
    if any(column.lower() == PARTITION for column in table.key):
        return
    raise ProcessorError(
        f"processor {owner}: under --changelog, table {table.name} (keyed by"
        f" {', '.join(table.key)}) must be keyed by the partition too: each input partition's"
        " owner ships its rows to other hosts, and a row that several partitions write would be"
        " shipped by several owners, each standby keeping the last one's value and losing the"
        f" other partitions' shares. Add a column {PARTITION}, filled with the record's"
        " partition (:partition in a --sql file), to the table's PRIMARY KEY (and to"
        " changelog_tables for a Python processor), and sum across partitions in a view as"
        " examples/customer_totals.sql does; or run without --changelog"
    )


def partition_columns(table: StateTable, columns: Sequence[str]) -> tuple[str, str | None]:
    """The columns that place a row of ``table`` (with ``columns``) in an input partition: its
    key column ``partition``, and its column ``topic`` where it has one (None: it has not),
    whatever their case. What a seed publishes and a whole restore forgets of a partition."""
    partition = next(column for column in table.key if column.lower() == PARTITION)
    topic = next((column for column in columns if column.lower() == TOPIC), None)
    return partition, topic


def table_columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, int]]:
    """(name, place in the PRIMARY KEY or 0) of each column of ``main.table``, in order."""
    return [(row[0], row[1]) for row in conn.execute(sql("table_columns"), {"table": table})]


def _tables_of(scratch: sqlite3.Connection, processor: Processor) -> list[StateTable]:
    before = _table_names(scratch)
    try:
        for migration in sorted(processor.migrations, key=lambda m: m.name):
            scratch.executescript(migration.script)
    except sqlite3.Error as error:
        raise ProcessorError(
            f"processor {processor.name}: its migrations do not apply: {error}"
        ) from error
    created = sorted(_table_names(scratch) - before)
    declared: Mapping[str, Sequence[str]] | None = getattr(processor, "changelog_tables", None)
    if declared is None:
        if not isinstance(processor, SqlFileProcessor):
            raise ProcessorError(
                f"processor {processor.name} does not say which columns key the rows of its"
                " tables, and --changelog ships every changed row under its key: give it"
                " changelog_tables = {table: (key columns, ...)} (see sqlstate.processors)"
            )
        return [_derived(scratch, processor.name, table) for table in created]
    matches: Mapping[str, str] = getattr(processor, "changelog_matches", None) or {}
    unknown = sorted(set(matches) - set(declared))
    if unknown:
        raise ProcessorError(
            f"processor {processor.name}: changelog_matches names {unknown[0]}, which is not"
            " in its changelog_tables"
        )
    return [
        _checked(scratch, processor.name, StateTable(table, tuple(key), matches.get(table)))
        for table, key in declared.items()
    ]


def _table_names(scratch: sqlite3.Connection) -> set[str]:
    return {row[0] for row in scratch.execute(sql("table_names"))}


def _checked(scratch: sqlite3.Connection, owner: str, table: StateTable) -> StateTable:
    """``table`` if it exists and its key names its columns, each once."""
    columns = {name for name, _ in table_columns(scratch, table.name)}
    if not columns:
        raise ProcessorError(
            f"processor {owner}: changelog table {table.name} does not exist after its migrations"
        )
    missing = [column for column in table.key if column not in columns]
    if not table.key or missing or len(set(table.key)) != len(table.key):
        raise ProcessorError(
            f"processor {owner}: the changelog key of table {table.name} must name its columns,"
            f" each once (it has {', '.join(sorted(columns))}); got {', '.join(table.key) or '()'}"
        )
    if table.match is not None:
        _check_match(scratch, owner, table)
    return table


def _check_match(scratch: sqlite3.Connection, owner: str, table: StateTable) -> None:
    """Refuse a match that SQLite does not compile with the key's parameters."""
    with contextlib.closing(scratch.cursor()) as cursor:
        try:
            cursor.execute(f"EXPLAIN {delete_by_key(table)}", (None,) * len(table.key))
        except sqlite3.Error as error:
            raise ProcessorError(
                f"processor {owner}: the changelog match of table {table.name} does not compile"
                f" with ?1 .. ?{len(table.key)}: {error}"
            ) from error


def _derived(scratch: sqlite3.Connection, owner: str, table: str) -> StateTable:
    """A ``--sql`` table's key: its PRIMARY KEY, else its first UNIQUE index of plain columns."""
    columns = table_columns(scratch, table)
    primary = [name for name, place in sorted(columns, key=lambda c: c[1]) if place > 0]
    if primary:
        return StateTable(table, tuple(primary))
    for (index,) in scratch.execute(sql("table_unique_indexes"), {"table": table}).fetchall():
        indexed = [row[0] for row in scratch.execute(sql("index_columns"), {"index": index})]
        if indexed and None not in indexed:
            return StateTable(table, tuple(indexed))
    raise ProcessorError(
        f"processor {owner}: table {table} has no PRIMARY KEY and no UNIQUE index over plain"
        " columns, so under --changelog its rows cannot be shipped under a key: add a PRIMARY"
        f" KEY to {table} (the columns that identify a row)"
    )
