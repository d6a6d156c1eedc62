"""``sqlstate verify``: recompute a file's state from Kafka and say exactly where it differs.

1. Open the file read-only; in one read transaction take its positions, the settings its state
   was made with (isolation level, processors, topic IDs) and every row of its state tables. It
   never takes the write lock, so a daemon running on the file is never held up; a snapshot
   (``sqlstate snapshot``) is checked the same way.
2. Ask Kafka for each stored partition's log bounds, and read it with a consumer outside any
   group, at the recorded isolation level, from its first offset up to the stored position.
3. Run the same processors over those records into a scratch database through the daemon's own
   batch transaction (``recompute.py``), with the same decoding and bad-record policy.
4. Compare the two table by table (``state_diff.py``): rows missing, extra and different, per
   partition where the table keeps the partition, else per table; and each position against
   its log's bounds.

What the file records is used as recorded: the isolation level, the topic IDs, and which
processors keep each topic (the flags must name the same ones; without any, the recorded
built-ins). The formats, the bad-record policy and the window settings are not recorded in the
file: they are taken from the flags, as ``run`` takes them.

Records Kafka no longer has (deleted by retention or ``kafka-delete-records``) cannot be read
again. A partition whose log starts above offset 0 is recomputed from its first offset; if the
result differs from the file, the difference may come from the deleted records, so the
partition is reported *not fully checked* (with the offsets it could not read) rather than
different; only a table each row of which is one record (``RECORD_TABLES``: ``latest``, the dead
letters) is still compared exactly there, from the first offset on. The same holds for a topic
deleted and created again since the file's state was made, and for a position below the log's
first offset (nothing of those is compared).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from sqlstate.app.processor_checks import load_checked
from sqlstate.app.processor_errors import logger as rejections_logger
from sqlstate.app.recompute import Recomputed, Span, recompute
from sqlstate.app.state_diff import TableDiff, compare, grouped_by_partition
from sqlstate.app.verdict import PartitionCheck, Verdict
from sqlstate.changelog.tables import DEAD_LETTERS, DEAD_LETTERS_KEY
from sqlstate.errors import (
    AuthenticationError,
    BrokerError,
    ConfigError,
    ProcessorError,
    TopicNotFoundError,
)
from sqlstate.kafka.client import (
    build_range_reader,
    partition_counts,
    refusal,
    topic_ids,
    worth_asking_why,
)
from sqlstate.kafka.decoding import Decoding
from sqlstate.kafka.decoding import logger as decoding_logger
from sqlstate.kafka.schemas import schemas_for
from sqlstate.observe.stats import Stats
from sqlstate.processors.registry import BUILT_INS, Processors
from sqlstate.settings import DEFAULT_PROCESSORS, IsolationLevel, Settings, VerifyOptions
from sqlstate.state import migrate, recorded, table_rows
from sqlstate.state.database import Database
from sqlstate.state.model import Position
from sqlstate.state.queries import sql
from sqlstate.state.reads import positions
from sqlstate.state.store import Store
from sqlstate.state.table_rows import Row, TableShape

#: Tables each row of which is one record, named by this column (its offset). Where records
#: below an offset were deleted, each row at or past it is still recomputed exactly: a key's
#: ``latest`` row whose last record Kafka still has, a dead letter Kafka still has.
RECORD_TABLES = {"latest": "offset", "rejected_records": "offset"}


@dataclass(frozen=True)
class _FileState:
    """The file as of one read transaction."""

    positions: list[Position]
    isolation_level: IsolationLevel
    processors: dict[str, list[str]]  # topic -> recorded processor names
    topic_ids: dict[str, str | None]
    rows: dict[str, list[Row] | None]


async def verify(settings: Settings, options: VerifyOptions) -> Verdict:
    """Check ``settings.database`` against Kafka for ``settings.topics`` (module docstring)."""
    async with Database.reading(settings.database, settings.busy_timeout_s) as database:
        first_look = await database.read(
            functools.partial(_read_file, topics=settings.topics, tables=())
        )
        absent = sorted(set(settings.topics) - set(first_look.processors))
        if absent:
            raise ConfigError(
                f"{settings.database} holds no position of topic {', '.join(absent)}: nothing"
                " to verify there (check --topic and --database)"
            )
        settings = _with_recorded(settings, first_look)
        processors, _ = load_checked(settings)
        with contextlib.closing(processors), tempfile.TemporaryDirectory() as scratch_dir:
            _check_processors(first_look, processors.names)
            scratch = await _scratch(Path(scratch_dir) / "recomputed.db", settings, processors)
            try:
                shapes = await scratch.database.read(
                    functools.partial(_shapes, processors=processors)
                )
                state = await database.read(
                    functools.partial(_read_file, topics=settings.topics, tables=shapes)
                )
                checks, recomputed = await _recompute(settings, state, scratch, processors)
                recomputed_rows = await scratch.database.read(
                    functools.partial(table_rows.read_tables, tables=shapes)
                )
            finally:
                await scratch.database.close()
    return _verdict(settings, options, state, shapes, checks, recomputed, recomputed_rows)


def _with_recorded(settings: Settings, state: _FileState) -> Settings:
    """``settings`` at the file's isolation level, and, without --processor and --sql, with
    the built-ins the file records (the default when it records none)."""
    settings = dataclasses.replace(settings, isolation_level=state.isolation_level)
    if settings.processors or settings.sql_files:
        return settings
    names = sorted({name for names in state.processors.values() for name in names})
    if names and all(name in BUILT_INS for name in names):
        return dataclasses.replace(settings, processors=tuple(names))
    return settings


def _check_processors(state: _FileState, names: Sequence[str]) -> None:
    """Refuse flags that name other processors than those the file records for a topic."""
    wanted = sorted(names)
    for topic, recorded_names in state.processors.items():
        if recorded_names != wanted:
            raise ProcessorError(
                f"the state of topic {topic} in this file is kept by processors"
                f" {', '.join(recorded_names)}, and verify was given {', '.join(wanted)}: give"
                " the same --processor and --sql flags as the run that made the file"
            )


def _read_file(
    conn: sqlite3.Connection, topics: Sequence[str], tables: Sequence[TableShape]
) -> _FileState:
    """The file's positions of ``topics``, its recorded settings and ``tables``' rows: all in
    the caller's one read transaction, so all as of the same commit."""
    stored = [p for p in positions(conn) if p.topic in topics]
    with_positions = sorted({p.topic for p in stored})
    processors = {}
    for topic in with_positions:
        names = [row[0] for row in conn.execute(sql("recorded_processors"), {"topic": topic})]
        processors[topic] = names or list(DEFAULT_PROCESSORS)
    ids = {}
    for topic in with_positions:
        row = conn.execute(sql("read_topic_id"), {"topic": topic}).fetchone()
        ids[topic] = None if row is None else row["topic_id"]
    level: IsolationLevel = "read_committed"
    if recorded.state_setting(conn, recorded.ISOLATION_LEVEL) == "read_uncommitted":
        level = "read_uncommitted"
    return _FileState(stored, level, processors, ids, table_rows.read_tables(conn, tables))


def _shapes(conn: sqlite3.Connection, processors: Processors) -> list[TableShape]:
    """Every state table of the scratch schema (sqlstate's and the processors'), keyed by what
    its processor declares (``changelog_tables``), else by its PRIMARY KEY."""
    declared: dict[str, tuple[str, ...]] = {DEAD_LETTERS: DEAD_LETTERS_KEY}
    for member in processors.members:
        for table, key in (getattr(member, "changelog_tables", None) or {}).items():
            declared[table] = tuple(key)
    return [
        table_rows.shape(conn, name, declared.get(name)) for name in table_rows.state_tables(conn)
    ]


async def _scratch(path: Path, settings: Settings, processors: Processors) -> Store:
    """A new database with sqlstate's schema and the processors' tables."""
    database = await Database.open(path, busy_timeout_s=settings.busy_timeout_s)
    try:
        with _quiet(migrate.logger, logging.WARNING):
            await migrate.apply_pending(database)
            await migrate.apply_processor_migrations(database, processors.members)
    except BaseException:
        await database.close()
        raise
    return Store(database)


@contextlib.contextmanager
def _quiet(logger: logging.Logger, level: int) -> Iterator[None]:
    """``logger`` below ``level`` left unsaid for a block: what the daemon's modules say of the
    scratch file (each migration applied, each record dead-lettered there) is no news to the
    user, whose file verify only reads; the report says what matters."""
    before = logger.level
    logger.setLevel(max(before, level))
    try:
        yield
    finally:
        logger.setLevel(before)


async def _recompute(
    settings: Settings, state: _FileState, scratch: Store, processors: Processors
) -> tuple[list[PartitionCheck], Recomputed]:
    """Read Kafka's bounds, decide what can be read of each stored partition, and recompute."""
    # A one-shot audit gives the registry --connect-timeout to answer, as it gives Kafka.
    schemas = schemas_for(settings, Stats(), give_up_after_s=settings.connect_timeout_s)
    decoding = Decoding(settings.key_format, settings.value_format, schemas)
    consumer = build_range_reader(
        settings,
        key_deserializer=decoding.key_deserializer,
        value_deserializer=decoding.value_deserializer,
    )
    try:
        await start_reader(consumer, settings)
        tps = [TopicPartition(p.topic, p.partition) for p in state.positions]
        ids = await topic_ids(consumer, state.topic_ids)
        missing = sorted(set(state.topic_ids) - set(ids))
        if missing:
            raise TopicNotFoundError(f"topic {', '.join(missing)} does not exist in Kafka")
        firsts, ends = await log_bounds(consumer, tps)
        checks, spans = _plan(state, ids, firsts, ends)
        # A record that does not decode, or that a processor fails on, is found again as the
        # run found it: not worth a warning each time.
        with _quiet(decoding_logger, logging.ERROR), _quiet(rejections_logger, logging.ERROR):
            recomputed = await recompute(consumer, scratch, processors, decoding, spans, settings)
    finally:
        await consumer.stop()
    return checks, recomputed


async def log_bounds(
    consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """The first and end offsets of those of ``tps`` that Kafka has; ``BrokerError`` when
    Kafka cannot tell them (a partition without a leader, a broker gone meanwhile)."""
    try:
        # Only partitions Kafka has: a topic created again with fewer partitions lacks some,
        # and asking their offsets waits out the request timeout, then fails.
        counts = await partition_counts(consumer, {tp.topic for tp in tps})
        there = [tp for tp in tps if tp.partition < counts[tp.topic]]
        if not there:
            return {}, {}
        return await consumer.beginning_offsets(there), await consumer.end_offsets(there)
    except KafkaError as error:
        raise BrokerError(f"Kafka could not tell the partitions' offsets: {error!r}") from error


async def start_reader(consumer: AIOKafkaConsumer, settings: Settings) -> None:
    """Start a range reader, or ``BrokerError``/``AuthenticationError`` within --connect-timeout."""
    try:
        await asyncio.wait_for(consumer.start(), settings.connect_timeout_s)
        # A broker that refused an OAUTHBEARER token answers no metadata, which start() does
        # not notice; topics() fails at once.
        await asyncio.wait_for(consumer.topics(), settings.connect_timeout_s)
    except (TimeoutError, KafkaError, OSError) as error:
        refused = None
        if worth_asking_why(error, settings.security):
            refused = await refusal(
                settings.bootstrap_servers, settings.security, settings.connect_timeout_s
            )
        if refused:
            raise AuthenticationError(refused) from error
        raise BrokerError(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {error!r}"
        ) from error


def _plan(
    state: _FileState,
    ids: Mapping[str, str | None],
    firsts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
) -> tuple[list[PartitionCheck], dict[TopicPartition, Span]]:
    """Each stored partition's check, and what to read of it: from its log's first offset up
    to its stored position, or to the log's end if that comes first."""
    checks: list[PartitionCheck] = []
    spans: dict[TopicPartition, Span] = {}
    for p in state.positions:
        tp = TopicPartition(p.topic, p.partition)
        first, end = firsts.get(tp), ends.get(tp)
        check = PartitionCheck(p.topic, p.partition, p.next_offset, first, end, None, 0)
        checks.append(check)
        old_id, new_id = state.topic_ids.get(p.topic), ids.get(p.topic)
        if old_id is not None and new_id is not None and old_id != new_id:
            check.unchecked = (
                f"the topic was deleted and created again (its ID is {new_id}; the file's"
                f" state was made from {old_id}): none of its records can be read again"
            )
            continue
        if first is None or end is None:
            check.unchecked = (
                f"Kafka has no partition {p.partition} of the topic now (it was deleted and"
                " created again with fewer partitions): none of its records can be read again"
            )
            continue
        # Where the file's state of the partition begins: the offset its --start-from chose
        # (recorded since), else the start of the topic. Records before it were never state.
        begins = p.start_offset or 0
        if p.next_offset <= begins:
            # No record went into its state: whatever rows the file holds of it are extra.
            continue
        if p.next_offset < first:
            check.unchecked = (
                f"the file's position {p.next_offset} is below the log's first offset {first}:"
                f" offsets {begins}-{first - 1} were deleted from Kafka"
            )
            continue
        if first > begins:
            check.checked_from = first
            check.unchecked = (
                f"offsets {begins}-{first - 1} were deleted from Kafka (retention or"
                " kafka-delete-records): a state made from them cannot be recomputed"
            )
        first = max(first, begins)
        if p.next_offset > end:
            check.problems.append(
                f"the file's position {p.next_offset} is past the log's end {end}: the file"
                " claims records Kafka does not have"
            )
        check.read_from = first
        spans[tp] = Span(first, min(p.next_offset, end))
    return checks, spans


def _verdict(
    settings: Settings,
    options: VerifyOptions,
    state: _FileState,
    shapes: Sequence[TableShape],
    checks: list[PartitionCheck],
    recomputed: Recomputed,
    recomputed_rows: Mapping[str, list[Row] | None],
) -> Verdict:
    by_partition = {(c.topic, c.partition): c for c in checks}
    for tp, reached in recomputed.reached.items():
        check = by_partition[(tp.topic, tp.partition)]
        check.reached = reached
        check.records = recomputed.records.get(tp, 0)
        if tp in recomputed.stopped:
            check.problems.append(
                f"{recomputed.stopped[tp]}, and --on-bad-record is fail, but the file's"
                " position is past it: its state was made with other --key-format,"
                " --value-format or --on-bad-record flags"
            )
    whole_tables: list[TableDiff] = []
    topics = {c.topic for c in checks}
    for table in shapes:
        # A table the file lacks (its processor's migrations never ran there) holds no rows.
        diffs = compare(
            table,
            _checkable(table, state.rows.get(table.name) or [], checks),
            recomputed_rows.get(table.name) or [],
            list(by_partition),
            topics,
            options.samples,
        )
        for group, diff in diffs.items():
            if group is None or not grouped_by_partition(table):
                diff.certain = not any(c.unchecked for c in checks)
                whole_tables.append(diff)
                continue
            if group not in by_partition:
                # State of a partition the file has no position for.
                orphan = PartitionCheck(group[0], group[1], -1, None, None, None, 0)
                orphan.problems.append("the file holds state of it but no position")
                by_partition[group] = orphan
                checks.append(orphan)
            check = by_partition[group]
            diff.certain = not check.unchecked or (
                table.name in RECORD_TABLES and check.checked_from is not None
            )
            check.tables.append(diff)
    return Verdict(
        database=settings.database,
        isolation_level=settings.isolation_level,
        processors=[*settings.processor_specs, *map(str, settings.sql_files)],
        partitions=sorted(checks, key=lambda c: (c.topic, c.partition)),
        tables=whole_tables,
        allow_unchecked=options.allow_unchecked,
    )


def _checkable(table: TableShape, rows: list[Row], checks: Sequence[PartitionCheck]) -> list[Row]:
    """``rows`` of the file without those of a table of records that come from records Kafka
    deleted (below a partition's ``checked_from``): nothing can be compared with them."""
    column = RECORD_TABLES.get(table.name)
    deleted_below = {(c.topic, c.partition): c.checked_from for c in checks if c.checked_from}
    if column is None or not deleted_below or not grouped_by_partition(table):
        return rows
    topic_at, partition_at = table.columns.index("topic"), table.columns.index("partition")
    offset_at = table.columns.index(column)
    return [
        row
        for row in rows
        if row[offset_at] >= deleted_below.get((row[topic_at], row[partition_at]), 0)
    ]
