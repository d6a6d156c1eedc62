"""``python -m bench.stages``: where a processor's time goes, per record, without Kafka.

For one batch of the bench's records (``bench/workload.py``: 100-byte JSON orders, keys drawn
uniformly), measures each stage that sqlstate adds to the bare consumer, in microseconds per
record, best of several repetitions:

- ``decode``: ``--value-format json``, the deserializer aiokafka calls for each record;
- ``prepare``: the processor's ``statements()`` for the batch, in the event loop;
- ``sqlite``: running those statements in one transaction (in the daemon, the database thread,
  beside the event loop; binding each row's parameters still takes Python's GIL).

aiokafka's own work per record (the bare consumer) is the yardstick: ``make bench``'s (a) row.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from bench.workload import key_name, order_value
from sqlstate.kafka.decoding import Decoding
from sqlstate.processors.base import Processor, Record
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.latest import Latest
from sqlstate.processors.registry import Processors
from sqlstate.processors.sql_file import SqlFileProcessor
from sqlstate.processors.windowed_counts import WindowedCounts
from sqlstate.state import migrate

SQL_PROCESSOR = Path(__file__).resolve().parents[1] / "examples" / "customer_totals.sql"


def records(count: int, keys: int, decode: Callable[[bytes], object] | None) -> list[Record]:
    rng = random.Random(42)
    now = int(time.time() * 1000)
    made = []
    for offset in range(count):
        key = key_name(rng.randrange(keys))
        value: object = order_value(key, offset)
        if decode is not None:
            value = decode(value)  # type: ignore[arg-type]
        made.append(
            ConsumerRecord("t", 0, offset, now + offset // 100, 0, key, value, None, 11, 100, ())
        )
    return made


def best(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(processor: Processor, batch: Sequence[Record], repeat: int) -> tuple[float, float]:
    """(prepare, sqlite) in seconds for the batch, each the best of ``repeat``."""
    tp = TopicPartition("t", 0)
    processors = Processors.checked([processor])
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for migration in [*migrate.available(), *processor.migrations]:
            conn.executescript(migration.script)
        prepare = best(lambda: processors.statements(tp, batch), repeat)
        statements = processors.statements(tp, batch)

        def run() -> None:
            conn.execute("BEGIN")
            for statement in statements:
                for setup in statement.setup:
                    conn.execute(setup)
                if statement.counter is None:
                    conn.executemany(statement.sql, statement.rows)
                else:
                    for row in statement.rows:
                        conn.execute(statement.sql, row).fetchone()
            conn.execute("COMMIT")

        return prepare, best(run, repeat)
    finally:
        conn.close()
        processors.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--records", type=int, default=30_000, help="one batch, as --max-records")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args(argv)
    count = options.records
    decode = Decoding("bytes", "json").value_deserializer
    assert decode is not None
    raw = records(count, options.keys, None)
    decoded = records(count, options.keys, decode)
    values = [record.value for record in raw]
    decoding = best(lambda: [decode(value) for value in values], options.repeat)
    print(
        f"{count:,} records, {options.keys:,} keys, microseconds per record, best of"
        f" {options.repeat}"
    )
    print(f"{'stage':<22} {'decode':>7} {'prepare':>8} {'sqlite':>7}")
    runs: list[tuple[str, Processor, Sequence[Record], float]] = [
        ("counts", KeyCounter(), raw, 0.0),
        ("latest", Latest(), raw, 0.0),
        ("windowed-counts 1m", WindowedCounts(60_000, 7 * 86_400_000), raw, 0.0),
        ("--sql, JSON values", SqlFileProcessor.load(SQL_PROCESSOR), decoded, decoding),
    ]
    for name, processor, batch, decode_s in runs:
        prepare, sqlite = measure(processor, batch, options.repeat)
        print(
            f"{name:<22} {decode_s / count * 1e6:7.2f} {prepare / count * 1e6:8.2f}"
            f" {sqlite / count * 1e6:7.2f}"
        )


if __name__ == "__main__":
    main()
