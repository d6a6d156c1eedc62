"""``--sql FILE`` processors: the file's errors, each refused with its file, line and reason before
anything is opened; and a good file run on a real SQLite file, its parameters bound."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from sqlstate.errors import ProcessorError, SchemaTooNewError
from sqlstate.processors.base import Record
from sqlstate.processors.batched import as_trigger_body
from sqlstate.processors.guard import Guard
from sqlstate.processors.keys import stored_key
from sqlstate.processors.registry import from_settings
from sqlstate.processors.sql_file import SqlFileProcessor
from sqlstate.settings import Settings
from sqlstate.state import migrate
from tests.support.db import query, query_value
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


# ---- the record statement over a whole batch in one call (processors/batched.py) -------------

ORDERED = """\
-- sqlstate: schema
CREATE TABLE seen (topic, partition, offset, timestamp, key, value, headers, seen_before);

-- sqlstate: record
-- seen_before depends on the rows before it: the batch form must run them in offset order.
INSERT INTO seen VALUES (:topic, :partition, :offset, :timestamp, :key, :value, :headers,
    (SELECT count(*) FROM seen WHERE key = :key));

-- sqlstate: forget
DELETE FROM seen WHERE topic = :topic AND partition = :partition;
"""


def test_parameters_become_the_new_row_but_quotes_and_comments_stay() -> None:
    names = ["value", "key"]
    statement = (
        "SELECT :value, @key, $value, ':value', \"it's :key\", [:key], `:value`"
        " -- :value\n /* :key */ 'a''b:value'"
    )
    assert as_trigger_body(statement, names) == (
        'SELECT NEW."value", NEW."key", NEW."value", \':value\', "it\'s :key", [:key],'
        " `:value` -- :value\n /* :key */ 'a''b:value'"
    )
    for unsure in ["SELECT ?", "SELECT :other", "SELECT $value::x", "SELECT 'open", "/* open"]:
        assert as_trigger_body(unsure, names) is None, unsure


def batch_records(offsets: range) -> list[Record]:
    """Text records, some keys repeated, one with a null key and one a tombstone."""
    return [
        record(
            TP,
            offset,
            None if offset % 7 == 0 else f"k{offset % 3}",
            None if offset % 5 == 0 else json.dumps({"n": offset, "s": 'q"\\\n\u00e9'}),
            1_700_000_000_000 + offset,
            [("h", b"x")] if offset % 2 else [],
        )
        for offset in offsets
    ]


async def test_the_batch_form_keeps_the_rows_and_their_order_of_executemany(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, ORDERED)
    batched, row_by_row = SqlFileProcessor.load(path), SqlFileProcessor.load(path)
    row_by_row.batch = None
    batches = [batch_records(range(0, 40)), batch_records(range(40, 100))]
    (statement,) = batched.statements(TP, batches[0])
    assert statement.setup
    assert len(statement.rows) == 1  # one call for the batch
    await fold(tmp_path / "batched.db", [batched], batches)
    await fold(tmp_path / "rows.db", [row_by_row], batches)
    everything = "SELECT * FROM seen ORDER BY rowid"
    assert query(tmp_path / "batched.db", everything) == query(tmp_path / "rows.db", everything)
    assert query_value(tmp_path / "batched.db", "SELECT max(seen_before) FROM seen") > 0


@pytest.mark.parametrize(
    ("key", "value"),
    [(b"k", b"\xff not UTF-8"), ("k", "NUL \x00 inside"), (b"\xfe", "v")],
)
async def test_a_batch_json_cannot_carry_runs_row_by_row(
    tmp_path: Path, key: object, value: object
) -> None:
    processor = SqlFileProcessor.load(write(tmp_path, ORDERED))
    records = [*batch_records(range(3)), record(TP, 3, key, value)]
    (statement,) = processor.statements(TP, records)
    assert not statement.setup
    assert len(statement.rows) == 4
    await fold(tmp_path / "s.db", [processor], [records])
    assert query(tmp_path / "s.db", "SELECT key, value FROM seen WHERE offset = 3") == [
        (stored_key(key), value)  # type: ignore[arg-type]
    ]


async def test_a_statement_no_trigger_can_hold_runs_row_by_row(tmp_path: Path) -> None:
    text = (
        ORDERED.replace("INSERT INTO seen VALUES", "WITH one AS (SELECT 1) INSERT INTO seen SELECT")
        .replace("(:topic", ":topic")
        .replace(":key));", ":key) FROM one;")
    )
    processor = SqlFileProcessor.load(write(tmp_path, text))
    assert processor.batch is None
    await fold(tmp_path / "s.db", [processor], [batch_records(range(10))])
    assert query_value(tmp_path / "s.db", "SELECT count(*) FROM seen") == 10


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ('CREATE TEMP VIEW "other" AS SELECT 1 AS a', "may only create the temporary view"),
        (
            'CREATE TEMP TRIGGER "sqlstate_batch_mine" AFTER INSERT ON positions BEGIN'
            " DELETE FROM positions; END",
            "may only create the temporary view",
        ),
        ("CREATE TABLE extra (a)", "may only create the temporary view"),
    ],
)
def test_a_setup_may_only_make_its_own_view_and_trigger(setup: str, reason: str) -> None:
    guard = Guard()
    try:
        guard.add_sqlstate_schema(migration.script for migration in migrate.available())
        with pytest.raises(ProcessorError, match=reason):
            guard.check("mine", "SELECT 1", None, "a statement", [setup])
    finally:
        guard.close()


def test_the_trigger_of_a_setup_is_checked_as_the_processor(tmp_path: Path) -> None:
    guard = Guard()
    try:
        guard.add_sqlstate_schema(migration.script for migration in migrate.available())
        setup = [
            'CREATE TEMP VIEW "sqlstate_batch_mine" AS SELECT NULL AS "value"',
            'CREATE TEMP TRIGGER "sqlstate_batch_mine" INSTEAD OF INSERT ON'
            ' "sqlstate_batch_mine" BEGIN DELETE FROM positions; END',
        ]
        insert = 'INSERT INTO temp."sqlstate_batch_mine" ("value") SELECT 1'
        with pytest.raises(ProcessorError, match="delete from positions, sqlstate's own table"):
            guard.check("mine", insert, None, "a statement", setup)
    finally:
        guard.close()
