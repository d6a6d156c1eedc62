"""The exactly-once oracle: one check that every fault test and the soak apply at the end.

For every partition of a topic, each processor's state in the database must equal exactly what
its definition makes of the records in ``[first offset, stored position)`` that a
``read_committed`` consumer reads, and ``PRAGMA quick_check`` must say ``ok``. A *model* says,
for one processor, what the state must be (from the records) and what it is (from the database),
both as a ``Counter`` of rows: for the counts, ``(partition, key) -> count``; for a table of
values, each row once. State missing from the database is *lost*, state beyond what the records
make is *duplicated*; the two are reported separately so a failure says which promise broke. A
partition the database has no position for must have no state either.

The first offset is the log start Kafka reports now: the fault tests delete records only
below a stored position, so it is the offset the daemon (re)started the partition from. A test
that deletes records a database still counts (state that moved between hosts through a
changelog, which outlives the input's retention) reads them before deleting them and hands them
to ``check`` as ``deleted``. A partition whose row records where its state starts
(``start_offset``: ``--start-from``, or an out-of-range reset) is checked from there: the
applied range is ``[start_offset, stored position)``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from sqlstate.processors.base import Record
from sqlstate.processors.keys import stored_key
from sqlstate.processors.windowed_counts import iso_utc, window_start
from tests.support.db import connect_read_only
from tests.support.kafka import beginning_offsets

StoredKey = str | bytes | None
Row = tuple[Any, ...]


class Model(Protocol):
    """One processor's state: what the records make of it, and what the database holds."""

    name: str

    def expected(self, records: Sequence[Record]) -> Counter[Row]:
        """The state that ``records`` (one topic, in offset order per partition, only those
        below the stored positions) must give."""

    def stored(self, conn: sqlite3.Connection, topic: str) -> Counter[Row]:
        """The state in the database, read in the oracle's read transaction."""


Decodes = Callable[[Record], bool]


def always(record: Record) -> bool:
    return True


def json_value(record: Record) -> bool:
    """Whether the value decodes under ``--value-format json`` (a null value does)."""
    if record.value is None:
        return True
    try:
        json.loads(record.value.decode("utf-8"), parse_constant=_not_json)
    except ValueError:
        return False
    return True


def _not_json(constant: str) -> None:
    raise ValueError(constant)


@dataclass
class Counts:
    """``counts``: (partition, key) -> records (that decode)."""

    decodes: Decodes = always
    name: str = "counts"

    def expected(self, records: Sequence[Record]) -> Counter[Row]:
        return Counter((r.partition, stored_key(r.key)) for r in records if self.decodes(r))

    def stored(self, conn: sqlite3.Connection, topic: str) -> Counter[Row]:
        counts: Counter[Row] = Counter()
        rows = conn.execute(
            "SELECT partition, key, count FROM key_counts WHERE topic = ?", (topic,)
        )
        for partition, key, count in rows:
            counts[(partition, key)] += count
        return counts


@dataclass
class Latest:
    """``latest``: each key's last value per partition; a null value deletes the key."""

    decodes: Decodes = always
    name: str = "latest"

    def expected(self, records: Sequence[Record]) -> Counter[Row]:
        last: dict[tuple[int, StoredKey], Record] = {}
        for r in records:
            if self.decodes(r):
                last[(r.partition, stored_key(r.key))] = r
        return Counter(
            (partition, key, stored_key(r.value), r.offset, r.timestamp)
            for (partition, key), r in last.items()
            if r.value is not None
        )

    def stored(self, conn: sqlite3.Connection, topic: str) -> Counter[Row]:
        rows = conn.execute(
            "SELECT partition, key, value, offset, timestamp FROM latest WHERE topic = ?", (topic,)
        )
        return Counter(tuple(row) for row in rows)


@dataclass
class WindowedCounts:
    """``windowed-counts``: per partition, a record counts in its window unless the window
    ended at or before the highest timestamp so far (its own included) minus the retention;
    windows ended at or before the partition's highest timestamp minus it are gone."""

    window_ms: int
    retention_ms: int
    decodes: Decodes = always
    name: str = "windowed-counts"

    def expected(self, records: Sequence[Record]) -> Counter[Row]:
        counts: Counter[tuple[int, StoredKey, int]] = Counter()
        highest: dict[int, int] = {}
        for r in records:
            if not self.decodes(r):
                continue
            highest[r.partition] = max(highest.get(r.partition, r.timestamp), r.timestamp)
            start = window_start(r.timestamp, self.window_ms)
            if start + self.window_ms > highest[r.partition] - self.retention_ms:
                counts[(r.partition, stored_key(r.key), start)] += 1
        return Counter(
            {
                (partition, key, iso_utc(start)): n
                for (partition, key, start), n in counts.items()
                if start + self.window_ms > highest[partition] - self.retention_ms
            }
        )

    def stored(self, conn: sqlite3.Connection, topic: str) -> Counter[Row]:
        rows = conn.execute(
            "SELECT partition, key, window_start, count FROM windowed_key_counts WHERE topic = ?",
            (topic,),
        )
        return Counter({(p, key, start): n for p, key, start, n in rows})


@dataclass
class CustomerAmounts:
    """``examples/customer_totals.sql``: per partition, the sum of ``amount_cents`` per
    ``customer`` of the values that are such orders."""

    decodes: Decodes = always
    name: str = "customer_totals"

    def expected(self, records: Sequence[Record]) -> Counter[Row]:
        amounts: Counter[Row] = Counter()
        for r in records:
            if r.value is None or not self.decodes(r):
                continue
            order = json.loads(r.value)
            if not isinstance(order, dict):
                continue
            customer, cents = order.get("customer"), order.get("amount_cents")
            if isinstance(customer, str) and type(cents) is int:
                amounts[(r.partition, customer)] += cents
        return amounts

    def stored(self, conn: sqlite3.Connection, topic: str) -> Counter[Row]:
        rows = conn.execute(
            "SELECT partition, customer, amount_cents FROM customer_amounts WHERE topic = ?",
            (topic,),
        )
        return Counter({(p, customer): cents for p, customer, cents in rows})


@dataclass
class Rejected:
    """``rejected_records``: with ``--on-bad-record dead-letter``, every record that does not
    decode, once; with ``skip``, none."""

    decodes: Decodes
    dead_letter: bool
    name: str = "rejected_records"

    def expected(self, records: Sequence[Record]) -> Counter[Row]:
        if not self.dead_letter:
            return Counter()
        return Counter(
            (r.partition, r.offset, stored_key(r.key), stored_key(r.value))
            for r in records
            if not self.decodes(r)
        )

    def stored(self, conn: sqlite3.Connection, topic: str) -> Counter[Row]:
        rows = conn.execute(
            "SELECT partition, offset, key, value FROM rejected_records WHERE topic = ?",
            (topic,),
        )
        return Counter(tuple(row) for row in rows)


COUNTS: Sequence[Model] = (Counts(),)


@dataclass
class Verdict:
    """What the oracle found for one topic. ``lost`` and ``duplicated`` are keyed by
    ``(model, *row)``: ``("counts", partition, key)`` for the counts."""

    topic: str
    positions: dict[int, int]
    read_back: int  # records the read_committed consumer read below the stored positions
    lost: Counter[Row] = field(default_factory=Counter)
    duplicated: Counter[Row] = field(default_factory=Counter)
    quick_check: str = "ok"

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    @property
    def duplicated_total(self) -> int:
        return sum(self.duplicated.values())

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicated and self.quick_check == "ok"

    def describe(self) -> str:
        def sample(counter: Counter[Row]) -> str:
            items = sorted(counter.items(), key=repr)[:10]
            return ", ".join(
                f"{' '.join(repr(part)[:40] for part in row)}: {n}" for row, n in items
            )

        return (
            f"topic {self.topic}: positions {self.positions}, {self.read_back} records read back;"
            f" lost {self.lost_total} [{sample(self.lost)}];"
            f" duplicated {self.duplicated_total} [{sample(self.duplicated)}];"
            f" quick_check {self.quick_check}"
        )


def read_database(
    database: Any, topic: str, models: Sequence[Model] = COUNTS
) -> tuple[dict[int, int], dict[int, int], dict[str, Counter[Row]], str]:
    """(positions, starts, each model's stored state, quick_check) read as any SQLite client
    would. ``starts``: the offset each partition's state begins at, where the file recorded it
    (``--start-from``, or an out-of-range reset)."""
    conn = connect_read_only(database)
    try:
        # One read transaction, so positions and state come from the same committed batch.
        conn.execute("BEGIN")
        rows = conn.execute(
            "SELECT partition, next_offset, start_offset FROM positions WHERE topic = ?", (topic,)
        ).fetchall()
        positions = {partition: next_offset for partition, next_offset, _ in rows}
        starts = {partition: start for partition, _, start in rows if start is not None}
        stored = {model.name: model.stored(conn, topic) for model in models}
        conn.execute("COMMIT")
        problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    finally:
        conn.close()
    return positions, starts, stored, "ok" if problems == ["ok"] else "; ".join(problems[:3])


async def read_committed(
    bootstrap: str, topic: str, until: dict[int, int], timeout: float = 60.0
) -> list[Record]:
    """The records below ``until[partition]`` that a read_committed reader sees, raw, in offset
    order per partition."""
    tps = [TopicPartition(topic, p) for p, end in until.items() if end > 0]
    if not tps:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4_000_000,
        fetch_max_bytes=50_000_000,
    )
    await consumer.start()
    records: list[Record] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        pending = set(tps)
        while pending:
            if time.monotonic() > deadline:
                positions = {tp.partition: await consumer.position(tp) for tp in pending}
                raise AssertionError(
                    f"oracle: could not read {topic} up to {until} in {timeout}s;"
                    f" stuck at {positions}"
                )
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=20_000)
            for tp, fetched in batch.items():
                records += [r for r in fetched if r.offset < until[tp.partition]]
            for tp in list(pending):
                if await consumer.position(tp) >= until[tp.partition]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return records


async def data_ends(bootstrap: str, topic: str, until: dict[int, int]) -> dict[int, int]:
    """{partition: the offset after the last record below ``until`` that a read_committed
    reader returns}, or the log start for a partition with none: where the topic's last
    committed record is, transaction markers and aborted records left out (e.g. whether a
    changelog gained any committed record).
    """
    records = await read_committed(bootstrap, topic, until)
    starts = await beginning_offsets(bootstrap, topic)
    ends = {partition: starts.get(partition, 0) for partition in until}
    for record in records:
        ends[record.partition] = record.offset + 1
    return ends


async def check(
    bootstrap: str,
    database: Any,
    topic: str,
    models: Sequence[Model] = COUNTS,
    deleted: Sequence[Record] = (),
) -> Verdict:
    """Apply the oracle to ``topic`` as the database stands now. ``deleted``: records no longer
    in the log (read before ``delete_records``) that the database must still hold."""
    positions, starts, stored, quick_check = await asyncio.to_thread(
        read_database, database, topic, models
    )
    kept = [
        r
        for r in await read_committed(bootstrap, topic, positions)
        if r.offset >= starts.get(r.partition, 0)
    ]
    first_kept: dict[int, int] = {}
    for record in kept:
        first_kept.setdefault(record.partition, record.offset)
    # The deleted records come first: they are the lower offsets of their partitions (those
    # still in the log, should the deletion have kept some, are read back once, as kept).
    records = [
        r
        for r in deleted
        if starts.get(r.partition, 0)
        <= r.offset
        < min(positions.get(r.partition, 0), first_kept.get(r.partition, r.offset + 1))
    ] + kept
    verdict = Verdict(topic=topic, positions=positions, read_back=len(records))
    verdict.quick_check = quick_check
    for model in models:
        expected = model.expected(records)
        lost, duplicated = expected - stored[model.name], stored[model.name] - expected
        verdict.lost.update({(model.name, *row): n for row, n in lost.items()})
        verdict.duplicated.update({(model.name, *row): n for row, n in duplicated.items()})
    return verdict


async def assert_exactly_once(
    bootstrap: str,
    database: Any,
    topic: str,
    models: Sequence[Model] = COUNTS,
    deleted: Sequence[Record] = (),
) -> Verdict:
    """The oracle as an assertion, with a readable failure."""
    verdict = await check(bootstrap, database, topic, models, deleted)
    assert verdict.ok, verdict.describe()
    return verdict
