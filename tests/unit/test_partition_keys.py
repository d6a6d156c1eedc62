"""Under --changelog every state table is keyed by the partition: a table that several
partitions' owners would write is refused at start, naming the processor and the table, for
``--sql`` files (their PRIMARY KEY or UNIQUE index) and Python processors (their
``changelog_tables``) alike. Without --changelog nothing is refused."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from examples.order_totals import OrderTotals
from sqlstate.changelog.mode import checked_tables
from sqlstate.changelog.tables import state_tables
from sqlstate.errors import ProcessorError
from sqlstate.processors import Migration, Records, Statement
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.registry import Processors
from sqlstate.processors.sql_file import SqlFileProcessor
from sqlstate.settings import Settings

TOTALS = """\
-- sqlstate: schema
{schema}
-- sqlstate: record
INSERT INTO amounts (topic, partition, customer, n) VALUES (:topic, :partition, :key, 1)
ON CONFLICT DO UPDATE SET n = n + 1;
-- sqlstate: forget
DELETE FROM amounts WHERE topic = :topic AND partition = :partition;
"""
AMOUNTS = "CREATE TABLE amounts (topic, partition, customer, n, PRIMARY KEY ({key}));"
# A trigger that keeps a total per customer beside the per-partition rows.
DERIVED = (
    AMOUNTS.format(key="topic, partition, customer")
    + "\nCREATE TABLE totals (customer PRIMARY KEY, n);\n"
    "CREATE TRIGGER total AFTER INSERT ON amounts BEGIN\n"
    "    INSERT INTO totals VALUES (NEW.customer, 1) ON CONFLICT DO UPDATE SET n = n + 1;\nEND;"
)


class Totals:
    """A Python processor whose table is keyed as ``key`` says."""

    name = "py-totals"
    migrations: Sequence[Migration] = (
        Migration("0001_t", "CREATE TABLE py_totals (topic, partition, customer, n);"),
    )

    def __init__(self, key: Sequence[str]) -> None:
        self.changelog_tables: Mapping[str, Sequence[str]] = {"py_totals": key}

    def statements(self, tp: TopicPartition, records: Records) -> Sequence[Statement]:
        return []

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        return []


def sql_file(tmp_path: Path, schema: str) -> SqlFileProcessor:
    path = tmp_path / "totals.sql"
    path.write_text(TOTALS.format(schema=schema))
    return SqlFileProcessor.load(path)


@pytest.mark.parametrize(
    ("schema", "table", "key"),
    [
        (AMOUNTS.format(key="customer"), "amounts", "customer"),
        (AMOUNTS.format(key="topic, customer"), "amounts", "topic, customer"),
        (
            "CREATE TABLE amounts (topic, partition, customer, n, UNIQUE (topic, customer));",
            "amounts",
            "topic, customer",
        ),
        (DERIVED, "totals", "customer"),
    ],
)
def test_a_sql_table_keyed_without_the_partition_is_refused_under_changelog(
    tmp_path: Path, schema: str, table: str, key: str
) -> None:
    processor = sql_file(tmp_path, schema)
    with pytest.raises(
        ProcessorError,
        match=rf"processor totals \(--sql {re.escape(str(tmp_path))}/totals.sql\): under"
        rf" --changelog, table {table} \(keyed by {key}\) must be"
        r" keyed by the partition too.*Add a column partition",
    ):
        state_tables([KeyCounter(), processor])
    # One host holds every partition: the same file is taken without --changelog.
    processors = Processors.checked([processor])
    try:
        settings = Settings(topics=("t",), group_id="g", sql_files=(tmp_path / "totals.sql",))
        assert checked_tables(settings, processors) == []
    finally:
        processors.close()


def test_a_python_processor_declares_the_partition_in_its_key_and_only_its_tables() -> None:
    with pytest.raises(ProcessorError, match=r"table py_totals \(keyed by topic, customer\)"):
        state_tables([Totals(("topic", "customer"))])
    # sqlstate's positions hold the partition, but a standby would write them from the changelog.
    positions = Totals(("topic", "partition"))
    positions.changelog_tables = {"positions": ("topic", "partition")}
    with pytest.raises(ProcessorError, match="changelog_tables names positions, sqlstate's own"):
        state_tables([positions])
    # Keyed by the partition, as the example is.
    tables = state_tables([Totals(("topic", "partition", "customer")), OrderTotals()])
    assert [table.key for table in tables[-2:]] == [("topic", "partition", "customer")] * 2
