"""sqlstate's transactions: how a batch, a claim and a reset each become one SQLite transaction.

Each transaction is a plain function of a ``sqlite3`` connection, below, run through
``Database.transaction`` (``database.py``), which begins it, commits it, rolls it back on any
failure, waits for a locked file and maps errors. Every statement comes by name from
``queries.sql``, except the processors' own, which they prepare from the records beforehand.

How a batch becomes a transaction (``commit_batch``): for each partition of the batch, in one
``BEGIN IMMEDIATE`` ... ``COMMIT``,

1. compare-and-set its position: move ``next_offset`` from where this consumer last left it to
   the batch's end, only if the row still holds that offset *and* this consumer's epoch. A
   consumer that lost the partition (a zombie) or whose position another member moved changes
   no row;
2. if the row moved, run the processors' statements for the partition's records; if not, skip
   them and report the partition as fenced, with the row that fenced it, read in the same
   transaction.

So a partition's state and its position always change together, and only the partition's
current owner, from the position it last read, can change them.

Under ``--changelog`` (``Store(database, publish)``), each committed partition's changed rows,
caught by the capture triggers, go to its changelog in a Kafka transaction that must commit
before the SQLite transaction does, and the changelog offset reached is recorded beside the
state (``changelog/owner.py`` says why that order). A publish that fails rolls the whole batch
back (``ChangelogPublishFailed``): partitions whose Kafka transaction did commit are then behind
their changelog here, and are restored from it before they are written again.

How an assignment becomes a transaction (``claim``): the isolation level and each topic's ID,
read from Kafka just before, are checked against the ones the state was counted with (and
recorded, at the first claim); a topic whose ID changed was deleted and created again, and under
``--out-of-range reset`` every partition of it is forgotten and starts over. Then each partition
is claimed and its position checked against its log, as above.
"""

from __future__ import annotations

import functools
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from aiokafka import TopicPartition

from sqlstate.changelog.capture import discard_changes, take_changes
from sqlstate.changelog.offsets import record_changelog_offset
from sqlstate.changelog.records import Row
from sqlstate.errors import (
    ChangelogError,
    ChangelogModeError,
    IsolationLevelError,
    ProcessorError,
)
from sqlstate.processors.base import Statement
from sqlstate.settings import DEFAULT_PROCESSORS, OutOfRangePolicy
from sqlstate.state.database import Database, utc_now
from sqlstate.state.out_of_range import LogBounds, recreated_refusal, refusal
from sqlstate.state.queries import sql

Forget = Callable[[TopicPartition], Sequence[Statement]]


class Change(NamedTuple):
    """What one partition's transaction publishes to its changelog under --changelog."""

    rows: Sequence[Row]  # the changed rows, from the capture
    next_offset: int  # the partition's new position
    # The claim whose compare-and-set the batch passed: only that claim's producer may
    # publish it. None: the claim this very transaction makes (its out-of-range reset).
    epoch: int | None


#: Under --changelog: publish each partition's rows and new position, each in its own Kafka
#: transaction; each partition's next changelog offset, or why its transaction did not commit.
#: Called in the database thread, inside the batch's transaction.
Publish = Callable[
    [Mapping[TopicPartition, Change]],
    Mapping[TopicPartition, int | ChangelogError],
]

ISOLATION_LEVEL = "isolation_level"  # its name in the state_settings table
# Whether the state was made with --changelog ("on") or without ("off"), in state_settings.
CHANGELOG = "changelog"


@dataclass(frozen=True)
class Claim:
    """What a consumer holds after claiming a partition: where to go on and its fencing epoch."""

    next_offset: int
    epoch: int


@dataclass(frozen=True)
class Position:
    """One row of the positions table."""

    topic: str
    partition: int
    next_offset: int
    epoch: int
    owner: str
    log_end_offset: int | None
    updated_at: str


@dataclass(frozen=True)
class PartitionBatch:
    """One partition's share of a batch: the position move and the statements that go with it."""

    tp: TopicPartition
    claim: Claim  # where this consumer last left the partition, and its epoch
    next_offset: int  # the position after the batch
    log_end_offset: int | None  # the log end the fetch saw, for the lag
    records: int  # how many records the statements fold in
    statements: Sequence[Statement]
    bad_records: int = 0  # records left out or dead-lettered: they did not decode


@dataclass(frozen=True)
class Committed:
    """The partition's position moved and its statements ran."""

    tp: TopicPartition
    claim: Claim  # the new position, same epoch
    records: int
    # What the statements that carry a ``counter`` returned, by counter name.
    counters: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Fenced:
    """The partition's row did not hold the expected position and epoch: nothing was written.

    ``holder`` is the row as it was in the transaction: a newer epoch means another consumer
    claimed the partition; the same epoch with another offset, that its position was moved.
    """

    tp: TopicPartition
    holder: Position | None
    records: int


Outcome = Committed | Fenced


class ChangelogPublishFailed(ChangelogError):
    """A batch's changelog transactions did not all commit: its SQLite transaction rolled back.

    ``failures``: why, per partition whose Kafka transaction did not commit; ``partitions``:
    every partition the batch wrote (those not in ``failures`` committed to Kafka, so the file
    is behind their changelog until they are restored).
    """

    def __init__(
        self,
        failures: Mapping[TopicPartition, ChangelogError],
        partitions: Sequence[TopicPartition],
    ) -> None:
        super().__init__(
            "changelog transactions failed: "
            + "; ".join(f"{tp.topic}-{tp.partition}: {error}" for tp, error in failures.items())
        )
        self.failures = dict(failures)
        self.partitions = list(partitions)


@dataclass(frozen=True)
class Reset:
    """A partition found out of range and restarted from the log's first offset."""

    tp: TopicPartition
    stored_offset: int
    bounds: LogBounds


@dataclass(frozen=True)
class TopicReset:
    """A topic found deleted and created again: its ID changed. Every partition's state was
    discarded; the claimed ones restart at their new log's first offset, the others at 0, the
    first offset of a new log, until they are claimed."""

    topic: str
    old_id: str
    new_id: str
    stored: dict[int, int]  # each partition's position before the reset


@dataclass(frozen=True)
class Claimed:
    """The result of claiming an assignment: each partition's claim, and the resets it took."""

    claims: dict[TopicPartition, Claim]
    resets: list[Reset]
    recreated: list[TopicReset]


class Store:
    """sqlstate's transactions on an open database."""

    def __init__(self, database: Database, publish: Publish | None = None) -> None:
        self.database = database
        self.publish = publish

    async def commit_batch(self, batch: Sequence[PartitionBatch]) -> list[Outcome]:
        """Commit one batch; each partition's outcome comes from the same transaction. Under
        --changelog, ``ChangelogPublishFailed`` when it rolled back for the changelog."""
        return await self.database.transaction(
            functools.partial(_commit_batch, batch=batch, now=utc_now(), publish=self.publish)
        )

    async def claim(
        self,
        bounds: Mapping[TopicPartition, LogBounds],
        owner: str,
        policy: OutOfRangePolicy,
        forget: Forget,
        *,
        topic_ids: Mapping[str, str | None],
        isolation_level: str,
        lock_wait_s: float | None = None,
    ) -> Claimed:
        """Claim an assignment in one transaction: bump each partition's epoch and record the
        owner, read where it stands, and apply the out-of-range policy against ``bounds`` and
        ``topic_ids`` (read from Kafka just before; an ID of None is not checked). Under
        ``fail`` a position outside its log or a topic whose ID changed raises
        ``OutOfRangeError``, and another isolation level than the recorded one
        ``IsolationLevelError``; nothing at all is written then. With ``lock_wait_s``, a
        database locked longer than that raises ``DatabaseBusyError`` and nothing is written."""
        return await self.database.transaction(
            functools.partial(
                _claim,
                bounds=bounds,
                topic_ids=topic_ids,
                owner=owner,
                policy=policy,
                isolation_level=isolation_level,
                forget=forget,
                now=utc_now(),
                publish=self.publish,
            ),
            lock_wait_s,
        )

    async def check_changelog(self, on: bool) -> None:
        """Refuse (``ChangelogModeError``) a run whose --changelog differs from the state's."""
        await self.database.read(functools.partial(_changelog_refusal, on=on))

    async def record_changelog(self, on: bool) -> None:
        """Refuse as ``check_changelog``, or record the mode if none is: before anything is
        restored into the file (a restore writes positions)."""
        await self.database.transaction(functools.partial(_check_changelog, on=on, now=utc_now()))

    async def isolation_level(self) -> str | None:
        """The isolation level the counts were made with; None before the first claim."""
        return await self.database.read(functools.partial(_state_setting, name=ISOLATION_LEVEL))

    async def reset(
        self, tp: TopicPartition, claim: Claim, bounds: LogBounds, forget: Forget
    ) -> Claim | None:
        """Discard a partition's state and restart it at the log's first offset, in one
        transaction, if this consumer still holds it at ``claim.epoch``; None if it does not."""
        return await self.database.transaction(
            functools.partial(
                _reset,
                tp=tp,
                claim=claim,
                bounds=bounds,
                forget=forget,
                now=utc_now(),
                publish=self.publish,
            )
        )

    async def check_processors(self, topics: Sequence[str], processors: Sequence[str]) -> None:
        """Refuse (``ProcessorError``) what ``record_processors`` would refuse, writing nothing."""
        await self.database.read(
            functools.partial(_processor_changes, topics=topics, processors=processors)
        )

    async def record_processors(self, topics: Sequence[str], processors: Sequence[str]) -> None:
        """Record which processors keep each topic's state, or refuse (``ProcessorError``) a
        set that differs from the one recorded for a topic that already has positions: a
        processor added there would miss the records below them, one removed would fall
        behind them unseen."""
        await self.database.transaction(
            functools.partial(
                _record_processors, topics=topics, processors=processors, now=utc_now()
            )
        )

    async def positions(self) -> list[Position]:
        return await self.database.read(_positions)

    async def position(self, tp: TopicPartition) -> Position | None:
        return await self.database.read(functools.partial(_position, tp=tp))

    async def top_counts(
        self, topic: str | None, limit: int
    ) -> list[tuple[str, str | bytes | None, int]]:
        """The highest totals of the ``counts`` view: (topic, key, count)."""
        return await self.database.read(functools.partial(_top_counts, topic=topic, limit=limit))


# ---- the transactions, run in the database thread ----------------------------------------------


def _commit_batch(
    conn: sqlite3.Connection,
    batch: Sequence[PartitionBatch],
    now: str,
    publish: Publish | None = None,
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    changes: dict[TopicPartition, Change] = {}
    if publish is not None:
        discard_changes(conn)  # only this batch's statements' rows go to the changelog
    for part in batch:
        moved = conn.execute(
            sql("advance_position"),
            {
                "topic": part.tp.topic,
                "partition": part.tp.partition,
                "next_offset": part.next_offset,
                "log_end_offset": part.log_end_offset,
                "now": now,
                "expected_offset": part.claim.next_offset,
                "epoch": part.claim.epoch,
            },
        ).rowcount
        if moved != 1:
            outcomes.append(Fenced(part.tp, _position(conn, part.tp), part.records))
            continue
        counters = _run(conn, part.statements)
        if publish is not None:
            # Even with no row changed (the batch stepped over transaction markers or aborted
            # records only): the position goes to the changelog, so that standbys show the
            # partition at its log's end rather than one marker behind it for good.
            changes[part.tp] = Change(take_changes(conn), part.next_offset, part.claim.epoch)
        outcomes.append(
            Committed(part.tp, Claim(part.next_offset, part.claim.epoch), part.records, counters)
        )
    if publish is not None and changes:
        _publish(conn, publish, changes)
    return outcomes


def _publish(
    conn: sqlite3.Connection,
    publish: Publish,
    changes: Mapping[TopicPartition, Change],
) -> None:
    """Publish ``changes`` and record each partition's changelog offset; or raise
    ``ChangelogPublishFailed``, which rolls back the transaction, if any did not commit."""
    published = publish(changes)
    failures = {tp: outcome for tp, outcome in published.items() if not isinstance(outcome, int)}
    if failures:
        raise ChangelogPublishFailed(failures, list(changes))
    for tp, next_offset in published.items():
        assert isinstance(next_offset, int)
        record_changelog_offset(conn, tp, next_offset, next_offset)


def _claim(
    conn: sqlite3.Connection,
    bounds: Mapping[TopicPartition, LogBounds],
    topic_ids: Mapping[str, str | None],
    owner: str,
    policy: OutOfRangePolicy,
    isolation_level: str,
    forget: Forget,
    now: str,
    publish: Publish | None = None,
) -> Claimed:
    _check_isolation_level(conn, isolation_level, now)
    _check_changelog(conn, publish is not None, now)
    recreated = []
    # Under --changelog a recreated topic stops the daemon: its reset would forget partitions
    # other hosts own, whose changelogs only their owners may write.
    topic_policy: OutOfRangePolicy = "fail" if publish is not None else policy
    for topic in sorted({tp.topic for tp in bounds}):
        topic_id = topic_ids.get(topic)
        if topic_id is not None:
            reset = _check_topic_id(conn, topic, topic_id, bounds, topic_policy, forget, now)
            if reset is not None:
                recreated.append(reset)
    claims: dict[TopicPartition, Claim] = {}
    resets: list[Reset] = []
    changes: dict[TopicPartition, Change] = {}
    for tp, log in sorted(bounds.items()):
        # A partition never seen before starts at the earliest offset Kafka still has.
        row = conn.execute(
            sql("claim_partition"),
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "start_offset": log.first,
                "owner": owner,
                "log_end_offset": log.end,
                "now": now,
            },
        ).fetchone()
        claim = Claim(row["next_offset"], row["epoch"])
        if not log.holds(claim.next_offset):
            if policy == "fail":
                raise refusal(tp, claim.next_offset, log)  # rolls back every claim of the set
            if publish is not None:
                discard_changes(conn)
            _restart(conn, tp, claim.epoch, log, forget, now)
            if publish is not None:
                # The forgotten rows' tombstones go to the changelog too: a standby, or the
                # next owner's restore, must forget them as this file did.
                rows = take_changes(conn)
                if rows:
                    changes[tp] = Change(rows, log.first, None)
            resets.append(Reset(tp, claim.next_offset, log))
            claim = Claim(log.first, claim.epoch)
        claims[tp] = claim
    if publish is not None and changes:
        _publish(conn, publish, changes)
    return Claimed(claims, resets, recreated)


def _check_isolation_level(conn: sqlite3.Connection, level: str, now: str) -> None:
    """Record the isolation level at the first claim; refuse any other one after it."""
    recorded = _state_setting(conn, ISOLATION_LEVEL)
    if recorded is None:
        conn.execute(
            sql("record_state_setting"), {"name": ISOLATION_LEVEL, "value": level, "now": now}
        )
    elif recorded != level:
        raise isolation_refusal(_file_name(conn), recorded, level)


def _changelog_refusal(conn: sqlite3.Connection, on: bool) -> None:
    """Raise ``ChangelogModeError`` if the state was made in the other mode; a file without
    positions takes either."""
    recorded = _state_setting(conn, CHANGELOG)
    wanted = "on" if on else "off"
    if recorded == wanted or not conn.execute(sql("has_positions")).fetchone()[0]:
        return
    if recorded is None and not on:
        return  # counted before the changelog existed: without it, as ever
    file = _file_name(conn)
    if on:
        raise ChangelogModeError(
            f"the state in {file} was made without --changelog: no changelog holds it, so no"
            " other host could restore or follow it, and a partition moving away would lose"
            " it. Start --changelog on a new, empty database file (it restores whatever the"
            " changelogs hold and consumes the rest from the input), or run without --changelog"
        )
    raise ChangelogModeError(
        f"the state in {file} was made with --changelog: running without it would change the"
        " state without its changelog, and every other host's copy would silently diverge."
        " Run with --changelog, or move the file away to start over without it"
    )


def _check_changelog(conn: sqlite3.Connection, on: bool, now: str) -> None:
    """Record the mode at the first claim; refuse the other one after it."""
    _changelog_refusal(conn, on)
    if _state_setting(conn, CHANGELOG) is None:
        conn.execute(
            sql("record_state_setting"),
            {"name": CHANGELOG, "value": "on" if on else "off", "now": now},
        )


def _check_topic_id(
    conn: sqlite3.Connection,
    topic: str,
    topic_id: str,
    bounds: Mapping[TopicPartition, LogBounds],
    policy: OutOfRangePolicy,
    forget: Forget,
    now: str,
) -> TopicReset | None:
    """Record a topic's ID at its first claim. A different one means the topic was deleted and
    created again: under ``fail`` raise; under ``reset`` forget every partition of it (the
    claimed ones restart at their log's first offset) and record the new ID."""
    row = conn.execute(sql("read_topic_id"), {"topic": topic}).fetchone()
    old_id = None if row is None else row["topic_id"]
    if old_id == topic_id:
        return None
    if old_id is None:  # the first claim, or a database made before topic IDs were recorded
        conn.execute(sql("record_topic_id"), {"topic": topic, "topic_id": topic_id, "now": now})
        return None
    stored = {
        partition: next_offset
        for partition, next_offset in conn.execute(sql("topic_positions"), {"topic": topic})
    }
    if policy == "fail":
        raise recreated_refusal(topic, old_id, topic_id, stored)
    for partition in stored:
        tp = TopicPartition(topic, partition)
        log = bounds.get(tp)
        conn.execute(
            sql("restart_topic_partition"),
            {
                "topic": topic,
                "partition": partition,
                "next_offset": 0 if log is None else log.first,
                "log_end_offset": None if log is None else log.end,
                "now": now,
            },
        )
        _run(conn, forget(tp))
    conn.execute(sql("record_topic_id"), {"topic": topic, "topic_id": topic_id, "now": now})
    return TopicReset(topic, old_id, topic_id, stored)


def isolation_refusal(database: object, recorded: str, wanted: str) -> IsolationLevelError:
    """The error of a run with another isolation level than the counts were made with."""
    return IsolationLevelError(
        f"the counts in {database} were made with --isolation-level {recorded}, and this run"
        f" asks for {wanted}: read_uncommitted counts the records of aborted transactions and"
        f" read_committed does not, so the two cannot be mixed; the database was left"
        f" unchanged. Run with --isolation-level {recorded}, or move {database} away (with its"
        f" -wal) to rebuild the counts from Kafka with {wanted}"
    )


def _reset(
    conn: sqlite3.Connection,
    tp: TopicPartition,
    claim: Claim,
    bounds: LogBounds,
    forget: Forget,
    now: str,
    publish: Publish | None = None,
) -> Claim | None:
    if publish is not None:
        discard_changes(conn)
    if not _restart(conn, tp, claim.epoch, bounds, forget, now):
        return None
    if publish is not None:
        rows = take_changes(conn)
        if rows:
            _publish(conn, publish, {tp: Change(rows, bounds.first, claim.epoch)})
    return Claim(bounds.first, claim.epoch)


def _restart(
    conn: sqlite3.Connection,
    tp: TopicPartition,
    epoch: int,
    bounds: LogBounds,
    forget: Forget,
    now: str,
) -> bool:
    """Move the position to the log's first offset and forget the partition's state, if the row
    still holds ``epoch``."""
    moved = conn.execute(
        sql("reset_position"),
        {
            "topic": tp.topic,
            "partition": tp.partition,
            "next_offset": bounds.first,
            "log_end_offset": bounds.end,
            "now": now,
            "epoch": epoch,
        },
    ).rowcount
    if moved != 1:
        return False
    _run(conn, forget(tp))
    return True


def _run(conn: sqlite3.Connection, statements: Sequence[Statement]) -> Counter[str]:
    """Run prepared statements in order; return what the counting ones returned."""
    counters: Counter[str] = Counter()
    for statement in statements:
        for setup in statement.setup:
            conn.execute(setup)
        if statement.counter is None:
            conn.executemany(statement.sql, statement.rows)
            continue
        for row in statement.rows:
            counters[statement.counter] += int(conn.execute(statement.sql, row).fetchone()[0] or 0)
    return counters


def _record_processors(
    conn: sqlite3.Connection, topics: Sequence[str], processors: Sequence[str], now: str
) -> None:
    for topic, recorded in _processor_changes(conn, topics, processors).items():
        conn.execute(sql("forget_recorded_processors"), {"topic": topic})
        for processor in recorded:
            conn.execute(
                sql("record_processor"), {"topic": topic, "processor": processor, "now": now}
            )


def _processor_changes(
    conn: sqlite3.Connection, topics: Sequence[str], processors: Sequence[str]
) -> dict[str, list[str]]:
    """The processors to record for each topic whose record is not the one wanted, or
    ``ProcessorError`` for a topic with positions and another set."""
    wanted = sorted(processors)
    changes: dict[str, list[str]] = {}
    for topic in topics:
        recorded = [row[0] for row in conn.execute(sql("recorded_processors"), {"topic": topic})]
        if recorded == wanted:
            continue
        if not conn.execute(sql("topic_has_positions"), {"topic": topic}).fetchone()[0]:
            changes[topic] = wanted
            continue
        if not recorded:
            # Counted before sqlstate recorded its processors: the counts are all there is.
            recorded = changes[topic] = list(DEFAULT_PROCESSORS)
            if recorded == wanted:
                continue
        raise ProcessorError(
            f"the state of topic {topic} in this database is kept by processors"
            f" {', '.join(recorded)}, and this run has {', '.join(wanted) or 'none'}: a"
            " processor added to a topic that already has positions would miss the records"
            " below them, and one left out would fall behind unseen. Run with the same"
            " processors, or start the new set on a new database file"
        )
    return changes


def _file_name(conn: sqlite3.Connection) -> str:
    """The file of the connection's main database, for messages."""
    return str(conn.execute(sql("database_file")).fetchone()["file"])


def _state_setting(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute(sql("read_state_setting"), {"name": name}).fetchone()
    return None if row is None else str(row["value"])


def _position(conn: sqlite3.Connection, tp: TopicPartition) -> Position | None:
    row = conn.execute(
        sql("read_position"), {"topic": tp.topic, "partition": tp.partition}
    ).fetchone()
    return None if row is None else Position(*row)


def _positions(conn: sqlite3.Connection) -> list[Position]:
    return [Position(*row) for row in conn.execute(sql("list_positions"))]


def _top_counts(
    conn: sqlite3.Connection, topic: str | None, limit: int
) -> list[tuple[str, str | bytes | None, int]]:
    rows = conn.execute(sql("top_counts"), {"topic": topic, "limit": limit})
    return [(row["topic"], row["key"], row["count"]) for row in rows]
