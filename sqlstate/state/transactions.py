"""sqlstate's transactions: how a batch and a claim (with its out-of-range reset) each become one
SQLite transaction.

Each transaction is a plain function of a ``sqlite3`` connection, run in the database thread
through ``Database.transaction`` (``database.py``, called by ``store.py``), which begins it,
commits it, rolls it back on any failure, waits for a locked file and maps errors. Every
statement comes by name from ``queries.sql``, except the processors' own, which they prepare
from the records beforehand.

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

Under ``--on-processor-error dead-letter`` (a ``RejectionLimit``), a statement that fails on a
record raises ``StatementFailed`` and rolls the batch back; the batch comes again with that
partition's records apart, each applied in a savepoint of its own or written to
``rejected_records`` (``rejections.py``), in this same transaction.

Under ``--changelog`` (a ``ChangelogSide``, ``changelog_side.py``), each committed partition's
changed rows, caught by the capture triggers, go to its changelog in a Kafka transaction that
must commit before the SQLite transaction does, and the changelog offset reached is recorded
beside the state (``changelog/owner.py`` says why that order). A publish that fails rolls the
whole batch back (``ChangelogPublishFailed``): partitions whose Kafka transaction did commit are
then behind their changelog here, and are restored from it before they are written again.

How an assignment becomes a transaction (``claim_assignment``): the isolation level and each
topic's ID, read from Kafka just before, are checked against the ones the state was counted
with (and recorded, at the first claim: ``recorded.py``); a topic whose ID changed was deleted
and created again, and under ``--out-of-range reset`` every partition of it is forgotten and
starts over. Then each partition is claimed and its position checked against its log, as
above.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import replace

from aiokafka import TopicPartition

from sqlstate.settings import OutOfRangePolicy
from sqlstate.state import recorded
from sqlstate.state.changelog_side import ChangelogSide
from sqlstate.state.model import (
    Change,
    ChangelogPublishFailed,
    Claim,
    Claimed,
    Committed,
    Fenced,
    Forget,
    Outcome,
    PartitionBatch,
    Rejected,
    RejectionLimit,
    Reset,
    StatementFailed,
    TopicReset,
)
from sqlstate.state.out_of_range import LogBounds, refusal
from sqlstate.state.queries import sql
from sqlstate.state.reads import position
from sqlstate.state.rejections import STATEMENT_ERRORS, Apart, record_fault, run_apart
from sqlstate.state.start import StartedAt, first_start, started_at
from sqlstate.state.statements import run_statements


def commit_batch(
    conn: sqlite3.Connection,
    batch: Sequence[PartitionBatch],
    now: str,
    changelog: ChangelogSide | None = None,
    rejections: RejectionLimit | None = None,
) -> list[Outcome]:
    """``rejections``: under --on-processor-error dead-letter, how many records may yet be
    rejected (``rejections.py``); None under ``fail``, where any failure rolls the batch back."""
    outcomes: list[Outcome] = []
    changes: dict[TopicPartition, Change] = {}
    if changelog is not None:
        changelog.discard_changes(conn)  # only this batch's statements' rows go to the changelog
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
            outcomes.append(Fenced(part.tp, position(conn, part.tp), part.records))
            continue
        rejected: Sequence[Rejected] = ()
        at_end = 0
        if rejections is None:
            counters = run_statements(conn, part.statements)
        else:
            counters, rejected, at_end, in_a_row = _run_or_set_apart(conn, part, rejections)
            rejections = replace(rejections, in_a_row=in_a_row)
        if changelog is not None:
            # Even with no row changed (the batch stepped over transaction markers or aborted
            # records only): the position goes to the changelog, so that standbys show the
            # partition at its log's end rather than one marker behind it for good.
            changes[part.tp] = Change(
                changelog.take_changes(conn),
                part.next_offset,
                part.claim.epoch,
                started_at(conn, part.tp),
            )
        outcomes.append(
            Committed(
                part.tp,
                Claim(part.next_offset, part.claim.epoch),
                part.records - len(rejected),
                counters,
                rejected,
                at_end,
            )
        )
    if changelog is not None and changes:
        _publish(conn, changelog, changes)
    return outcomes


def claim_assignment(
    conn: sqlite3.Connection,
    bounds: Mapping[TopicPartition, LogBounds],
    topic_ids: Mapping[str, str | None],
    owner: str,
    policy: OutOfRangePolicy,
    isolation_level: str,
    forget: Forget,
    now: str,
    changelog: ChangelogSide | None = None,
    held_at: Mapping[TopicPartition, int] | None = None,
    processors: Sequence[str] | None = None,
) -> Claimed:
    # A partition claimed again while running (``held_at``: the epoch this consumer holds it
    # at) is claimed only if its row still holds that epoch, checked in this transaction: a
    # zombie's claim would fence the consumer that owns it now.
    taken = [
        tp
        for tp, epoch in sorted((held_at or {}).items())
        if (row := position(conn, tp)) is None or row.epoch != epoch
    ]
    bounds = {tp: log for tp, log in bounds.items() if tp not in taken}
    recorded.check_isolation_level(conn, isolation_level, now)
    recorded.check_changelog(conn, changelog is not None, now)
    if processors is not None:
        # A topic --topic-pattern found while running: its processors are recorded with its
        # first claim (for --topic's topics, the start recorded them: nothing changes).
        recorded.record_processors(conn, sorted({tp.topic for tp in bounds}), processors, now)
    recreated = []
    # Under --changelog a recreated topic stops the daemon: its reset would forget partitions
    # other hosts own, whose changelogs only their owners may write.
    topic_policy: OutOfRangePolicy = "fail" if changelog is not None else policy
    for topic in sorted({tp.topic for tp in bounds}):
        topic_id = topic_ids.get(topic)
        if topic_id is not None:
            reset = recorded.check_topic_id(conn, topic, topic_id, topic_policy, now)
            if reset is not None:
                _forget_topic(conn, reset, bounds, forget, now)
                recreated.append(reset)
    claims: dict[TopicPartition, Claim] = {}
    resets: list[Reset] = []
    changes: dict[TopicPartition, Change] = {}
    started: dict[TopicPartition, StartedAt] = {}
    for tp, log in sorted(bounds.items()):
        # A partition never seen before starts where --start-from puts it; a known one keeps
        # its position, whatever --start-from says now.
        start_from, start_offset = first_start(conn, tp, log.start, log.first, log.end, now)
        new = position(conn, tp) is None
        row = conn.execute(
            sql("claim_partition"),
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "start_offset": start_offset,
                "start_from": start_from,
                "owner": owner,
                "log_end_offset": log.end,
                "now": now,
            },
        ).fetchone()
        claim = Claim(row["next_offset"], row["epoch"])
        if new:
            started[tp] = StartedAt(start_from, start_offset)
        if new and changelog is not None:
            # The start goes to the changelog as the position does, ``earliest`` too: a host
            # that claims the partition next restores it, and never chooses a start of its own
            # (another --start-from, or another count of the topic's partitions, would choose
            # another, skipping records if this claim never commits a batch).
            changes[tp] = Change([], start_offset, None, started_at(conn, tp))
        if not log.holds(claim.next_offset):
            if policy == "fail":
                raise refusal(tp, claim.next_offset, log)  # rolls back every claim of the set
            if changelog is not None:
                changelog.discard_changes(conn)
            _restart(conn, tp, claim.epoch, log, forget, now)
            if changelog is not None:
                # The forgotten rows' tombstones go to the changelog too: a standby, or the
                # next owner's restore, must forget them as this file did.
                rows = changelog.take_changes(conn)
                if rows:
                    changes[tp] = Change(rows, log.first, None, started_at(conn, tp))
            resets.append(Reset(tp, claim.next_offset, log))
            claim = Claim(log.first, claim.epoch)
        claims[tp] = claim
    if changelog is not None and changes:
        _publish(conn, changelog, changes)
    return Claimed(claims, resets, recreated, taken, started)


def _run_or_set_apart(
    conn: sqlite3.Connection, part: PartitionBatch, limit: RejectionLimit
) -> Apart:
    """Run a partition's statements under --on-processor-error dead-letter: whole, as always,
    or, once they failed on a record (``StatementFailed``), each record apart."""
    if part.apart is not None:
        run_statements(conn, part.statements)  # dead letters of records that did not decode
        return run_apart(conn, part.tp, part.apart, limit)
    try:
        counters = run_statements(conn, part.statements)
    except STATEMENT_ERRORS as error:
        if record_fault(error) and conn.in_transaction:
            raise StatementFailed(part.tp, error) from error
        raise
    return Apart(counters, [], 0, 0 if part.records else limit.in_a_row)


def _publish(
    conn: sqlite3.Connection,
    changelog: ChangelogSide,
    changes: Mapping[TopicPartition, Change],
) -> None:
    """Publish ``changes`` and record each partition's changelog offset; or raise
    ``ChangelogPublishFailed``, which rolls back the transaction, if any did not commit."""
    published = changelog.publish(changes)
    failures = {tp: outcome for tp, outcome in published.items() if not isinstance(outcome, int)}
    if failures:
        raise ChangelogPublishFailed(failures, list(changes))
    for tp, next_offset in published.items():
        assert isinstance(next_offset, int)
        changelog.record_offset(conn, tp, next_offset)


def _forget_topic(
    conn: sqlite3.Connection,
    reset: TopicReset,
    bounds: Mapping[TopicPartition, LogBounds],
    forget: Forget,
    now: str,
) -> None:
    """Forget every stored partition of a recreated topic (the claimed ones restart at their
    log's first offset, the others at 0), then record its new ID."""
    for partition in reset.stored:
        tp = TopicPartition(reset.topic, partition)
        log = bounds.get(tp)
        conn.execute(
            sql("restart_topic_partition"),
            {
                "topic": reset.topic,
                "partition": partition,
                "next_offset": 0 if log is None else log.first,
                "log_end_offset": None if log is None else log.end,
                "now": now,
            },
        )
        run_statements(conn, forget(tp))
    recorded.record_topic_id(conn, reset.topic, reset.new_id, now)


def _restart(
    conn: sqlite3.Connection,
    tp: TopicPartition,
    epoch: int,
    bounds: LogBounds,
    forget: Forget,
    now: str,
) -> None:
    """Move the position to the log's first offset and forget the partition's state. The claim
    took ``epoch`` in this same transaction, so the row holds it."""
    conn.execute(
        sql("reset_position"),
        {
            "topic": tp.topic,
            "partition": tp.partition,
            "next_offset": bounds.first,
            "log_end_offset": bounds.end,
            "now": now,
            "epoch": epoch,
        },
    )
    run_statements(conn, forget(tp))
