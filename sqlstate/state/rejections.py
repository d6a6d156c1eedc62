"""--on-processor-error dead-letter in the batch's transaction: which failures a record can cause,
and a partition's records run in pieces, each in a savepoint, the failing records dead-lettered.

The batch is first run as always, whole. When a processor's statement fails with an error a
record's data can cause (``record_fault``), the transaction raises ``StatementFailed`` and rolls
back, nothing of it committed or published. The batch loop cuts that partition's records into
pieces of about the square root of their number, each prepared alone by every processor, and
commits the batch again: ``run_apart`` runs each piece in a savepoint of its own, and a piece
that fails is rolled back to it while the others run on. If any did, the transaction rolls back
again naming them, and the batch comes a third time with those pieces cut into single records.
A single record whose statements fail is rolled back to its savepoint, leaving no trace in any
processor's tables (nor, under ``--changelog``, in the capture, whose TEMP table the savepoint
covers too), and a row goes to ``rejected_records`` in its place. The position, the records
applied and the records rejected commit together, in that one transaction: a record is applied
once or rejected once, never both, never neither. A batch of n records with one failing record
is so run about three times, with about 2 * sqrt(n) pieces prepared apart, rather than n.

A failure that is not the record's (a full disk, a locked or corrupt database, an I/O error, a
closed connection) is never pinned on a record: it propagates as it does under ``fail``. A fault
that fails every record (a bug, a dropped table) would dead-letter everything: more than
``RejectionLimit.limit`` records rejected in a row, with none applied between them, raise
``RejectionLimitError`` and roll the batch back.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from aiokafka import TopicPartition

from sqlstate.errors import RejectionLimitError
from sqlstate.state.model import Piece, Rejected, RejectionLimit, StatementFailed
from sqlstate.state.queries import sql
from sqlstate.state.statements import run_statements

#: What running a record's statements can raise that may be the record's doing.
STATEMENT_ERRORS = (sqlite3.Error, OverflowError)

# Result codes (``sqlite_errorcode & 0xff``) a record's data can cause: a constraint (UNIQUE, NOT
# NULL, CHECK, a STRICT column's type, a trigger's RAISE), a datatype mismatch, a string or blob
# too big, a parameter out of range, and SQLITE_ERROR, which is also what a function refusing its
# argument raises ("malformed JSON"). Everything else (SQLITE_FULL, SQLITE_BUSY, SQLITE_LOCKED,
# SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_NOMEM, SQLITE_READONLY, ...) is the database's.
_RECORD_CODES = frozenset(
    {
        sqlite3.SQLITE_ERROR,
        sqlite3.SQLITE_CONSTRAINT,
        sqlite3.SQLITE_MISMATCH,
        sqlite3.SQLITE_TOOBIG,
        sqlite3.SQLITE_RANGE,
    }
)


def record_fault(error: BaseException) -> bool:
    """Whether ``error``, raised by a processor's statement, may be its records' doing."""
    if isinstance(error, OverflowError):
        return True  # a Python int too large for SQLite's INTEGER
    if not isinstance(error, sqlite3.Error):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        # The sqlite3 module's own errors: a parameter of a type it cannot bind, or a row with
        # the wrong number of them, is the record's; a closed connection is not.
        return isinstance(error, sqlite3.InterfaceError | sqlite3.ProgrammingError) and (
            "binding" in str(error)
        )
    return (code & 0xFF) in _RECORD_CODES


def describe(error: BaseException) -> str:
    """An error as rejected_records keeps it."""
    return f"{type(error).__name__}: {error}"


class Apart(NamedTuple):
    """What running a partition's pieces did."""

    counters: Counter[str]  # what the applied records' counting statements returned
    rejected: list[Rejected]
    rejected_at_end: int  # rejected in a row at the end: all of them if none was applied
    in_a_row: int  # rejected in a row, counting those before the partition


def run_apart(
    conn: sqlite3.Connection,
    tp: TopicPartition,
    pieces: Sequence[Piece],
    limit: RejectionLimit,
) -> Apart:
    """Apply each of ``pieces`` in its own savepoint, in offset order, and write the single
    records a processor failed on to rejected_records; ``RejectionLimitError`` past ``limit``.

    A piece of several records that fails is rolled back and the others run on, so that one
    round finds every failing piece; then ``StatementFailed`` names them all, and the batch
    comes again with those cut into single records."""
    counters: Counter[str] = Counter()
    rejected: list[Rejected] = []
    failed: list[int] = []
    first_error: BaseException | None = None
    in_a_row, at_end = limit.in_a_row, 0
    for index, piece in enumerate(pieces):
        failure = piece.raised
        if failure is None:
            refused = _apply(conn, piece, counters)
            if refused is None:
                in_a_row = at_end = 0
                continue
            processor, error = refused
            if piece.records > 1:
                failed.append(index)
                first_error = first_error or error
                continue
            failure = Rejected(piece.offset, processor, describe(error))
        in_a_row += 1
        at_end += 1
        # After a piece still to be cut, which of its records apply is not known yet.
        if in_a_row > limit.limit and not failed:
            raise RejectionLimitError(
                f"{in_a_row} records in a row failed in the processors, the last at"
                f" {tp.topic}-{tp.partition} offset {failure.offset} (processor"
                f" {failure.processor}: {failure.error}); more than --max-rejected-in-a-row"
                f" {limit.limit}, so the fault is likely not the records': stopped before"
                " committing this batch"
            )
        conn.execute(
            sql("insert_processor_rejection"),
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "offset": piece.offset,
                "key": piece.key,
                "value": piece.value,
                "error": failure.error,
                "processor": failure.processor,
            },
        )
        rejected.append(failure)
    if failed:
        assert first_error is not None
        raise StatementFailed(tp, first_error, failed)
    return Apart(counters, rejected, at_end, in_a_row)


def _apply(
    conn: sqlite3.Connection, piece: Piece, counters: Counter[str]
) -> tuple[str, BaseException] | None:
    """Run one piece's statements in a savepoint; undo them all if one fails on its records,
    and say which processor's failed, and how."""
    conn.execute(sql("savepoint_piece"))
    counted: Counter[str] = Counter()
    for processor, statements in piece.statements:
        try:
            counted.update(run_statements(conn, statements))
        except STATEMENT_ERRORS as error:
            # Not the record's, or SQLite rolled the whole transaction back by itself (a
            # RAISE(ROLLBACK), ON CONFLICT ROLLBACK): the batch rolls back, savepoint and all.
            if not record_fault(error) or not conn.in_transaction:
                raise
            conn.execute(sql("rollback_to_piece"))
            conn.execute(sql("release_piece"))
            return processor, error
    conn.execute(sql("release_piece"))
    counters.update(counted)
    return None
