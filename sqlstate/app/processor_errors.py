"""``--on-processor-error``: what a record that a processor fails on does to its batch.

``fail`` (the default): a processor's Python code that raises, or its statement that fails in
SQLite, stops the daemon before the batch commits (exit code 2 or 3); the next start meets the
same records again.

``dead-letter``: the batch commits without the records the processors failed on, each written to
``rejected_records`` with the processor's name and its error, in the batch's own transaction.
The batch is prepared and committed whole, as always, so a batch that fails nowhere costs nothing
more. When a processor fails on a partition's records (its Python code raises, or a statement
fails in SQLite: a constraint, a type, malformed JSON), the records are cut into pieces of about
the square root of their number, each prepared alone (``Processors.apart``) and run in a
savepoint of its own; a piece that fails is cut into single records, and a single record that
fails is rolled back to its savepoint and dead-lettered (``state/rejections.py``). A statement
that fails rolls the whole transaction back first, and the batch is committed again with the
partition's records so cut: a record is applied once or rejected once, in the transaction that
moves its position, whatever the rounds before it.

Failures that are not the record's (a full disk, a locked, corrupt or unreadable database) are
never dead-lettered: they go as under ``fail``. A fault that fails every record would otherwise
dead-letter the whole topic, so more than ``--max-rejected-in-a-row`` records rejected in a row,
with none applied between them (counted over the partitions this process consumes, from its
start), stop the daemon with exit code 11 before that batch commits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace

from sqlstate.observe.logs import LogEvent, partition_fields
from sqlstate.observe.stats import Stats
from sqlstate.processors.base import Records
from sqlstate.processors.registry import ProcessorRaised, Processors
from sqlstate.settings import Settings
from sqlstate.state.model import (
    Committed,
    Outcome,
    PartitionBatch,
    RejectionLimit,
    StatementFailed,
)
from sqlstate.state.rejections import describe
from sqlstate.state.store import Store

logger = logging.getLogger("sqlstate.consumer")  # the batch loop's documented name
_REJECTED = LogEvent(
    logger,
    logging.WARNING,
    "record_rejected",
    "%(topic)s-%(partition)d offset %(offset)d: processor %(processor)s failed on it"
    " (%(reason)s); written to rejected_records",
)
_SET_APART = LogEvent(
    logger,
    logging.INFO,
    "records_set_apart",
    "%(topic)s-%(partition)d: a processor failed on a batch of %(records)d records (%(reason)s);"
    " committing them in pieces, to find the failing ones",
)


class ProcessorErrors:
    """Prepares and commits batches under ``--on-processor-error``, and keeps the count of
    records rejected in a row."""

    def __init__(self, processors: Processors, settings: Settings, stats: Stats) -> None:
        self._processors = processors
        self._dead_letter = settings.on_processor_error == "dead-letter"
        self._limit = settings.max_rejected_in_a_row
        self._stats = stats
        self._in_a_row = 0

    def prepare(self, part: PartitionBatch) -> PartitionBatch:
        """``part`` (holding only its dead letters) with the processors' statements for its
        records, or with its records in pieces when (under dead-letter) a processor raised on
        them. Raises ``ProcessorRaised`` under ``fail``."""
        try:
            statements = self._processors.statements(part.tp, part.source)
        except ProcessorRaised as error:
            if not self._dead_letter:
                raise
            cause = error.__cause__ if error.__cause__ is not None else error
            return self._in_pieces(part, describe(cause))
        return replace(part, statements=[*part.statements, *statements])

    async def commit(self, store: Store, advances: Sequence[PartitionBatch]) -> list[Outcome]:
        """Commit the batch; under dead-letter, again each time a statement fails on a
        partition's records, with them cut finer (into pieces, then the failing pieces into
        single records): each round cuts something, so the rounds end."""
        if not self._dead_letter:
            return await store.commit_batch(advances)
        while True:
            limit = RejectionLimit(self._in_a_row, self._limit)
            try:
                outcomes = await store.commit_batch(advances, limit)
            except StatementFailed as failed:
                advances = [
                    self._cut(part, failed) if part.tp == failed.tp else part for part in advances
                ]
                continue
            self._committed(outcomes)
            return outcomes

    def _cut(self, part: PartitionBatch, failed: StatementFailed) -> PartitionBatch:
        """``part`` in pieces, or, when it was already, with the pieces that failed cut into
        single records."""
        if part.apart is None:
            return self._in_pieces(part, describe(failed.error))
        cut = set(failed.pieces)
        pieces = [
            single
            for index, piece in enumerate(part.apart)
            for single in (
                self._processors.apart(part.tp, part.source, 1, piece.start, piece.stop)
                if index in cut
                else [piece]
            )
        ]
        return replace(part, apart=pieces)

    def _in_pieces(self, part: PartitionBatch, reason: str) -> PartitionBatch:
        _SET_APART.log(**partition_fields(part.tp), records=len(part.source), reason=reason)
        pieces = self._processors.apart(part.tp, part.source, _piece_size(part.source))
        return replace(part, statements=part.statements[: part.dead_letters], apart=pieces)

    def _committed(self, outcomes: Sequence[Outcome]) -> None:
        """Log and count each rejected record of a committed batch, and carry the count of
        records rejected in a row over to the next batch."""
        for outcome in outcomes:
            if not isinstance(outcome, Committed):
                continue
            for rejected in outcome.rejected:
                self._stats.rejected_records[rejected.processor] += 1
                _REJECTED.log(
                    **partition_fields(outcome.tp),
                    offset=rejected.offset,
                    processor=rejected.processor,
                    reason=rejected.error,
                )
            if outcome.records:
                self._in_a_row = outcome.rejected_at_end
            else:
                self._in_a_row += len(outcome.rejected)


def _piece_size(records: Records) -> int:
    """About the square root of the records: a failing record then costs about 2 * sqrt(n)
    pieces prepared apart, rather than one per record."""
    return max(1, math.isqrt(len(records)))
