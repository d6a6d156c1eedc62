"""The guard's trust boundary, with crafted processor files: sqlstate's name space and TEMP
objects, SQLite's AUTOINCREMENT counters, statements the authorizer never sees, and determinism
(an allowlist of SQLite's deterministic functions, the clock refused). Each crafted ``--sql``
file is refused at load, before anything is opened, naming its file, line and reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from sqlstate.errors import ProcessorError
from sqlstate.processors.latest import Latest
from sqlstate.processors.registry import Processors
from sqlstate.processors.sql_file import SqlFileProcessor
from tests.support.db import query
from tests.support.processing import fold, record
from tests.unit.test_processors import Writer

TP = TopicPartition("orders", 2)
SEEN = (
    "CREATE TABLE seen (topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,"
    " v, PRIMARY KEY (topic, partition, offset));"
)
RECORD = "INSERT INTO seen VALUES (:topic, :partition, :offset, :value);"
FORGET = "DELETE FROM seen WHERE topic = :topic AND partition = :partition;"
IDS = "CREATE TABLE ids (id INTEGER PRIMARY KEY AUTOINCREMENT, v);"


def crafted(schema: tuple[str, ...] = (), record: str = RECORD, forget: str = FORGET) -> str:
    sections = ["-- sqlstate: schema", SEEN, *schema, "-- sqlstate: record", record]
    return "\n".join([*sections, "-- sqlstate: forget", forget]) + "\n"


def line_of(text: str, statement: str) -> int:
    first = statement.splitlines()[0]
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith(first))


def refused(tmp_path: Path, text: str, statement: str, reason: str) -> None:
    path = tmp_path / "crafted.sql"
    path.write_text(text)
    where = rf"{re.escape(str(path))}, line {line_of(text, statement)}\b"
    with pytest.raises(ProcessorError, match=rf"{where}.*{reason}"):
        SqlFileProcessor.load(path)


@pytest.mark.parametrize(
    ("schema", "statement", "reason"),
    [
        # An unqualified changelog_capture would find the TEMP capture table at run time.
        (("CREATE TABLE changelog_capture (key, value);",), "", "changelog_capture is sqlstate's"),
        (("CREATE VIEW sqlstate_batch_other AS SELECT 1;",), "", "sqlstate_batch_other is sqlst"),
        (("CREATE INDEX changelog_by_v ON seen (v);",), "", "changelog_by_v is sqlstate's"),
        (("ALTER TABLE seen RENAME TO changelog_seen;",), "", "changelog_seen is sqlstate's"),
        (
            ("CREATE TRIGGER changelog_update_seen AFTER UPDATE ON seen BEGIN SELECT 1; END;",),
            "",
            "changelog_update_seen is sqlstate's",
        ),
        (("DROP TABLE temp.changelog_capture;",), "", "dropping a temporary table"),
        (("VACUUM INTO '{tmp}/copy.db';",), "", "VACUUM is not allowed"),
        (("CREATE TABLE stamped (at DEFAULT CURRENT_TIMESTAMP);",), "", "CURRENT_TIMESTAMP reads"),
        (("CREATE TABLE stamped (at DEFAULT (date('now')));",), "", "'now' reads the clock"),
        (("CREATE TABLE stamped (at DEFAULT (random()));",), "", r"random\(\) is not repeatable"),
        (("CREATE TABLE stamped (at DEFAULT (changes()));",), "", r"changes\(\) is not repeat"),
    ],
)
def test_a_schema_statement_outside_the_processors_rights_is_refused(
    tmp_path: Path, schema: tuple[str, ...], statement: str, reason: str
) -> None:
    schema = tuple(text.replace("{tmp}", str(tmp_path)) for text in schema)
    refused(tmp_path, crafted(schema), statement or schema[-1], reason)
    assert not (tmp_path / "copy.db").exists()


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (
            "INSERT INTO changelog_capture (key, value) VALUES (:key, :value);",
            "insert into changelog_capture, a temporary object of sqlstate's",
        ),
        (
            "UPDATE temp.changelog_capture SET value = :value;",
            "update changelog_capture, a temporary object of sqlstate's",
        ),
        (
            "INSERT INTO seen SELECT :topic, :partition, :offset, key FROM temp.changelog_capture;",
            "read changelog_capture, a temporary object of sqlstate's",
        ),
        ('DROP TRIGGER IF EXISTS temp."changelog_update_seen";', "schema changes belong"),
        ("INSERT INTO sqlite_sequence VALUES ('ids', :offset);", "AUTOINCREMENT counters"),
        *(
            (RECORD.replace(":value", call), reason)
            for call, reason in [
                ("julianday('now')", "'now' reads the clock"),
                ("datetime('NOW', '+1 day')", "'now' reads the clock"),
                ("date(:timestamp / 1000, 'unixepoch', 'localtime')", "'localtime' modifier"),
                ("datetime(:timestamp / 1000, 'unixepoch', 'utc')", "'utc' modifier"),
                ("CURRENT_TIMESTAMP", "CURRENT_TIMESTAMP reads the clock"),
                ("CURRENT_DATE", "CURRENT_DATE reads the clock"),
                ("date()", "without a time value reads the clock"),
                ("unixepoch()", "without a time value reads the clock"),
                ("strftime('%s')", "without a time value reads the clock"),
                ("changes()", r"changes\(\) is not repeatable"),
                ("last_insert_rowid()", r"last_insert_rowid\(\) is not repeatable"),
                ("total_changes()", r"total_changes\(\) is not repeatable"),
                ("sqlite_version()", r"sqlite_version\(\) is not repeatable"),
                ("fts3_tokenizer('simple')", r"fts3_tokenizer\(\) is not repeatable"),
                ("load_extension('libevil')", r"load_extension\(\) is not repeatable"),
                ("(SELECT data_version FROM pragma_data_version)", "own bookkeeping"),
                ("(SELECT max(updated_at) FROM positions)", "read positions, sqlstate's own"),
                ("(SELECT max(updated_at) FROM progress)", "read positions, sqlstate's own"),
                ("(SELECT count(*) FROM dbstat)", "own bookkeeping"),
            ]
        ),
    ],
)
def test_a_record_statement_outside_the_processors_rights_is_refused(
    tmp_path: Path, record: str, reason: str
) -> None:
    refused(tmp_path, crafted((IDS,), record), record, reason)


@pytest.mark.parametrize(
    ("forget", "reason"),
    [
        ("DELETE FROM changelog_capture;", "delete from changelog_capture, a temporary object"),
        ('DROP TRIGGER temp."changelog_delete_seen";', "schema changes belong"),
        ("DELETE FROM sqlite_sequence WHERE name = :topic;", "AUTOINCREMENT counters"),
        ("VACUUM INTO '{tmp}/copy.db';", "VACUUM is not allowed"),
        ("REINDEX;", "REINDEX is not allowed"),
    ],
)
def test_a_forget_statement_outside_the_processors_rights_is_refused(
    tmp_path: Path, forget: str, reason: str
) -> None:
    forget = forget.replace("{tmp}", str(tmp_path))
    refused(tmp_path, crafted((IDS,), forget=forget), forget, reason)
    assert not (tmp_path / "copy.db").exists()


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        (
            "CREATE TRIGGER counted AFTER INSERT ON seen BEGIN"
            " UPDATE seen SET v = changes() WHERE offset = NEW.offset; END;",
            r"changes\(\) is not repeatable",
        ),
        (
            "CREATE VIEW noisy AS SELECT total_changes() AS n;",
            r"total_changes\(\) is not repeatable",
        ),
    ],
)
def test_a_trigger_or_view_is_checked_where_a_record_statement_uses_it(
    tmp_path: Path, schema: str, reason: str
) -> None:
    record = RECORD
    if "noisy" in schema:
        record = RECORD.replace(":value", "(SELECT n FROM noisy)")
    refused(tmp_path, crafted((schema,), record), record, reason)


@pytest.mark.parametrize(
    ("statement", "migration", "reason"),
    [
        ("SELECT ?", "CREATE TABLE changelog_capture (key, value);", "is sqlstate's"),
        ("SELECT ?", "CREATE TABLE mine (x); CREATE VIEW sqlstate_totals AS SELECT 1;", "sqlst"),
        (
            "INSERT INTO changelog_capture (key, value) VALUES (?, ?)",
            "CREATE TABLE mine (x);",
            "temp",
        ),
        ("DELETE FROM sqlite_sequence WHERE seq > ?", IDS, "AUTOINCREMENT counters"),
        ("INSERT INTO mine VALUES (julianday('now') + ?)", "CREATE TABLE mine (x);", "'now'"),
        ("INSERT INTO mine VALUES (last_insert_rowid() + ?)", "CREATE TABLE mine (x);", "repeat"),
    ],
)
def test_a_python_processor_meets_the_same_guard(
    statement: str, migration: str, reason: str
) -> None:
    with pytest.raises(ProcessorError, match=f"processor w .*{reason}"):
        run_once(Writer(statement, migration))


def run_once(processor: Writer) -> None:
    """Check ``processor``'s migrations, then one statement of a batch."""
    processors = Processors.checked([Latest(), processor])
    try:
        processors.statements(TP, [record(TP, 0, b"k")])
    finally:
        processors.close()


DATED = """\
-- sqlstate: schema
CREATE TABLE days (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, day TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, day)
);
-- AUTOINCREMENT: SQLite keeps its counter in sqlite_sequence, unasked; only explicit writes
-- there are refused.
CREATE TABLE arrivals (id INTEGER PRIMARY KEY AUTOINCREMENT, topic, partition, day);
CREATE TRIGGER arrived AFTER INSERT ON days BEGIN
    INSERT INTO arrivals (topic, partition, day) VALUES (NEW.topic, NEW.partition, NEW.day);
END;
-- sqlstate: record
INSERT INTO days
VALUES (:topic, :partition, strftime('%Y-%m-%d', :timestamp / 1000, 'unixepoch'), 1)
ON CONFLICT (topic, partition, day) DO UPDATE SET n = n + 1;
-- sqlstate: forget
DELETE FROM days WHERE topic = :topic AND partition = :partition;
DELETE FROM arrivals WHERE topic = :topic AND partition = :partition;
"""


async def test_dates_of_the_records_are_kept_and_the_clock_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dated.sql"
    path.write_text(DATED)
    day_ms = 86_400_000
    # Record times relative to the epoch: the file's result is the same on any day it runs.
    batch = [record(TP, n, b"k", timestamp=(n // 2) * day_ms + 1000) for n in range(5)]
    await fold(tmp_path / "s.db", [SqlFileProcessor.load(path)], [batch])
    assert query(tmp_path / "s.db", "SELECT day, n FROM days ORDER BY day") == [
        ("1970-01-01", 2),
        ("1970-01-02", 2),
        ("1970-01-03", 1),
    ]
    assert query(tmp_path / "s.db", "SELECT id, day FROM arrivals ORDER BY id") == [
        (1, "1970-01-01"),
        (2, "1970-01-02"),
        (3, "1970-01-03"),
    ]
    clock = DATED.replace(":timestamp / 1000, 'unixepoch'", "'now'")
    refused(tmp_path, clock, "INSERT INTO days", "'now' reads the clock")
