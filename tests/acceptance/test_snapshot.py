"""Snapshots of a live file: taken while a daemon counts steady traffic, each copy is exact as
of its positions, and a daemon started on a copy catches up from them to exactly the oracle.

Two ways to start on a copy, each proving something:

- in a new group, beside the daemon still running on the original: Kafka has no offsets for
  that group, so the positions it starts from can only come from the copy, and the two files
  then go their own ways;
- in the same group once the first daemon stopped, as a host replaced from its last backup:
  the group's offsets in Kafka stand past the copy's positions (``--commit-offsets-to-kafka``),
  and the daemon must start from the copy's, not from those.

Either way the oracle finds what starting anywhere else would leave: records counted twice
(from earlier) or never (from later).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, stored_positions, wait_for_positions, wait_for_progress
from tests.support.db import held_exclusively, writing
from tests.support.kafka import TopicFactory
from tests.support.oracle import assert_exactly_once
from tests.support.workload import end_offsets, keyed_messages, produce_keyed

MESSAGES = 36_000
RATE = 4_000  # records a second: about 9 s of traffic


async def start_snapshot(database: Path, dest: Path, *options: str) -> asyncio.subprocess.Process:
    """``sqlstate snapshot --json`` as a user runs it."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sqlstate",
        "snapshot",
        "--database",
        str(database),
        str(dest),
        "--json",
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def take_snapshot(database: Path, dest: Path, *options: str) -> dict[str, Any]:
    """``sqlstate snapshot --json`` run to its end; its summary."""
    process = await start_snapshot(database, dest, *options)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    [summary] = json.loads(out)
    return dict(summary)


def claimed_at(topic: str, positions: dict[int, int]) -> list[str]:
    """What the daemon's assignment line says for partitions claimed at ``positions``."""
    return [f"{topic}-{p}@{offset} (epoch" for p, offset in sorted(positions.items())]


async def test_snapshots_taken_while_the_daemon_writes_are_exact_and_catch_up(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=3)
    messages = keyed_messages(MESSAGES, partitions=3, seed=12)
    database = tmp_path / "state.db"
    first = Daemon(kafka_bootstrap, [topic], group_id, database, "--max-records", "300")
    daemons.append(first.start())
    # The traffic starts once the daemon holds its partitions: a slow start (a loaded machine)
    # must not eat the seconds in which the snapshots are to be taken mid-stream.
    await first.wait_for_log("assigned partitions: ")
    producing = asyncio.create_task(produce_keyed(kafka_bootstrap, topic, messages, rate=RATE))

    copies: list[tuple[Path, dict[int, int]]] = []
    for number in range(3):
        await wait_for_progress(database, 6_000 * (number + 1), timeout=60)
        dest = tmp_path / f"copy-{number}.db"
        before = stored_positions(database)
        summary = await take_snapshot(database, dest)
        after = stored_positions(database)
        positions = {row["partition"]: row["next_offset"] for row in summary["positions"]}
        assert summary["quick_check"] == "ok"
        # Taken mid-stream: the daemon was committing around the copy, and the copy is one of
        # its commits.
        assert sum(after.values()) > sum(before.values())
        for partition, offset in positions.items():
            assert before[(topic, partition)] <= offset <= after[(topic, partition)]
        copies.append((dest, positions))
    assert not producing.done(), "the traffic ended before the last snapshot"

    # Each copy holds exactly the records below its own positions (quick_check included).
    for dest, positions in copies:
        verdict = await assert_exactly_once(kafka_bootstrap, dest, topic)
        assert verdict.positions == positions
        assert 0 < verdict.read_back < MESSAGES

    # A new group on the second copy, beside the first daemon still counting.
    replica_copy, replica_from = copies[1]
    replica = Daemon(
        kafka_bootstrap, [topic], f"{group_id}-replica", replica_copy, name="replica"
    ).start()
    daemons.append(replica)
    await replica.wait_for_log("assigned partitions: ")
    for claim in claimed_at(topic, replica_from):
        assert claim in replica.current_log(), replica.current_log()[-3000:]

    await producing
    ends = await end_offsets(kafka_bootstrap, topic)
    await wait_for_positions(database, ends, 90, [first])
    assert await first.terminate() == 0

    # The same group on the third copy, once the first daemon stopped: a host replaced.
    replacement_copy, replacement_from = copies[2]
    replacement = Daemon(
        kafka_bootstrap, [topic], group_id, replacement_copy, name="replacement"
    ).start()
    daemons.append(replacement)
    await replacement.wait_for_log("assigned partitions: ")
    for claim in claimed_at(topic, replacement_from):
        assert claim in replacement.current_log(), replacement.current_log()[-3000:]

    for copy, daemon in ((replica_copy, replica), (replacement_copy, replacement)):
        await wait_for_positions(copy, ends, 90, [daemon])
        assert await daemon.terminate() == 0
    for file in (database, replica_copy, replacement_copy):
        verdict = await assert_exactly_once(kafka_bootstrap, file, topic)
        assert verdict.read_back == MESSAGES


def foreign_wal(database: Path, moved_by: int) -> bytes:
    """A real WAL for a copy of ``database``: its frames move every position by ``moved_by``.

    A WAL carries its own checksums and salts, nothing that ties it to one database file, so
    SQLite replays it into any file with the same pages that it finds it beside."""
    with writing(database, isolation_level=None) as conn:
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the frames stay in the WAL
        conn.execute("UPDATE positions SET next_offset = next_offset + ?", (moved_by,))
        return Path(f"{database}-wal").read_bytes()


@pytest.fixture
async def source(tmp_path: Path) -> Path:
    """A database made by ``sqlstate migrate``, with two partitions' positions."""
    database = tmp_path / "state.db"
    migrate = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sqlstate", "migrate", "--database", str(database)),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(migrate.communicate(), 60)
    assert migrate.returncode == 0, err.decode()
    with writing(database) as conn:
        conn.executemany(
            "INSERT INTO positions (topic, partition, next_offset, epoch, owner, log_end_offset,"
            " updated_at) VALUES ('t', ?, ?, 1, 'daemon', NULL, '')",
            [(0, 500), (1, 700)],
        )
    return database


async def test_a_wal_planted_beside_dest_during_the_copy_never_reaches_the_snapshot(
    source: Path, tmp_path: Path
) -> None:
    """DEST-wal planted while the command waits for the source (after its first look at DEST):
    without --force it is refused (exit 2, no DEST); with --force it is removed, and the copy
    holds the source's positions, not the planted ones."""
    positions = stored_positions(source)
    older = tmp_path / "older.db"
    await take_snapshot(source, older)
    planted = foreign_wal(older, moved_by=1_000)
    dest = tmp_path / "copy.db"
    wal = tmp_path / "copy.db-wal"

    code, _out, err = await snapshot_planting(source, dest, wal, planted)
    assert code == 2, err
    assert "copy.db-wal exists (it appeared while the copy was made)" in err
    assert not dest.exists()
    assert wal.read_bytes() == planted  # not ours to remove without --force

    code, out, err = await snapshot_planting(source, dest, wal, planted, "--force")
    assert code == 0, err
    [summary] = json.loads(out)
    assert {row["partition"]: row["next_offset"] for row in summary["positions"]} == {
        partition: offset for (_topic, partition), offset in positions.items()
    }
    assert not wal.exists()
    assert stored_positions(dest) == positions  # and no planted WAL replayed into it
    assert dest.stat().st_mode & 0o777 == 0o600  # it holds record payloads


async def test_a_dest_that_appears_during_the_copy_is_replaced_only_with_force(
    source: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "copy.db"
    code, _out, err = await snapshot_planting(source, dest, dest, b"another copy")
    assert code == 2, err
    assert "copy.db exists (it appeared while the copy was made)" in err
    assert dest.read_bytes() == b"another copy"

    code, _out, err = await snapshot_planting(source, dest, dest, b"another copy", "--force")
    assert code == 0, err
    assert stored_positions(dest) == stored_positions(source)


async def snapshot_planting(
    database: Path, dest: Path, planted: Path, content: bytes, *options: str
) -> tuple[int, str, str]:
    """The snapshot command, with ``planted`` written after its first look at DEST.

    The source is held in an exclusive lock meanwhile: the command has looked at DEST and made
    its temporary file beside it, then waits (busy timeout) for the source."""
    with held_exclusively(database):
        process = await start_snapshot(database, dest, *options)
        async with asyncio.timeout(30):
            while True:
                if await asyncio.to_thread(temporary_copies, dest):
                    break
                await asyncio.sleep(0.01)
        await asyncio.to_thread(planted.write_bytes, content)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert not temporary_copies(dest), "the temporary copy was left"
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def temporary_copies(dest: Path) -> list[Path]:
    """The command's temporary copies beside DEST (``.DEST.XXXX.snapshot`` and side files)."""
    return list(dest.parent.glob(f".{dest.name}.*.snapshot*"))
