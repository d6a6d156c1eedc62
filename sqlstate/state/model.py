"""The words of sqlstate's transactions: what goes into a batch or a claim, and what comes out.

Plain values, no behaviour: the batch loop and the claims build them, ``transactions.py`` runs
them, and the outcomes come back from the same transaction that made them. ``Statement`` is the
processors' one output (``processors/base.py`` re-exports it as part of the processor API);
``Row`` and ``Change`` are what a partition's transaction hands the changelog under
``--changelog`` (``changelog_side.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

from aiokafka import TopicPartition

from sqlstate.errors import ChangelogError, ChangelogFenced
from sqlstate.state.out_of_range import LogBounds
from sqlstate.state.start import StartedAt

#: The parameters of one execution of a statement: a tuple for ``?``, a mapping for ``:name``.
Parameters: TypeAlias = Sequence[Any] | Mapping[str, Any]


@dataclass(frozen=True)
class Statement:
    """One SQL statement and the rows of parameters to run it with (one ``executemany``).

    ``counter``: when set, the statement is instead a query returning one integer (run once per
    row of parameters); once the batch commits, the numbers are added to the processor's
    counter of that name, exported as ``sqlstate_processor_records_total{processor, counter}``.
    A counter is for people watching; it never feeds back into state.
    """

    sql: str
    rows: Sequence[Parameters]
    counter: str | None = None
    #: Statements run just before it, in the same transaction, that create the temporary view
    #: and trigger it inserts into: ``CREATE TEMP VIEW IF NOT EXISTS`` and ``CREATE TEMP TRIGGER
    #: IF NOT EXISTS ... INSTEAD OF INSERT ON`` that view, named ``sqlstate_batch_<processor>``
    #: (and nothing else: the guard refuses other setup). SQL processors use it to run their
    #: per-record statement over a whole batch in one call (``batched.py``).
    setup: Sequence[str] = ()


#: The statements that delete everything derived from a partition (``Processors.forget``).
Forget = Callable[[TopicPartition], Sequence[Statement]]

#: A changelog record as the capture makes it: the row's key, and its full new value or None
#: (a tombstone: the row was deleted).
Row: TypeAlias = tuple[bytes, bytes | None]


class Change(NamedTuple):
    """What one partition's transaction publishes to its changelog under --changelog."""

    rows: Sequence[Row]  # the changed rows, from the capture
    next_offset: int  # the partition's new position
    # The claim whose compare-and-set the batch passed: only that claim's producer may
    # publish it. None: the claim this very transaction makes (its out-of-range reset).
    epoch: int | None
    # Where the partition's state begins (``state/start.py``), carried by the position record.
    start: StartedAt | None = None


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
    # The --start-from that chose where the partition started, and that offset (docs/schema.md):
    # None for a partition first claimed before they were recorded, or followed from a changelog.
    start_from: str | None = None
    start_offset: int | None = None


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
    # The records the processors' statements fold in, and how many of the first ``statements``
    # write the dead letters of records that did not decode: what --on-processor-error
    # dead-letter prepares again in pieces when a processor fails on the records.
    source: Sequence[Any] = ()
    dead_letters: int = 0
    # --on-processor-error dead-letter, once a processor failed on the partition's records: its
    # records in pieces, each run in a savepoint of its own (``rejections.py``); ``statements``
    # then holds only the dead letters.
    apart: Sequence[Piece] | None = None


@dataclass(frozen=True)
class Piece:
    """A run of a partition's records whose statements run apart, in a savepoint of their own
    (--on-processor-error dead-letter): a few records, or one, on which a failure is pinned."""

    start: int  # where its records are in the partition's share of the batch
    stop: int
    offset: int  # its first record's offset
    # Each processor's statements for these records alone, in the processors' order.
    statements: Sequence[tuple[str, Sequence[Statement]]]
    # One record only: a processor whose Python code raised on it, and the error (nothing of
    # the record runs); and its key and value as rejected_records stores them (TEXT if UTF-8,
    # BLOB otherwise, NULL for none).
    raised: Rejected | None = None
    key: Any = None
    value: Any = None

    @property
    def records(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Rejected:
    """A record a processor failed on, written to rejected_records in place of its state."""

    offset: int
    processor: str
    error: str


@dataclass(frozen=True)
class RejectionLimit:
    """--on-processor-error dead-letter: how many records in a row may be rejected (``limit``),
    and how many were rejected in a row just before this batch, with no record applied since."""

    in_a_row: int
    limit: int


@dataclass(frozen=True)
class Committed:
    """The partition's position moved and its statements ran."""

    tp: TopicPartition
    claim: Claim  # the new position, same epoch
    records: int
    # What the statements that carry a ``counter`` returned, by counter name.
    counters: Mapping[str, int] = field(default_factory=dict)
    # Records a processor failed on, written to rejected_records instead (not in ``records``).
    rejected: Sequence[Rejected] = ()
    # The records rejected in a row at the end of the batch: all of them, when none of the
    # partition's records was applied (``RejectionLimit``).
    rejected_at_end: int = 0


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


class StatementFailed(Exception):
    """A processor's statement failed on a partition's records in a way a record can cause
    (--on-processor-error dead-letter). The transaction rolls back; the batch is committed again
    with that partition's records in pieces (``PartitionBatch.apart``), or, when ``pieces`` (their
    indexes) failed, with those pieces cut into single records."""

    def __init__(
        self, tp: TopicPartition, error: BaseException, pieces: Sequence[int] = ()
    ) -> None:
        super().__init__(f"{tp.topic}-{tp.partition}: {error}")
        self.tp = tp
        self.error = error
        self.pieces = pieces


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

    @property
    def fenced(self) -> list[TopicPartition]:
        """The partitions another owner's producer fenced: they wait for the rebalance that
        says who owns them. Not one whose kept producer was fenced (``ChangelogFenced.kept``):
        the owner that fenced it may be revoked since, so it is claimed again at once, as after
        any other failure."""
        return [
            tp
            for tp, error in self.failures.items()
            if isinstance(error, ChangelogFenced) and not error.kept
        ]


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
    # Partitions claimed again only if still held (``held_at``), whose row another consumer's
    # claim moved on meanwhile: left as they are, not claimed.
    taken: list[TopicPartition] = field(default_factory=list)
    # Partitions the file had no row for, and where --start-from started them.
    started: dict[TopicPartition, StartedAt] = field(default_factory=dict)
