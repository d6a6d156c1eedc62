"""``--on-processor-error``: what a record that a processor fails on does to its batch.

``fail`` (the default): a processor's Python code that raises, or its statement that fails in
SQLite, stops the daemon before the batch commits (exit code 2 or 3); the next start meets the
same records again.

``dead-letter``: the batch commits without the records the processors failed on, each written to
``rejected_records`` with the processor's name and its error, in the batch's own transaction.
The batch is prepared and committed whole, as always, so a batch that fails nowhere costs nothing
more. When a processor's Python code raises on a partition's records, that partition's records
are prepared again one at a time (``Processors.apart``); when a statement fails on them in
SQLite (a constraint, a type, malformed JSON), the transaction rolls back whole and the batch is
committed again with that partition's records apart. Run apart, each record is applied in a
savepoint of its own and rolled back to it if it fails (``state/rejections.py``): a record is
applied once or rejected once, in the transaction that moves its position.

Failures that are not the record's (a full disk, a locked, corrupt or unreadable database) are
never dead-lettered: they go as under ``fail``. A fault that fails every record would otherwise
dead-letter the whole topic, so more than ``--max-rejected-in-a-row`` records rejected in a row,
with none applied between them (counted over the partitions this process consumes, from its
start), stop the daemon with exit code 9 before that batch commits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from aiokafka import TopicPartition

from sqlstate.observe.logs import LogEvent, partition_fields
from sqlstate.observe.stats import Stats
from sqlstate.processors.base import Records
from sqlstate.processors.registry import ProcessorRaised, Processors
from sqlstate.settings import Settings
from sqlstate.state.model import (
    Committed,
    Outcome,
    PartitionBatch,
    RecordStatements,
    RejectionLimit,
    Statement,
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
    " committing them one at a time",
)

#: What the batch loop keeps of each partition's share of a batch until it is committed: the
#: records given to the processors, and the dead letters of those that did not decode.
Inputs = Mapping[TopicPartition, tuple[Records, Sequence[Statement]]]


class ProcessorErrors:
    """Prepares and commits batches under ``--on-processor-error``, and keeps the count of
    records rejected in a row."""

    def __init__(self, processors: Processors, settings: Settings, stats: Stats) -> None:
        self._processors = processors
        self._dead_letter = settings.on_processor_error == "dead-letter"
        self._limit = settings.max_rejected_in_a_row
        self._stats = stats
        self._in_a_row = 0

    def prepare(
        self, tp: TopicPartition, records: Records, dead_letters: Sequence[Statement]
    ) -> tuple[list[Statement], Sequence[RecordStatements] | None]:
        """A partition's statements for its batch, and its records apart when (under
        dead-letter) a processor raised on them. Raises ``ProcessorRaised`` under ``fail``."""
        try:
            return [*dead_letters, *self._processors.statements(tp, records)], None
        except ProcessorRaised as error:
            if not self._dead_letter:
                raise
            cause = error.__cause__ if error.__cause__ is not None else error
            _SET_APART.log(**partition_fields(tp), records=len(records), reason=describe(cause))
            return list(dead_letters), self._processors.apart(tp, records)

    async def commit(
        self, store: Store, advances: Sequence[PartitionBatch], inputs: Inputs
    ) -> list[Outcome]:
        """Commit the batch; under dead-letter, again with a partition's records apart each time
        a statement fails on one of them (each round sets one more partition apart)."""
        if not self._dead_letter:
            return await store.commit_batch(advances)
        while True:
            limit = RejectionLimit(self._in_a_row, self._limit)
            try:
                outcomes = await store.commit_batch(advances, limit)
            except StatementFailed as failed:
                advances = [
                    self._set_apart(part, inputs[part.tp], failed) if part.tp == failed.tp else part
                    for part in advances
                ]
                continue
            self._committed(outcomes)
            return outcomes

    def _set_apart(
        self,
        part: PartitionBatch,
        inputs: tuple[Records, Sequence[Statement]],
        failed: StatementFailed,
    ) -> PartitionBatch:
        records, dead_letters = inputs
        _SET_APART.log(
            **partition_fields(part.tp), records=len(records), reason=describe(failed.error)
        )
        return PartitionBatch(
            tp=part.tp,
            claim=part.claim,
            next_offset=part.next_offset,
            log_end_offset=part.log_end_offset,
            records=part.records,
            statements=dead_letters,
            bad_records=part.bad_records,
            apart=self._processors.apart(part.tp, records),
        )

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
