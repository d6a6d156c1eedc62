"""``--sql FILE`` processors: the file's errors, each refused with its file, line and reason before
anything is opened; and a good file run on a real SQLite file, its parameters bound."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from sqlstate.errors import ProcessorError, SchemaTooNewError
from sqlstate.processors.registry import from_settings
from sqlstate.processors.sql_file import SqlFileProcessor
from sqlstate.settings import Settings
from tests.support.db import query
from tests.support.processing import fold, order, record

EXAMPLE = Path(__file__).parents[2] / "examples" / "customer_totals.sql"
TP = TopicPartition("orders", 1)

GOOD = """\
-- A header comment.
-- sqlstate: schema
CREATE TABLE seen (topic, partition, offset, timestamp, key, value, headers);

-- sqlstate: record
INSERT INTO seen VALUES (:topic, :partition, :offset, :timestamp, :key, :value, :headers);

-- sqlstate: forget
DELETE FROM seen WHERE topic = :topic AND partition = :partition;
"""


def write(tmp_path: Path, text: str, name: str = "mine") -> Path:
    path = tmp_path / f"{name}.sql"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("SELECT 1;\n-- sqlstate: schema\n", 1, "SQL before the first section"),
        (GOOD.replace("sqlstate: forget", "sqlstate: forgetting"), 8, "unknown section"),
        (GOOD + "-- sqlstate: record\nSELECT 1;\n", 10, "a second record section"),
        (GOOD.replace(";\n\n-- sqlstate: record", "\n\n-- sqlstate: record"), 3, "not ended"),
        (GOOD.replace("CREATE TABLE seen", "CREATE TABEL seen"), 3, "syntax error"),
        (GOOD.replace("INSERT INTO seen", "INSERT INTO unseen"), 6, "no such table: unseen"),
        (GOOD.replace(":headers)", ":header)"), 6, "unknown parameter :header"),
        (GOOD.replace(":value,", "?,"), 6, "Binding 6 has no name"),
        (GOOD.replace("= :partition", "= :offset"), 9, "unknown parameter :offset"),
        (
            GOOD.replace("INSERT INTO seen", "INSERT INTO positions"),
            6,
            "insert into positions, sqlstate's own table",
        ),
        (
            GOOD.replace("DELETE FROM seen", "DELETE FROM schema_migrations"),
            9,
            "delete from schema_migrations, sqlstate's own table",
        ),
        (
            GOOD.replace(
                "headers);\n",
                "headers);\nCREATE TRIGGER t AFTER INSERT ON seen BEGIN\n"
                "    UPDATE key_counts SET count = 0;\nEND;\n",
                1,
            ),
            9,
            "update key_counts, sqlstate's own table",
        ),
        (GOOD.replace(":headers)", "random())"), 6, "random\\(\\) is not repeatable"),
        (GOOD + "COMMIT;\n", 10, "transaction statement"),
        (
            GOOD.replace("-- sqlstate: forget", "SELECT 1;\n-- sqlstate: forget"),
            8,
            "the record section holds 2 statements",
        ),
        (GOOD.replace("CREATE TABLE seen", "ATTACH 'x.db' AS x; CREATE TABLE seen"), 3, "ATTACH"),
    ],
)
def test_a_bad_file_is_refused_with_its_line_and_reason(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProcessorError, match=rf"{re.escape(str(path))}, line {line}\b.*{reason}"):
        SqlFileProcessor.load(path)


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("mine", GOOD.split("-- sqlstate: forget")[0], "no forget section"),
        ("mine", "-- only a comment\n", "no schema section"),
        ("Bad.Name", GOOD, "is not one"),
    ],
)
def test_a_file_without_its_sections_or_name_is_refused(
    tmp_path: Path, name: str, text: str, reason: str
) -> None:
    with pytest.raises(ProcessorError, match=reason):
        SqlFileProcessor.load(write(tmp_path, text, name))


def test_a_file_may_not_take_a_built_in_name(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, name="counts")
    settings = Settings(topics=("t",), group_id="g", sql_files=(path,))
    with pytest.raises(ProcessorError, match="the name counts belongs to a built-in"):
        from_settings(settings)


async def test_every_parameter_is_bound_from_the_record(tmp_path: Path) -> None:
    processor = SqlFileProcessor.load(write(tmp_path, GOOD))
    assert processor.name == "mine"
    records = [
        record(TP, 7, b"k", b"\xff", 1_700_000_000_123, [("trace", b"abc"), ("raw", b"\xfe")]),
        record(TP, 8, None, None, 5),
        record(TP, 9, "text key", '{"json": true}', 6),
    ]
    await fold(tmp_path / "s.db", [processor], [records])
    assert query(tmp_path / "s.db", "SELECT * FROM seen ORDER BY offset") == [
        ("orders", 1, 7, 1_700_000_000_123, "k", b"\xff", '{"trace": "abc", "raw": {"hex": "fe"}}'),
        ("orders", 1, 8, 5, None, None, "{}"),
        ("orders", 1, 9, 6, "text key", '{"json": true}', "{}"),
    ]


async def test_the_example_sums_amounts_per_customer(tmp_path: Path) -> None:
    processor = SqlFileProcessor.load(EXAMPLE)
    assert processor.name == "customer_totals"
    values = [order("a", 5), order("b", 7), "[]", order("a", 1), json.dumps({"customer": "c"})]
    batches = [
        [record(TP, offset, b"k", value) for offset, value in enumerate(values[:2])],
        [record(TP, offset + 2, b"k", value) for offset, value in enumerate(values[2:])],
    ]
    path = tmp_path / "s.db"
    await fold(path, [processor], batches)
    assert query(path, "SELECT * FROM customer_amount ORDER BY 1") == [("a", 6), ("b", 7)]
    (forget,) = processor.forget(TP)
    assert forget.rows == [{"topic": "orders", "partition": 1}]


async def test_a_changed_schema_section_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = write(tmp_path, GOOD)
    await fold(path, [SqlFileProcessor.load(first)], [[record(TP, 0, b"k")]])
    # Comments and indentation are not the schema: the file still matches.
    write(tmp_path, "-- more words\n" + GOOD.replace("CREATE TABLE", "  CREATE TABLE"))
    await fold(path, [SqlFileProcessor.load(first)], [[record(TP, 1, b"k")]])
    write(
        tmp_path, GOOD.replace("headers);\n", "headers);\nCREATE INDEX by_key ON seen (key);\n", 1)
    )
    with pytest.raises(SchemaTooNewError, match=r"mine/0001_schema_.* its schema section changed"):
        await fold(path, [SqlFileProcessor.load(first)], [[record(TP, 2, b"k")]])
