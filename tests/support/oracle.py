"""The exactly-once oracle: one check that every fault test and the soak apply at the end.

For every partition of a topic, the counts in the database must equal exactly the count, per key,
of the records in ``[first offset, stored position)`` that a ``read_committed`` consumer reads, and
``PRAGMA quick_check`` must say ``ok``. Counts missing from the database are *lost*, counts beyond
what Kafka holds are *duplicated*; the two are reported separately so a failure says which promise
broke. A partition the database has no position for must have no counts either.

The first offset is the log start Kafka reports now; the fault tests never delete records, so it is
the offset the daemon started from.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from sqlstate.processors.counting import stored_key

StoredKey = str | bytes | None
PartitionKey = tuple[int, StoredKey]


@dataclass
class Verdict:
    """What the oracle found for one topic."""

    topic: str
    positions: dict[int, int]
    read_back: int  # records the read_committed consumer counted below the stored positions
    lost: Counter[PartitionKey] = field(default_factory=Counter)
    duplicated: Counter[PartitionKey] = field(default_factory=Counter)
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
        def sample(counter: Counter[PartitionKey]) -> str:
            items = sorted(counter.items(), key=repr)[:10]
            return ", ".join(f"p{p} {key!r:.40}: {n}" for (p, key), n in items)

        return (
            f"topic {self.topic}: positions {self.positions}, {self.read_back} records read back;"
            f" lost {self.lost_total} [{sample(self.lost)}];"
            f" duplicated {self.duplicated_total} [{sample(self.duplicated)}];"
            f" quick_check {self.quick_check}"
        )


def read_database(database: Path, topic: str) -> tuple[dict[int, int], Counter[PartitionKey], str]:
    """(positions, counts, quick_check) read as any SQLite client would, read-only."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        # One read transaction, so positions and counts come from the same committed batch.
        conn.execute("BEGIN")
        positions = dict(
            conn.execute(
                "SELECT partition, next_offset FROM positions WHERE topic = ?", (topic,)
            ).fetchall()
        )
        counts: Counter[PartitionKey] = Counter()
        for partition, key, count in conn.execute(
            "SELECT partition, key, count FROM key_counts WHERE topic = ?", (topic,)
        ):
            counts[(partition, key)] += count
        conn.execute("COMMIT")
        problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    finally:
        conn.close()
    return positions, counts, "ok" if problems == ["ok"] else "; ".join(problems[:3])


async def read_committed_counts(
    bootstrap: str, topic: str, until: dict[int, int], timeout: float = 60.0
) -> tuple[Counter[PartitionKey], int]:
    """Count keys of the records below ``until[partition]`` that a read_committed reader sees."""
    counts: Counter[PartitionKey] = Counter()
    tps = [TopicPartition(topic, p) for p, end in until.items() if end > 0]
    if not tps:
        return counts, 0
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4_000_000,
        fetch_max_bytes=50_000_000,
    )
    await consumer.start()
    read = 0
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
            for tp, records in batch.items():
                end = until[tp.partition]
                for record in records:
                    if record.offset < end:
                        counts[(tp.partition, stored_key(record.key))] += 1
                        read += 1
            for tp in list(pending):
                if await consumer.position(tp) >= until[tp.partition]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return counts, read


async def check(bootstrap: str, database: Path, topic: str) -> Verdict:
    """Apply the oracle to ``topic`` as the database stands now."""
    positions, stored, quick_check = await asyncio.to_thread(read_database, database, topic)
    expected, read = await read_committed_counts(bootstrap, topic, positions)
    return Verdict(
        topic=topic,
        positions=positions,
        read_back=read,
        lost=expected - stored,
        duplicated=stored - expected,
        quick_check=quick_check,
    )


async def assert_exactly_once(bootstrap: str, database: Path, topic: str) -> Verdict:
    """The oracle as an assertion, with a readable failure."""
    verdict = await check(bootstrap, database, topic)
    assert verdict.ok, verdict.describe()
    return verdict
