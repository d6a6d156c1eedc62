"""--on-processor-error dead-letter against the real broker: records a processor fails on in the
middle of batches, under kill -9, and the limit on records rejected in a row.

A SQL processor keeps each order's amount in a table whose CHECK refuses a negative one; about
one record in fifteen has one. The oracle over what a read_committed reader sees below the stored
positions must find every record either applied once (in ``amounts`` and in the counts) or once
in ``rejected_records``, never both, never neither.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlstate.processors.base import Record
from tests.support.daemon import stored_positions, wait_for_progress
from tests.support.db import query
from tests.support.faults import caught_up, daemon
from tests.support.kafka import TopicFactory, produce
from tests.support.oracle import Counts, Model, Rejected, Row, assert_exactly_once

AMOUNTS = """\
-- sqlstate: schema
CREATE TABLE amounts (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    amount INTEGER NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
-- sqlstate: record
INSERT INTO amounts (topic, partition, offset, amount)
VALUES (:topic, :partition, :offset, json_extract(:value, '$.amount'));
-- sqlstate: forget
DELETE FROM amounts WHERE topic = :topic AND partition = :partition;
"""


def applies(record: Record) -> bool:
    """Whether the amounts processor takes the record (its CHECK refuses a negative amount)."""
    return int(json.loads(record.value)["amount"]) >= 0


@dataclass
class Amounts:
    """The amounts table: one row per record applied."""

    name: str = "amounts"

    def expected(self, records: Sequence[Record]) -> Counter[Row]:
        return Counter(
            (r.partition, r.offset, json.loads(r.value)["amount"]) for r in records if applies(r)
        )

    def stored(self, conn: sqlite3.Connection, topic: str) -> Counter[Row]:
        rows = conn.execute(
            "SELECT partition, offset, amount FROM amounts WHERE topic = ?", (topic,)
        )
        return Counter(tuple(row) for row in rows)


MODELS: Sequence[Model] = (Counts(applies), Amounts(), Rejected(applies, dead_letter=True))


def orders(
    count: int, first: int, partitions: int, bad: set[int]
) -> list[tuple[bytes, bytes, int]]:
    """Record ``first + i``: a positive amount, or -1 when its number is in ``bad``."""
    return [
        (
            f"c-{i % 7}".encode(),
            json.dumps({"amount": -1 if i in bad else i}).encode(),
            i % partitions,
        )
        for i in range(first, first + count)
    ]


def args(sql: Path, *more: str) -> tuple[str, ...]:
    return (
        *("--processor", "counts", "--sql", str(sql), "--value-format", "json"),
        *("--on-processor-error", "dead-letter", *more),
    )


async def test_failing_records_in_the_middle_of_batches_under_kill_9(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    sql = tmp_path / "amounts.sql"
    sql.write_text(AMOUNTS)
    bad = {i for i in range(2_400) if i % 15 == 7}
    victim = daemon(kafka_bootstrap, topic, group_id, database, *args(sql))

    async def producing() -> None:
        for first in range(0, 2_400, 100):
            await produce(kafka_bootstrap, topic, orders(100, first, 3, bad))
            await asyncio.sleep(0.05)

    production = asyncio.create_task(producing())
    try:
        for round_ in range(3):
            victim.start()
            await victim.wait_for_log("assigned partitions: ", timeout=60)
            await wait_for_progress(database, 400 * (round_ + 1), timeout=60)
            await victim.kill()
        await production
        victim.start()
        # This process's own assignment: the file may already stand at the end, and a SIGTERM
        # before the daemon takes signals would end it with -15.
        await victim.wait_for_log("assigned partitions: ", timeout=60)
        verdict = await caught_up(kafka_bootstrap, database, topic, [victim], models=MODELS)
        assert verdict.read_back == 2_400
        assert "written to rejected_records" in victim.log()
        assert await victim.terminate() == 0
    finally:
        production.cancel()
        await victim.stop_quietly()
    rejected = query(database, "SELECT processor, error FROM rejected_records")
    assert len(rejected) == len(bad)
    assert {processor for processor, _ in rejected} == {"amounts"}
    assert all("CHECK constraint failed" in error for _, error in rejected)
    # verify recomputes the same state, dead letters and all, given the run's flags.
    verifying = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sqlstate", "verify", "--database", str(database)),
        *("--topic", topic, "--bootstrap-servers", kafka_bootstrap, *args(sql)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    said, _ = await asyncio.wait_for(verifying.communicate(), 120)
    assert verifying.returncode == 0, said.decode()


async def test_more_rejected_in_a_row_than_the_limit_stops_with_exit_code_11(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = await topic_factory(partitions=1)
    database = tmp_path / "state.db"
    sql = tmp_path / "amounts.sql"
    sql.write_text(AMOUNTS)
    # Two lone bad records, then a run of twenty: a fault that fails every record looks so.
    await produce(kafka_bootstrap, topic, orders(300, 0, 1, {10, 50, *range(200, 220)}))
    limited = daemon(
        kafka_bootstrap, topic, group_id, database, *args(sql, "--max-rejected-in-a-row", "5")
    )
    try:
        limited.start()
        assert await limited.wait(60) == 11
        assert "--max-rejected-in-a-row 5" in limited.log()
    finally:
        await limited.stop_quietly()
    # Nothing of the batch that crossed the limit committed; what did is exact.
    (position,) = stored_positions(database).values()
    assert position <= 205
    await assert_exactly_once(kafka_bootstrap, database, topic, MODELS)
    rejected = [offset for (offset,) in query(database, "SELECT offset FROM rejected_records")]
    assert {10, 50} <= set(rejected)
    assert len([offset for offset in rejected if offset >= 200]) <= 5
