"""Read your writes: wait until the file holds given records, told by its stored positions.

A record at ``offset`` of a partition is in the file once the partition's stored position (its
next offset) is past it, ``next_offset > offset``: the batch that held it committed its state in
the transaction that moved the position. So is every record a position steps over: one left out
or kept in ``rejected_records`` under ``--on-bad-record``, an aborted record under
read_committed, a transaction marker. Under ``--changelog``, a partition this file follows (a
standby) stands at the position its owner published with the changelog transactions applied
here, written with their rows: waiting there waits for the owner's state to reach this file. A
partition without a row has nothing in the file yet: the wait goes on until the timeout, as it
does on a file a starting daemon has created but not yet migrated. A record below the offset a
partition's ``--start-from`` chose is past the position too, though it never was state.

The waiter never takes the write lock and never keeps a snapshot between two looks: it asks
``PRAGMA data_version`` (which changes when another connection commits, and reads no page) at
intervals growing from 5 ms to 50 ms, and reads the positions, in one read transaction, only
when it changed.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeAlias, TypeGuard, cast, runtime_checkable

from aiokafka import TopicPartition

from sqlstate.errors import ConfigError, WaitTimeoutError
from sqlstate.settings import WAIT_TIMEOUT_S, default, duration_ms
from sqlstate.state import reads
from sqlstate.state.database import Database
from sqlstate.state.queries import sql

_FIRST_LOOK_S = 0.005
_LONGEST_LOOK_S = 0.05
# A Kafka topic name: its legal characters and length.
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_EXAMPLE = "orders:0:41"


@runtime_checkable
class Written(Protocol):
    """A record's place, as a producer learns it: aiokafka's ``RecordMetadata`` (what
    ``send_and_wait`` returns), or a ``ConsumerRecord``."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


#: One record to wait for: its place, or ``(topic, partition, offset)``.
WrittenLike: TypeAlias = Written | tuple[str, int, int]


@dataclass(frozen=True)
class PartitionWait:
    """One partition waited for: the highest offset waited for there, and where the file
    stands (``next_offset``: its stored position; None: no row for it)."""

    topic: str
    partition: int
    offset: int
    next_offset: int | None

    @property
    def applied(self) -> bool:
        return self.next_offset is not None and self.next_offset > self.offset

    def __str__(self) -> str:
        if self.next_offset is None:
            return f"{self.topic}:{self.partition} has no position yet"
        return f"{self.topic}:{self.partition} stands at {self.next_offset}, not past {self.offset}"


class NotAppliedInTime(WaitTimeoutError):
    """The timeout passed before every record waited for was in the file; ``waits`` says where
    each partition stood at the end."""

    def __init__(self, database: Path, waits: Sequence[PartitionWait], timeout_s: float) -> None:
        self.waits = list(waits)
        behind = "; ".join(str(w) for w in self.waits if not w.applied)
        super().__init__(f"{database} still lacks records after {timeout_s:g} s: {behind}")


async def wait_for(
    database: str | os.PathLike[str],
    written: WrittenLike | Iterable[WrittenLike],
    timeout: float = WAIT_TIMEOUT_S,
) -> list[PartitionWait]:
    """Wait until the sqlstate file ``database`` holds the record(s) ``written``: each a
    ``RecordMetadata`` from aiokafka's producer (or anything with ``topic``, ``partition`` and
    ``offset``), or a ``(topic, partition, offset)`` tuple.

    Returns where each partition stands once all are in; raises ``NotAppliedInTime`` (a
    ``TimeoutError``) after ``timeout`` seconds, and ``DatabaseError`` for a missing or
    unusable file. Opens the file read-only: it never blocks the daemon.
    """
    targets = _targets(written)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    path = Path(database)
    db = await Database.open(
        path, busy_timeout_s=default("busy_timeout_s"), read_only=True, check_integrity=False
    )
    try:
        waits = await _wait(db, targets, deadline)
    finally:
        await db.close()
    if not all(w.applied for w in waits):
        raise NotAppliedInTime(path, waits, timeout)
    return waits


async def _wait(
    db: Database, targets: dict[TopicPartition, int], deadline: float
) -> list[PartitionWait]:
    """Look until every target is applied or the deadline passed; where they stand then."""
    loop = asyncio.get_running_loop()
    look_s = _FIRST_LOOK_S
    seen_version: int | None = None
    while True:
        # The version first: a commit after it is then seen at the next look at the latest.
        version = await db.setting(_data_version)
        if version != seen_version:
            seen_version = version
            standing = await db.read(functools.partial(_standing, tps=list(targets)))
            waits = [
                PartitionWait(tp.topic, tp.partition, offset, standing[tp])
                for tp, offset in sorted(targets.items())
            ]
            if all(w.applied for w in waits):
                return waits
        remaining = deadline - loop.time()
        if remaining <= 0:
            return waits
        await asyncio.sleep(min(look_s, remaining))
        look_s = min(look_s * 1.5, _LONGEST_LOOK_S)


def _standing(
    conn: sqlite3.Connection, tps: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """Each partition's stored next offset; None for every one while the file has no positions
    table yet (a daemon starting on a new file has not migrated it): waited for like a
    partition without a row."""
    if "positions" not in {row[0] for row in conn.execute(sql("table_names"))}:
        return dict.fromkeys(tps)
    return reads.next_offsets(conn, tps)


def _data_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute(sql("data_version")).fetchone()[0]
    return version


def _targets(written: WrittenLike | Iterable[WrittenLike]) -> dict[TopicPartition, int]:
    """The highest offset to wait for on each partition; ValueError for a record that names
    none, or none at all."""
    items = [written] if _is_one(written) else cast(Iterable[object], written)
    targets: dict[TopicPartition, int] = {}
    for item in items:
        topic, partition, offset = _place(item)
        tp = TopicPartition(topic, partition)
        targets[tp] = max(offset, targets.get(tp, offset))
    if not targets:
        raise ValueError("nothing to wait for: give at least one record")
    return targets


def _is_one(written: object) -> bool:
    if isinstance(written, Written):
        return True
    return isinstance(written, tuple) and len(written) == 3 and isinstance(written[0], str)


def _place(item: object) -> tuple[str, int, int]:
    place: tuple[object, ...]
    if isinstance(item, Written):
        place = (item.topic, item.partition, item.offset)
    elif isinstance(item, tuple) and len(item) == 3:
        place = item
    else:
        raise ValueError(f"{item!r} is neither a RecordMetadata nor (topic, partition, offset)")
    topic, partition, offset = place
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"{item!r}: the topic must be a topic name")
    if not _whole(partition) or not _whole(offset):
        raise ValueError(f"{item!r}: the partition and the offset must be integers, 0 or more")
    return topic, partition, offset


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_until(values: Iterable[str]) -> list[tuple[str, int, int]]:
    """``--until`` values (repeated, each ``TOPIC:PARTITION:OFFSET`` entries separated by commas
    or spaces) as (topic, partition, offset); ``ConfigError`` naming every bad entry."""
    entries = [entry for value in values for entry in value.replace(",", " ").split()]
    if not entries:
        raise ConfigError(f"--until: give at least one TOPIC:PARTITION:OFFSET, as in {_EXAMPLE}")
    places: list[tuple[str, int, int]] = []
    problems: list[str] = []
    for entry in entries:
        try:
            places.append(_parse_entry(entry))
        except ValueError as error:
            problems.append(f"--until {entry!r}: {error}")
    if problems:
        raise ConfigError("; ".join(problems))
    return places


def _parse_entry(entry: str) -> tuple[str, int, int]:
    parts = entry.rsplit(":", 2)
    if len(parts) != 3:
        raise ValueError(f"not TOPIC:PARTITION:OFFSET, as in {_EXAMPLE}")
    topic, partition, offset = parts
    if not _TOPIC.match(topic):
        raise ValueError(
            f"{topic!r} is not a topic name (letters, digits, '.', '_' and '-', at most 249)"
        )
    numbers = []
    for name, text in (("partition", partition), ("offset", offset)):
        if not text.isascii() or not text.isdigit():
            raise ValueError(f"the {name} {text!r} is not a whole number, 0 or more")
        numbers.append(int(text))
    return topic, numbers[0], numbers[1]


def parse_timeout(text: str) -> float:
    """``--timeout`` in seconds; ``ConfigError`` unless a duration such as 500ms, 5s or 1m."""
    try:
        return duration_ms(text) / 1000
    except ValueError as error:
        raise ConfigError(f"--timeout: {error}") from None
