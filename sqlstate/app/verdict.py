"""What ``sqlstate verify`` found, partition by partition, and the one exit code that says it.

A partition is *identical* when every table's rows of it are the ones its records make;
*different* when a row certainly differs or its position is wrong; *not fully checked* when
records its state was made from are no longer in Kafka (and no row certainly differs). The whole
verdict is the worst of its partitions' (and of the tables compared whole): exit 0, 9 or 10.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlstate.app.state_diff import TableDiff

#: Exit codes of ``sqlstate verify`` beside 0 (identical) and the usual error codes.
EXIT_DIFFERENT = 9
EXIT_NOT_FULLY_CHECKED = 10

Status = Literal["identical", "different", "not fully checked"]


@dataclass
class PartitionCheck:
    """What verify found for one stored partition."""

    topic: str
    partition: int
    stored_offset: int  # the file's position
    first_offset: int | None  # the log's first offset in Kafka now
    end_offset: int | None  # where the recorded isolation level reads to now
    reached: int | None  # where the recomputed position stands
    records: int  # records that went into the recomputed state
    # Why part of the state the file holds could not be recomputed: records deleted from Kafka,
    # a topic recreated, a position below the log's start. A difference is then not certain.
    unchecked: str | None = None
    # Set when only records below this offset were deleted, and those from it on were read: a
    # table of records (``RECORD_TABLES``) is still checked exactly from this offset on.
    checked_from: int | None = None
    # Where the records read began: the log's first offset, or the partition's recorded start
    # (--start-from) when that is later. None: nothing was read.
    read_from: int | None = None
    # What is certainly wrong, whatever the rows say (a position past the log's end...).
    problems: list[str] = field(default_factory=list)
    tables: list[TableDiff] = field(default_factory=list)

    @property
    def status(self) -> Status:
        if self.problems or any(table.certain for table in self.tables):
            return "different"
        # Rows equal to what the records Kafka still has make do not make the partition
        # identical: a state that lost what the deleted records made looks just like that.
        if self.unchecked:
            return "not fully checked"
        return "different" if self.tables else "identical"


@dataclass
class Verdict:
    """Everything verify found; ``exit_code`` says it in one number."""

    database: Path
    isolation_level: str
    processors: list[str]
    partitions: list[PartitionCheck]
    # Differences of tables compared as a whole (their rows do not keep the partition).
    tables: list[TableDiff]
    allow_unchecked: bool

    @property
    def tables_status(self) -> Status:
        if not self.tables:
            return "identical"
        if any(table.certain for table in self.tables):
            return "different"
        return "not fully checked"

    @property
    def status(self) -> Status:
        statuses = {p.status for p in self.partitions} | {self.tables_status}
        for status in ("different", "not fully checked"):
            if status in statuses:
                return status
        return "identical"

    @property
    def exit_code(self) -> int:
        status = self.status
        if status == "different":
            return EXIT_DIFFERENT
        if status == "not fully checked" and not self.allow_unchecked:
            return EXIT_NOT_FULLY_CHECKED
        return 0

    @property
    def records(self) -> int:
        return sum(p.records for p in self.partitions)
