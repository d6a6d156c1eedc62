"""``sqlstate verify`` without Kafka: how two copies of a table are compared, which offsets of each
partition can be recomputed, and how the findings become one exit code. (Against the broker, with
a daemon's file: tests/acceptance/test_verify.py.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from click.testing import CliRunner

from sqlstate.app.recompute import Span
from sqlstate.app.state_diff import Difference, TableDiff, compare
from sqlstate.app.verdict import EXIT_DIFFERENT, EXIT_NOT_FULLY_CHECKED, PartitionCheck, Verdict
from sqlstate.app.verify import _checkable, _FileState, _plan, _with_recorded
from sqlstate.cli import verify_report
from sqlstate.cli.commands import main
from sqlstate.settings import Settings
from sqlstate.state import table_rows
from sqlstate.state.model import Position
from sqlstate.state.table_rows import TableShape

KEY_COUNTS = TableShape(
    "key_counts", ("topic", "partition", "key", "count"), ("topic", "partition", "key")
)


def test_keyed_rows_are_missing_extra_or_different_per_partition() -> None:
    in_file = [("t", 0, "a", 3), ("t", 0, "b", 1), ("t", 1, "a", 2), ("t", 1, b"\xff", 5)]
    recomputed = [("t", 0, "a", 3), ("t", 0, "c", 1), ("t", 1, "a", 4), ("t", 1, b"\xff", 5)]
    other_topic = [("u", 0, "z", 9)]
    diffs = compare(KEY_COUNTS, in_file + other_topic, recomputed, [("t", 0), ("t", 1)], {"t"}, 10)

    assert list(diffs) == [("t", 0), ("t", 1)]
    first = diffs[("t", 0)]
    assert (first.missing, first.extra, first.different) == (1, 1, 0)
    assert [(d.kind, d.key, d.file, d.recomputed) for d in first.samples] == [
        ("extra", {"key": "b"}, {"count": 1}, None),
        ("missing", {"key": "c"}, None, {"count": 1}),
    ]
    [changed] = diffs[("t", 1)].samples
    assert (changed.kind, changed.key, changed.file, changed.recomputed) == (
        "different",
        {"key": "a"},
        {"count": 2},
        {"count": 4},
    )


def test_identical_partitions_and_other_topics_are_not_reported() -> None:
    rows = [("t", 0, None, 3), ("t", 0, "a", 1)]
    assert compare(KEY_COUNTS, rows, list(rows), [("t", 0), ("t", 1)], {"t"}, 10) == {}


def test_an_integer_and_the_same_real_number_are_different_values() -> None:
    # SQLite keeps 5 (INTEGER) and 5.0 (REAL) apart (typeof, and how every client reads them).
    rows = [("t", 0, "a", 5), ("t", 0, 1, 1)]
    as_real = [("t", 0, "a", 5.0), ("t", 0, 1.0, 1)]
    diffs = compare(KEY_COUNTS, as_real, rows, [("t", 0)], {"t"}, 10)
    diff = diffs[("t", 0)]
    assert (diff.missing, diff.extra, diff.different) == (1, 1, 1)
    loose = TableShape("totals", ("customer", "total"), ())
    [(_, whole)] = compare(loose, [("a", 1.0)], [("a", 1)], [], {"t"}, 10).items()
    assert (whole.missing, whole.extra) == (1, 1)
    assert [d.key for d in whole.samples] == [
        {"customer": "a", "total": 1},
        {"customer": "a", "total": 1.0},
    ]


def test_a_table_without_a_key_is_compared_as_rows_and_samples_are_bounded() -> None:
    table = TableShape("totals", ("customer", "total"), ())
    in_file = [("a", 1), ("a", 1), ("b", 2)] + [(f"x{n}", n) for n in range(5)]
    recomputed = [("a", 1), ("b", 3)]
    [(group, diff)] = compare(table, in_file, recomputed, [("t", 0)], {"t"}, 3).items()

    assert group is None
    assert (diff.missing, diff.extra, diff.different) == (1, 7, 0)
    assert len(diff.samples) == 3


def test_a_partitions_state_is_read_from_its_first_offset_up_to_its_position() -> None:
    stored = {0: 100, 1: 100, 2: 50, 3: 130, 4: 10}
    state = _FileState(
        positions=[Position("t", p, offset, 1, "o", None, "now") for p, offset in stored.items()],
        isolation_level="read_committed",
        processors={"t": ["counts"]},
        topic_ids={"t": "id-1"},
        rows={},
    )
    firsts = {
        TopicPartition("t", p): first for p, first in {0: 0, 1: 40, 2: 0, 3: 0, 4: 20}.items()
    }
    ends = {TopicPartition("t", p): 120 for p in stored}
    checks, spans = _plan(state, {"t": "id-1"}, firsts, ends)

    by_partition = {c.partition: c for c in checks}
    assert spans == {
        TopicPartition("t", 0): Span(0, 100),
        TopicPartition("t", 1): Span(40, 100),
        TopicPartition("t", 2): Span(0, 50),
        TopicPartition("t", 3): Span(0, 120),
    }
    assert by_partition[0].unchecked is None
    assert "offsets 0-39 were deleted" in str(by_partition[1].unchecked)
    assert "past the log's end 120" in by_partition[3].problems[0]
    assert "below the log's first offset 20" in str(by_partition[4].unchecked)

    checks, spans = _plan(state, {"t": "id-2"}, firsts, ends)
    assert spans == {}
    assert all("deleted and created again" in str(c.unchecked) for c in checks)


def test_a_partition_that_took_no_record_is_checked_whatever_kafka_deleted() -> None:
    # Started (--start-from latest) at 500 and given nothing since; the log now starts at 600.
    # Its state is empty by its position: any row the file holds of it is extra, certainly.
    idle = Position("t", 0, 500, 1, "o", None, "now", start_from="latest", start_offset=500)
    state = _FileState([idle], "read_committed", {"t": ["counts"]}, {"t": None}, {})
    tp = TopicPartition("t", 0)
    [planned], spans = _plan(state, {"t": None}, {tp: 600}, {tp: 700})
    assert (spans, planned.unchecked) == ({}, None)


def test_a_partition_kafka_no_longer_has_is_not_checked() -> None:
    # A topic created again with fewer partitions, on a file that recorded no topic ID: Kafka
    # gives no offsets for the partition that is gone.
    state = _FileState(
        positions=[Position("t", p, 10, 1, "o", None, "now") for p in (0, 1)],
        isolation_level="read_committed",
        processors={"t": ["counts"]},
        topic_ids={"t": None},
        rows={},
    )
    there = {TopicPartition("t", 0): 0}
    checks, spans = _plan(state, {"t": "id-2"}, there, {TopicPartition("t", 0): 10})
    assert spans == {TopicPartition("t", 0): Span(0, 10)}
    assert "no partition 1 of the topic now" in str(checks[1].unchecked)
    assert (checks[1].first_offset, checks[1].end_offset) == (None, None)


def test_the_report_says_a_partition_was_read_from_its_recorded_start() -> None:
    # --start-from latest put the partition at 500: what was read is 500-599, not 0-599.
    started = Position("t", 0, 600, 1, "o", None, "now", start_from="latest", start_offset=500)
    state = _FileState([started], "read_committed", {"t": ["counts"]}, {"t": None}, {})
    [planned], spans = _plan(
        state, {"t": None}, {TopicPartition("t", 0): 0}, {TopicPartition("t", 0): 600}
    )
    assert spans == {TopicPartition("t", 0): Span(500, 600)}
    planned.reached, planned.records = 600, 100
    text = verify_report.as_text(verdict(planned))
    assert "t-0  position 600  read 500-599 (100 records)  identical" in text


def verdict(*partitions: PartitionCheck, tables: list[TableDiff] | None = None) -> Verdict:
    return Verdict(
        Path("f.db"), "read_committed", ["counts"], list(partitions), tables or [], False
    )


def check(partition: int, unchecked: str | None = None, *diffs: TableDiff) -> PartitionCheck:
    return PartitionCheck(
        "t", partition, 10, 0, 10, 10, 10, unchecked, tables=list(diffs), read_from=0
    )


def test_the_exit_code_says_identical_different_or_not_fully_checked() -> None:
    differs = TableDiff("key_counts", different=1)
    maybe = TableDiff("key_counts", different=1, certain=False)
    assert verdict(check(0), check(1)).exit_code == 0
    # Rows equal to those of the records Kafka still has: the deleted ones may be missing.
    assert verdict(check(0), check(1, "deleted")).exit_code == EXIT_NOT_FULLY_CHECKED
    assert verdict(check(0, None, differs)).exit_code == EXIT_DIFFERENT
    assert verdict(check(0, "deleted", maybe)).exit_code == EXIT_NOT_FULLY_CHECKED
    # A latest row of a record Kafka still has differs: certain, whatever was deleted.
    assert verdict(check(0, "deleted", maybe, differs)).exit_code == EXIT_DIFFERENT
    assert verdict(check(0, None, differs), check(1, "deleted", maybe)).exit_code == (
        EXIT_DIFFERENT
    )
    assert verdict(check(0), tables=[differs]).exit_code == EXIT_DIFFERENT
    assert verdict(check(0, "deleted"), tables=[maybe]).exit_code == EXIT_NOT_FULLY_CHECKED
    accepted = verdict(check(0, "deleted", maybe))
    accepted.allow_unchecked = True
    assert (accepted.status, accepted.exit_code) == ("not fully checked", 0)
    moved = check(0)
    moved.problems.append("position past the log's end")
    assert verdict(moved).exit_code == EXIT_DIFFERENT


def test_a_tables_rows_are_read_keyed_by_its_processors_key_or_its_primary_key(
    tmp_path: Path,
) -> None:
    conn = sqlite3.connect(tmp_path / "f.db")
    try:
        conn.executescript(
            """
            CREATE TABLE amounts (topic TEXT, partition INTEGER, customer TEXT, cents INTEGER,
                                  PRIMARY KEY (topic, partition, customer));
            CREATE TABLE loose ("odd ""name"" col" TEXT, n INTEGER);
            INSERT INTO amounts VALUES ('t', 0, 'a', 5);
            INSERT INTO loose VALUES ('x', 1);
            """
        )
        amounts = table_rows.shape(conn, "amounts", None)
        loose = table_rows.shape(conn, "loose", None)
        declared = table_rows.shape(conn, "loose", ["n"])
        gone = TableShape("gone", ("a",), ())

        assert amounts.key == ("topic", "partition", "customer")
        assert (loose.columns, loose.key, declared.key) == (('odd "name" col', "n"), (), ("n",))
        assert table_rows.read_tables(conn, [amounts, loose, gone]) == {
            "amounts": [("t", 0, "a", 5)],
            "loose": [("x", 1)],
            "gone": None,
        }
    finally:
        conn.close()


def test_a_table_that_cannot_be_read_is_an_error_not_a_missing_table(tmp_path: Path) -> None:
    # A lock or an I/O error while reading a table must not pass for "the file has no such
    # table": every recomputed row would then be reported missing from a correct file.
    conn = sqlite3.connect(tmp_path / "f.db")
    try:
        conn.execute("CREATE TABLE amounts (topic TEXT, n INTEGER)")
        conn.execute("INSERT INTO amounts VALUES ('t', 1)")
        conn.commit()
        amounts = table_rows.shape(conn, "amounts", None)
        conn.set_progress_handler(lambda: 1, 1)  # every statement is interrupted
        with pytest.raises(sqlite3.OperationalError, match="interrupted"):
            table_rows.read_rows(conn, amounts)
        conn.set_progress_handler(None, 1)
        assert table_rows.read_rows(conn, TableShape("amounts", ("topic", "gone"), ())) is None
    finally:
        conn.close()


def test_verify_refuses_a_topic_the_file_has_no_position_for(tmp_path: Path) -> None:
    database = tmp_path / "empty.db"
    assert CliRunner().invoke(main, ["migrate", "--database", str(database)]).exit_code == 0
    result = CliRunner().invoke(main, ["verify", "--database", str(database), "--topic", "orders"])
    assert result.exit_code == 2
    assert "holds no position of topic orders" in result.output


def test_rows_of_deleted_records_are_left_out_of_a_table_of_records() -> None:
    latest = TableShape(
        "latest",
        ("topic", "key", "value", "partition", "offset", "timestamp"),
        ("topic", "partition", "key"),
    )
    rows = [("t", "a", "1", 0, 5, 0), ("t", "b", "2", 0, 50, 0), ("t", "c", "3", 1, 5, 0)]
    partial = check(0)
    partial.unchecked, partial.checked_from = "deleted", 40
    assert _checkable(latest, rows, [partial, check(1)]) == rows[1:]
    assert _checkable(KEY_COUNTS, [("t", 0, "a", 1)], [partial]) == [("t", 0, "a", 1)]


def test_without_processor_flags_verify_takes_the_built_ins_the_file_records() -> None:
    settings = Settings(topics=("t",), group_id="g")
    recorded = _FileState([], "read_uncommitted", {"t": ["latest", "counts"]}, {}, {})
    taken = _with_recorded(settings, recorded)
    assert (taken.processors, taken.isolation_level) == (("counts", "latest"), "read_uncommitted")
    own = _FileState([], "read_committed", {"t": ["order-totals"]}, {}, {})
    assert _with_recorded(settings, own).processor_specs == ("counts",)


def test_the_report_names_the_partition_the_table_and_both_values() -> None:
    differs = TableDiff("key_counts", different=2)
    differs.samples.append(Difference("different", {"key": b"\xff"}, {"count": 3}, {"count": 2}))
    maybe = TableDiff("key_counts", missing=1, certain=False)
    text = verify_report.as_text(
        verdict(check(0, None, differs), check(1, "offsets 0-9 were deleted", maybe))
    )
    assert "t-0  position 10  read 0-9 (10 records)  DIFFERENT" in text
    assert "different  key=x'ff'  file: count=3  recomputed: count=2" in text
    assert "... and 1 more" in text
    assert "key_counts: 1 missing, 0 extra, 0 different (may come from the deleted records)" in text
    assert text.endswith("result: different (exit 9)")
    [document] = [verify_report.as_document(verdict(check(0, None, differs)))]
    assert document["partitions"][0]["tables"][0]["samples"][0]["key"] == {"key": {"hex": "ff"}}
