"""The oracle's models against the processors, without Kafka: the state the processors commit is
what each model says the records make, and a changed row is seen as lost and duplicated."""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from pathlib import Path

from aiokafka import TopicPartition

from sqlstate.kafka.decoding import BadRecords, Decoding
from sqlstate.processors.base import Processor, Record
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.latest import Latest
from sqlstate.processors.sql_file import SqlFileProcessor
from sqlstate.processors.windowed_counts import WindowedCounts
from tests.support import oracle
from tests.support.db import connect_read_only
from tests.support.orders import CUSTOMERS, RETENTION_MS, START_MS, WINDOW_MS, order_value
from tests.support.processing import fold, record

EXAMPLE = Path(__file__).parents[2] / "examples" / "customer_totals.sql"


def raw_records(count: int) -> list[Record]:
    rng = random.Random(5)
    records = []
    for i in range(count):
        tp = TopicPartition("t", i % 2)
        timestamp = START_MS + 500 * i - (720_000 if rng.random() < 0.05 else 0)
        key = rng.choice(CUSTOMERS)
        records.append(record(tp, i // 2, key, order_value(rng, key), timestamp))
    return records


async def test_every_model_matches_its_processor_and_sees_a_change(tmp_path: Path) -> None:
    raw = raw_records(600)
    # As the daemon sees them: values decoded as JSON, the bad ones written to rejected_records.
    decoding = Decoding("bytes", "json")
    assert decoding.value_deserializer is not None
    decode = decoding.value_deserializer
    decoded = [
        record(TopicPartition(r.topic, r.partition), r.offset, r.key, decode(r.value), r.timestamp)
        for r in raw
    ]
    members: list[Processor] = [
        KeyCounter(),
        Latest(),
        WindowedCounts(WINDOW_MS, RETENTION_MS),
        SqlFileProcessor.load(EXAMPLE),
    ]
    bad_records = BadRecords(decoding, "dead-letter")
    path = tmp_path / "s.db"
    batches = [decoded[start : start + 70] for start in range(0, len(decoded), 70)]
    await fold(path, members, batches, bad_records)
    models: list[oracle.Model] = [
        oracle.Counts(oracle.json_value),
        oracle.Latest(oracle.json_value),
        oracle.WindowedCounts(WINDOW_MS, RETENTION_MS, oracle.json_value),
        oracle.CustomerAmounts(oracle.json_value),
        oracle.Rejected(oracle.json_value, dead_letter=True),
    ]
    conn = connect_read_only(path)
    try:
        for model in models:
            stored = model.stored(conn, "t")
            assert stored, model.name
            assert stored == model.expected(raw), model.name
    finally:
        conn.close()
    with sqlite3.connect(path) as writer:
        (partition, customer) = writer.execute(
            "SELECT partition, customer FROM customer_amounts LIMIT 1"
        ).fetchone()
        writer.execute(
            "UPDATE customer_amounts SET amount_cents = amount_cents + 1"
            " WHERE partition = ? AND customer = ?",
            (partition, customer),
        )
    writer.close()
    conn = connect_read_only(path)
    try:
        model = models[3]
        stored, expected = model.stored(conn, "t"), model.expected(raw)
    finally:
        conn.close()
    assert sum((stored - expected).values()) == 1
    assert expected - stored == Counter()
