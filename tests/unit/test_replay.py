"""``sqlstate check`` and ``sqlstate replay`` on the command line, and ``sqlstate.testing``:
the daemon's start checks with their exit codes and lines, batch boundaries that change nothing,
a replay continued from stored positions, and the refusals a daemon would make."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from click.testing import CliRunner, Result

from examples.order_totals import OrderTotals
from sqlstate.cli.commands import main
from sqlstate.processors import Migration, Records, Statement
from sqlstate.testing import ProcessorLike, RecordLike, run_processors
from tests.support.db import query
from tests.support.replaying import PROCESSOR_ARGS, order_lines, state, write_lines

SCHEMA = "CREATE TABLE t (topic TEXT, partition INTEGER, n INTEGER);"


def sqlstate(*args: str) -> Result:
    return CliRunner().invoke(main, ["-q", *args])


def sql_file(tmp_path: Path, name: str, record: str, record_section: str = "record") -> str:
    """A SQL processor of table ``t`` whose record section (line 3 on) holds ``record``."""
    path = tmp_path / f"{name}.sql"
    path.write_text(
        f"-- sqlstate: schema\n{SCHEMA}\n-- sqlstate: {record_section}\n{record}\n"
        "-- sqlstate: forget\nDELETE FROM t WHERE topic = :topic AND partition = :partition;\n"
    )
    return str(path)


def test_check_passes_every_kind_of_processor_with_one_line_each() -> None:
    result = sqlstate(
        "check", "counts", "examples.order_totals:OrderTotals", "examples/customer_totals.sql"
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "ok counts: built-in",
        "ok order-totals: examples.order_totals:OrderTotals",
        "ok customer_totals: --sql examples/customer_totals.sql",
    ]


def test_check_refuses_a_bad_section_with_its_file_and_line(tmp_path: Path) -> None:
    path = sql_file(tmp_path, "typo", "INSERT INTO t VALUES (:topic, :partition, 1);", "recrod")
    result = sqlstate("check", path)
    assert result.exit_code == 2
    assert f"{path}, line 3: unknown section 'recrod'" in result.output


def test_check_refuses_what_the_guard_refuses_with_its_line(tmp_path: Path) -> None:
    path = sql_file(tmp_path, "noisy", "INSERT INTO t\nVALUES (:topic, :partition, random());")
    result = sqlstate("check", path)
    assert result.exit_code == 2
    assert f"{path}, line 4): random() is not repeatable" in result.output


def test_check_refuses_a_table_without_a_key_only_under_changelog(tmp_path: Path) -> None:
    path = sql_file(tmp_path, "unkeyed", "INSERT INTO t VALUES (:topic, :partition, 1);")
    assert sqlstate("check", path).exit_code == 0
    result = sqlstate("check", "--changelog", path)
    assert result.exit_code == 2
    assert "table t has no PRIMARY KEY" in result.output
    keyed = sqlstate("check", "--changelog", "examples.order_totals:OrderTotals")
    assert keyed.exit_code == 0, keyed.output
    assert keyed.output.splitlines()[-1] == (
        "ok --changelog: rows shipped keyed by rejected_records (topic, partition, offset);"
        " order_totals (topic, partition, customer)"
    )


def test_batch_boundaries_do_not_change_the_state(tmp_path: Path) -> None:
    records = write_lines(tmp_path / "orders.jsonl", order_lines("orders", 200, 1_000_000))
    states = []
    for size in ("1", "7", "1000"):
        database = tmp_path / f"batches-of-{size}.db"
        result = sqlstate(
            "replay", "--records", str(records), "--database", str(database),
            "--batch-size", size, *PROCESSOR_ARGS,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        states.append(state(database))
    assert states[0] == states[1] == states[2]
    # Every record is counted, or kept in rejected_records (a value that is not JSON).
    assert len(states[0]["rejected_records"]) == 9
    assert sum(count for *_, count in states[0]["key_counts"]) == 200 - 9
    assert [offset for *_, offset in states[0]["positions"]] == [
        sum(1 for line in order_lines("orders", 200, 1_000_000) if line["partition"] == p)
        for p in range(3)
    ]


def test_a_replay_continues_from_the_stored_positions(tmp_path: Path) -> None:
    lines = order_lines("orders", 120, 1_000_000)
    whole = write_lines(tmp_path / "whole.jsonl", lines)
    first = write_lines(tmp_path / "first.jsonl", lines[:50])
    once = tmp_path / "once.db"
    twice = tmp_path / "twice.db"
    for records, database in ((whole, once), (first, twice), (whole, twice)):
        result = sqlstate(
            "replay", "--records", str(records), "--database", str(database), *PROCESSOR_ARGS
        )
        assert result.exit_code == 0, result.output
    assert "50 skipped at stored positions" in result.output
    assert state(once) == state(twice)


def test_a_replay_is_refused_what_the_daemon_refuses(tmp_path: Path) -> None:
    records = write_lines(tmp_path / "orders.jsonl", order_lines("orders", 30, 1_000_000))
    database = str(tmp_path / "state.db")
    assert sqlstate("replay", "--records", str(records), "--database", database).exit_code == 0
    other = sqlstate(
        "replay", "--records", str(records), "--database", database, "--processor", "latest"
    )
    assert other.exit_code == 2
    assert "kept by processors counts" in other.output
    failed = sqlstate(
        "replay", "--records", str(records), "--database", str(tmp_path / "fail.db"),
        "--processor", "latest", "--value-format", "json", "--batch-size", "5",
    )  # fmt: skip
    assert failed.exit_code == 8
    assert "orders-0 offset 5: value is not JSON" in failed.output
    # The batches before the bad record's committed; its own did not.
    assert query(tmp_path / "fail.db", "SELECT sum(next_offset) FROM positions") == [(5,)]


def test_a_bad_records_file_exits_2_with_its_line(tmp_path: Path) -> None:
    records = tmp_path / "bad.jsonl"
    records.write_text('{"topic": "t"}\n{"topic": "t", "value": 5}\n')
    result = sqlstate("replay", "--records", str(records), "--database", str(tmp_path / "x.db"))
    assert result.exit_code == 2
    assert f"{records}, line 2: value: int is not a payload" in result.output
    assert not (tmp_path / "x.db").exists()


class Seen:
    """A processor given as an object: the offsets of the records it saw, per partition."""

    name = "seen"
    migrations: Sequence[Migration] = (
        Migration("0001_seen", "CREATE TABLE seen (topic, partition, offset, key, headers);"),
    )

    def statements(self, tp: TopicPartition, records: Records) -> Sequence[Statement]:
        rows = [(r.topic, r.partition, r.offset, r.key, repr(r.headers)) for r in records]
        return [Statement("INSERT INTO seen VALUES (?, ?, ?, ?, ?)", rows)]

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        return [Statement("DELETE FROM seen WHERE topic = ? AND partition = ?", [tuple(tp)])]


def test_the_testing_helper_takes_names_files_and_objects(tmp_path: Path) -> None:
    records: list[RecordLike] = [
        ("a", {"json": {"customer": "a", "amount_cents": 3}}),
        {"key": "b", "partition": 1, "value": {"json": {"customer": "b", "amount_cents": 4}}},
        {"topic": "other", "key": {"hex": "ff"}, "headers": {"h": "1"}, "value": "{}"},
    ]
    processors: list[ProcessorLike] = [
        "counts",
        Path("examples/customer_totals.sql"),
        Seen(),
        OrderTotals(),
    ]
    with contextlib.closing(run_processors(processors, records, value_format="json")) as db:
        assert db.execute("SELECT * FROM seen ORDER BY 1, 2").fetchall() == [
            ("other", 0, 0, b"\xff", "(('h', b'1'),)"),
            ("records", 0, 0, b"a", "()"),
            ("records", 1, 0, b"b", "()"),
        ]
        assert db.execute("SELECT * FROM customer_amount ORDER BY 1").fetchall() == [
            ("a", 3),
            ("b", 4),
        ]
        assert db.execute("SELECT sum(count) FROM counts").fetchall() == [(3,)]


def test_the_testing_helper_refuses_what_the_daemon_refuses() -> None:
    with pytest.raises(Exception, match="random"):
        run_processors([NOISY], [("a", "b")])


class Noisy(Seen):
    name = "noisy"

    def statements(self, tp: TopicPartition, records: Records) -> Sequence[Statement]:
        return [Statement("INSERT INTO seen (offset) VALUES (random())", [()])]


NOISY = Noisy()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"topic": "t", "key": "a", "key": "b"}', "the name 'key' appears twice"),
        ('{"topic": "t", "value": {"json": NaN}}', "NaN is not JSON"),
        ('{"topic": "t", "offset": 9223372036854775808}', "offset must be an integer from 0"),
        ('{"topic": "t", "partition": 2147483648}', "partition must be an integer from 0"),
        ('{"topic": "t", "timestamp": 9223372036854775808}', "timestamp must be milliseconds"),
    ],
)
def test_a_record_json_would_bend_or_kafka_could_not_hold_is_refused_with_its_line(
    tmp_path: Path, line: str, message: str
) -> None:
    records = tmp_path / "bad.jsonl"
    records.write_text(f'{{"topic": "t"}}\n{line}\n')
    result = sqlstate("replay", "--records", str(records), "--database", str(tmp_path / "x.db"))
    assert result.exit_code == 2, result.output
    assert f"{records}, line 2: " in result.output
    assert message in result.output
    assert not (tmp_path / "x.db").exists()


def test_a_line_separator_inside_a_string_does_not_end_the_line(tmp_path: Path) -> None:
    # JSON text may hold U+2028 and U+0085 unescaped inside a string; JSON Lines ends a line at
    # "\n" only, and the line numbers after it stay right.
    records = tmp_path / "records.jsonl"
    records.write_text(
        '{"topic": "t", "key": "a", "value": "x\u2028y\u0085z"}\r\n{"topic": "t", "key": 5}\n',
        encoding="utf-8",
    )
    result = sqlstate("replay", "--records", str(records), "--database", str(tmp_path / "x.db"))
    assert result.exit_code == 2, result.output
    assert f"{records}, line 2: key: int is not a payload" in result.output


def test_records_a_processor_fails_on_are_set_apart_as_the_daemon_sets_them(
    tmp_path: Path,
) -> None:
    # json() fails in SQLite on a value that is not JSON: the record's fault, not the batch's.
    path = sql_file(tmp_path, "parsed", "INSERT INTO t VALUES (:topic, :partition, json(:value));")
    values = ["1", "oops", "2", "bad", "worse", "3"]
    db = run_processors(
        [path], [(f"k{n}", v) for n, v in enumerate(values)], on_processor_error="dead-letter"
    )
    with contextlib.closing(db):
        assert db.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,), (3,)]
        rejected = db.execute('SELECT "offset", processor FROM rejected_records ORDER BY 1')
        assert rejected.fetchall() == [(1, "parsed"), (3, "parsed"), (4, "parsed")]
    records = write_lines(
        tmp_path / "r.jsonl", [{"topic": "t", "key": "k", "value": v} for v in values]
    )
    args = ("replay", "--records", str(records), "--sql", path, "--on-processor-error")
    kept = sqlstate(*args, "dead-letter", "--database", str(tmp_path / "kept.db"))
    assert kept.exit_code == 0, kept.output
    assert "3 rejected by processors" in kept.output
    # Two rejected in a row (offsets 3 and 4) cross a limit of 1, as they stop the daemon.
    stopped = sqlstate(
        *args, "dead-letter", "--max-rejected-in-a-row", "1", "--database", str(tmp_path / "x.db")
    )
    assert stopped.exit_code == 11, stopped.output
    assert query(tmp_path / "x.db", "SELECT count(*) FROM rejected_records") == [(0,)]


def test_check_takes_the_registry_formats_and_needs_no_registry() -> None:
    result = sqlstate("check", "counts", "--key-format", "protobuf", "--value-format", "avro")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["ok counts: built-in"]
