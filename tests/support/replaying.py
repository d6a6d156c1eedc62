"""What the tests of ``sqlstate replay`` share: every processor at once over orders written as a
records file, and the state they leave, table by table, to compare two databases."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tests.support.db import query

ROOT = Path(__file__).resolve().parents[2]
#: Every kind of processor: three built-ins, one in Python, one in SQL; bad records kept.
PROCESSOR_ARGS = (
    *("--processor", "counts", "--processor", "latest", "--processor", "windowed-counts"),
    *("--processor", "examples.order_totals:OrderTotals"),
    *("--sql", str(ROOT / "examples" / "customer_totals.sql")),
    *("--window", "1s", "--retention", "5s"),
    *("--value-format", "json", "--on-bad-record", "dead-letter"),
)
#: Each table those processors write, and the positions.
TABLES = (
    "key_counts",
    "latest",
    "windowed_key_counts",
    "window_clocks",
    "order_totals",
    "customer_amounts",
    "rejected_records",
)


def order_lines(topic: str, count: int, first_timestamp_ms: int) -> list[dict[str, Any]]:
    """``count`` records of a records file: JSON orders over three partitions, with a
    tombstone, a value that is not JSON, a null key and a key that is not UTF-8 among them,
    and record times that go back now and then (late records)."""
    chosen = random.Random(7)
    lines: list[dict[str, Any]] = []
    for n in range(count):
        customer = f"c-{chosen.randrange(6)}"
        value: object = {"json": {"customer": customer, "amount_cents": chosen.randrange(1, 999)}}
        key: object = customer
        if n % 17 == 5:
            value = None
        elif n % 23 == 7:
            value = "{not json"
        if n % 29 == 3 and value is not None:  # Kafka takes no record without both
            key = None
        elif n % 31 == 4:
            key = {"hex": "fffe"}
        lines.append(
            {
                "topic": topic,
                "partition": chosen.randrange(3),
                "timestamp": first_timestamp_ms + n * 100 - chosen.randrange(3) * 700,
                "key": key,
                "value": value,
            }
        )
    return lines


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def state(database: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every processor table's rows, and each partition's position, in a stable order."""
    tables = {
        table: sorted(query(database, f"SELECT * FROM {table}"), key=repr) for table in TABLES
    }
    tables["positions"] = query(
        database, "SELECT topic, partition, next_offset FROM positions ORDER BY 1, 2"
    )
    return tables
