"""``sqlstate wait`` and ``sqlstate.wait_for`` on a real SQLite file, with no broker: the specs,
the records accepted, what "applied" means, the timeout, and that a wait never blocks a writer.
The same against a running daemon: tests/acceptance/test_wait.py."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import RecordMetadata
from click.testing import CliRunner

import sqlstate
from sqlstate.cli.commands import main
from sqlstate.errors import ConfigError, DatabaseError
from sqlstate.state import migrate
from sqlstate.state.database import Database
from sqlstate.state.wait import NotAppliedInTime, PartitionWait, parse_timeout, parse_until
from tests.support.db import writing


async def state_file(path: Path, positions: dict[tuple[str, int], int]) -> Path:
    """A sqlstate file in WAL mode holding ``positions`` ({(topic, partition): next_offset})."""
    database = await Database.open(path, busy_timeout_s=1.0)
    try:
        await database.prepare_for_writing()
        await migrate.apply_pending(database)
    finally:
        await database.close()
    for (topic, partition), next_offset in positions.items():
        move(path, topic, partition, next_offset)
    return path


def move(path: Path, topic: str, partition: int, next_offset: int) -> None:
    """What a daemon's commit does to a position (as another connection)."""
    with writing(path) as conn:
        conn.execute(
            "INSERT INTO positions (topic, partition, next_offset, epoch, owner, updated_at)"
            " VALUES (?, ?, ?, 1, 'test', 'now') ON CONFLICT (topic, partition)"
            " DO UPDATE SET next_offset = excluded.next_offset",
            (topic, partition, next_offset),
        )


def metadata(topic: str, partition: int, offset: int) -> RecordMetadata:
    """What aiokafka's producer returns for a record."""
    return RecordMetadata(topic, partition, TopicPartition(topic, partition), offset, 0, 0, 0)


# ---- --until and --timeout ---------------------------------------------------------------------


def test_until_takes_entries_repeated_and_separated_by_commas() -> None:
    assert parse_until(["orders:0:41,orders:1:7", " my.topic-v2_x:12:0 "]) == [
        ("orders", 0, 41),
        ("orders", 1, 7),
        ("my.topic-v2_x", 12, 0),
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("orders:0", "not TOPIC:PARTITION:OFFSET"),
        ("orders", "not TOPIC:PARTITION:OFFSET"),
        ("orders:x:41", "the partition 'x' is not a whole number"),
        ("orders:0:-1", "the offset '-1' is not a whole number"),
        ("orders:0:4.5", "the offset '4.5' is not a whole number"),
        ("orders:0:", "the offset '' is not a whole number"),
        (":0:41", "'' is not a topic name"),
        ("a:b:0:41", "'a:b' is not a topic name"),
        ("ord/ers:0:41", "'ord/ers' is not a topic name"),
        ("", "give at least one TOPIC:PARTITION:OFFSET"),
        (",", "give at least one TOPIC:PARTITION:OFFSET"),
    ],
)
def test_a_bad_until_says_what_is_wrong(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_until([value])


def test_every_bad_entry_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_until(["orders:0:1,orders:x:1", "orders:0"])
    assert str(raised.value).count("--until") == 2


def test_timeout_is_a_duration() -> None:
    assert parse_timeout("500ms") == 0.5
    assert parse_timeout("5s") == 5.0
    for bad in ("5", "0s", "-1s", "5x", "1.5s"):
        with pytest.raises(ConfigError, match="--timeout"):
            parse_timeout(bad)


@pytest.mark.parametrize(
    "arguments",
    [
        ["--until", "orders:zero:41"],
        ["--until", "orders:0:41", "--timeout", "soon"],
        [],
    ],
)
def test_bad_flags_exit_2_before_opening_the_database(tmp_path: Path, arguments: list[str]) -> None:
    result = CliRunner().invoke(main, ["wait", "--database", str(tmp_path / "none.db"), *arguments])
    assert result.exit_code == 2, result.output
    assert "--until" in result.output or "--timeout" in result.output


# ---- the records waited for ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        metadata("t", 0, 4),
        ("t", 0, 4),
        [metadata("t", 0, 2), metadata("t", 0, 4), ("t", 1, 0)],
        (("t", 0, 4), ("t", 1, 0), ("t", 0, 1)),
    ],
)
async def test_records_are_metadata_or_tuples_and_the_highest_offset_counts(
    tmp_path: Path, written: object
) -> None:
    path = await state_file(tmp_path / "s.db", {("t", 0): 5, ("t", 1): 1})
    waits = await sqlstate.wait_for(path, written, timeout=1)  # type: ignore[arg-type]
    assert waits[0] == PartitionWait("t", 0, 4, 5)
    assert all(w.applied for w in waits)


@pytest.mark.parametrize(
    "written", [[], ("t", -1, 0), ("t", 0, True), (b"t", 0, 0), "t:0:1", [("t", 0)]]
)
async def test_a_record_that_names_no_place_is_refused(tmp_path: Path, written: object) -> None:
    path = await state_file(tmp_path / "s.db", {})
    with pytest.raises(ValueError, match=r"nothing to wait for|must be|is neither"):
        await sqlstate.wait_for(path, written, timeout=1)  # type: ignore[arg-type]


# ---- waiting ------------------------------------------------------------------------------------


async def test_a_record_is_applied_once_the_position_is_past_it(tmp_path: Path) -> None:
    path = await state_file(tmp_path / "s.db", {("t", 0): 5})
    waiting = asyncio.create_task(sqlstate.wait_for(path, [("t", 0, 5), ("t", 1, 0)], timeout=10))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # at 5, the record at 5 is not in yet; t:1 has no row
    move(path, "t", 0, 6)
    move(path, "t", 1, 1)
    committed = time.monotonic()
    waits = await asyncio.wait_for(waiting, 2)
    # Seen within one look of the commit (looks are at most 50 ms apart).
    assert time.monotonic() - committed < 0.5
    assert waits == [PartitionWait("t", 0, 5, 6), PartitionWait("t", 1, 0, 1)]


async def test_the_timeout_raises_with_where_each_partition_stands(tmp_path: Path) -> None:
    path = await state_file(tmp_path / "s.db", {("t", 0): 5})
    started = time.monotonic()
    with pytest.raises(NotAppliedInTime) as raised:
        await sqlstate.wait_for(path, [("t", 0, 5), ("t", 1, 0)], timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 1.5
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.exit_code == 124
    assert raised.value.waits == [PartitionWait("t", 0, 5, 5), PartitionWait("t", 1, 0, None)]
    assert "t:0 stands at 5, not past 5; t:1 has no position yet" in str(raised.value)


async def test_a_wait_never_needs_the_write_lock(tmp_path: Path) -> None:
    path = await state_file(tmp_path / "s.db", {("t", 0): 5})
    with writing(path, isolation_level=None) as writer:
        writer.execute("BEGIN IMMEDIATE")  # a daemon's batch, holding the write lock
        writer.execute("UPDATE positions SET next_offset = 9")
        waits = await sqlstate.wait_for(path, ("t", 0, 4), timeout=1)
        assert waits == [PartitionWait("t", 0, 4, 5)]  # the committed position, not the batch's
        writer.execute("COMMIT")


async def test_a_missing_database_is_an_error_at_once(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="no database"):
        await sqlstate.wait_for(tmp_path / "none.db", ("t", 0, 0), timeout=5)


async def test_a_file_not_yet_set_up_is_waited_for(tmp_path: Path) -> None:
    """A daemon starting on a new file creates it before it migrates it: a wait started in
    between waits, as for a partition without a position."""
    path = tmp_path / "s.db"
    with writing(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
    waiting = asyncio.create_task(sqlstate.wait_for(path, ("t", 0, 4), timeout=10))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await state_file(path, {("t", 0): 5})
    assert await waiting == [PartitionWait("t", 0, 4, 5)]


async def test_the_command_prints_the_positions_and_exits_124_on_timeout(tmp_path: Path) -> None:
    path = await state_file(tmp_path / "s.db", {("t", 0): 5})
    command = ["wait", "--database", str(path), "--json", "--until"]
    reached = await asyncio.to_thread(CliRunner().invoke, main, [*command, "t:0:4"])
    assert reached.exit_code == 0, reached.output
    assert json.loads(reached.stdout) == [
        {"topic": "t", "partition": 0, "offset": 4, "next_offset": 5, "applied": True}
    ]
    late = await asyncio.to_thread(
        CliRunner().invoke, main, [*command, "t:0:5", "--timeout", "200ms"]
    )
    assert late.exit_code == 124
    assert json.loads(late.stdout)[0]["applied"] is False
    assert "t:0 stands at 5, not past 5" in late.stderr


async def test_counts_json_rows_carry_the_positions_they_were_counted_at(tmp_path: Path) -> None:
    path = await state_file(tmp_path / "s.db", {("t", 0): 5, ("t", 1): 2, ("u", 0): 1})
    with writing(path) as conn:
        conn.executemany(
            "INSERT INTO key_counts (topic, partition, key, count) VALUES (?, ?, ?, ?)",
            [("t", 0, "a", 5), ("t", 1, "a", 2), ("u", 0, None, 1)],
        )
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["counts", "--database", str(path), "--json"]
    )
    assert result.exit_code == 0, result.output
    t_positions = [
        {"topic": "t", "partition": 0, "next_offset": 5},
        {"topic": "t", "partition": 1, "next_offset": 2},
    ]
    assert json.loads(result.stdout) == [
        {"topic": "t", "key": "a", "count": 7, "positions": t_positions},
        {
            "topic": "u",
            "key": None,
            "count": 1,
            "positions": [{"topic": "u", "partition": 0, "next_offset": 1}],
        },
    ]
