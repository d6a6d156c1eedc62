"""The multi-host soak's own checks, without Kafka: the model of its second-UNIQUE-index processor
against the processor itself, the snapshot checker against a half batch written behind the
daemon's back, and a clear refusal where network namespaces cannot be made."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from sqlstate.processors.base import Record
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.sql_file import SqlFileProcessor
from tests.soak import soak
from tests.soak.slots import SQL_FILE, SlotHolders
from tests.support import netns
from tests.support.db import connect_read_only, writing
from tests.support.processing import fold, record
from tests.support.snapshot_check import SnapshotChecker
from tests.support.workload import STEADY_KEYS


def steady_records(count: int, partitions: int = 2) -> list[Record]:
    """Records of the soak's keys (odd ones included), offsets contiguous from 0 per partition."""
    rng = random.Random(7)
    return [
        record(TopicPartition("t", i % partitions), i // partitions, rng.choice(STEADY_KEYS[:30]))
        for i in range(count)
    ]


async def test_slot_holders_model_matches_its_processor(tmp_path: Path) -> None:
    records = steady_records(900)
    path = tmp_path / "s.db"
    batches = [records[start : start + 64] for start in range(0, len(records), 64)]
    await fold(path, [SqlFileProcessor.load(SQL_FILE)], batches)
    model = SlotHolders()
    conn = connect_read_only(path)
    try:
        stored = model.stored(conn, "t")
    finally:
        conn.close()
    # Every slot of both partitions held, each by one key: the REPLACEs evicted the rest.
    assert len(stored) == 2 * 5
    assert stored == model.expected(records)
    with writing(path) as writer:
        writer.execute("DELETE FROM slot_holders WHERE slot = 0 AND partition = 0")
    conn = connect_read_only(path)
    try:
        assert model.expected(records) - model.stored(conn, "t") != Counter()
    finally:
        conn.close()


async def wait_for_checks(checker: SnapshotChecker, count: int, timeout: float = 20.0) -> None:
    target = checker.checked + count
    deadline = time.monotonic() + timeout
    while checker.checked < target:
        assert time.monotonic() < deadline, f"{checker.checked} snapshots checked, not {target}"
        await asyncio.sleep(0.02)


async def test_snapshot_checker_sees_a_half_batch(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    records = steady_records(300)
    await fold(path, [KeyCounter()], [records[:100], records[100:]])
    missing = tmp_path / "not-yet.db"  # a host whose file does not exist yet is skipped
    async with SnapshotChecker([path, missing], ["t"], interval_s=0.01) as checker:
        await wait_for_checks(checker, 5)
        assert checker.violations == []
        # A count without its position, as a changelog transaction applied in part would leave.
        with writing(path) as writer:
            writer.execute(
                "UPDATE key_counts SET count = count + 1 WHERE rowid ="
                " (SELECT min(rowid) FROM key_counts WHERE partition = 1)"
            )
        await wait_for_checks(checker, 5)
    # Once, however often it was read; the file, the partition and both figures in the line.
    assert len(checker.violations) == 1
    assert all(part in checker.violations[0] for part in ("s.db", "t-1", "151", "150"))


async def test_snapshot_checker_ignores_other_topics(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await fold(path, [KeyCounter()], [steady_records(50)])
    with writing(path) as writer:
        writer.execute("UPDATE key_counts SET count = count + 1")
    async with SnapshotChecker([path], ["other"], interval_s=0.01) as checker:
        await wait_for_checks(checker, 3)
    assert checker.violations == []


def test_network_partitions_refused_clearly_without_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(netns.NetnsUnavailable, match="need root"):
        netns.require()
    code = soak.main(["--hosts", "3", "--duration", "1", "--workdir", str(tmp_path)])
    assert code == 2
    error = capsys.readouterr().err
    assert "network partitions need root" in error
    assert "--no-netns" in error


def test_network_partitions_refused_clearly_without_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(netns.NetnsUnavailable, match="iproute2"):
        netns.require()


def test_namespaces_are_the_multi_host_default() -> None:
    assert soak.parse(["--hosts", "3"]).netns is True
    assert soak.parse(["--hosts", "3", "--no-netns"]).netns is False
    assert soak.parse([]).netns is False
    with pytest.raises(SystemExit):
        soak.parse(["--netns"])  # partitions cut a host off: there must be hosts


async def test_a_file_without_the_schema_yet_is_not_counted(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # created, not migrated yet
    async with SnapshotChecker([empty, tmp_path / "absent.db"], ["t"], 0.01) as checker:
        await asyncio.sleep(0.3)  # some 30 rounds
    assert checker.checked == 0
    assert checker.violations == []
