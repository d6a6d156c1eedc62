"""The snapshot checker of the multi-host tests: it sees a half batch in a committed snapshot,
and nothing in whole ones."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sqlstate.state import migrate
from tests.support.db import writing
from tests.support.snapshot_check import SnapshotChecker


def _migrated(path: Path) -> None:
    with writing(path, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        for migration in migrate.available():
            conn.executescript(migration.script)


def _commit(path: Path, partition: int, rows: dict[str, int], next_offset: int | None) -> None:
    with writing(path) as conn:
        conn.executemany(
            "INSERT INTO key_counts (topic, partition, key, count) VALUES ('t', ?, ?, ?)"
            " ON CONFLICT DO UPDATE SET count = count + excluded.count",
            [(partition, key, count) for key, count in rows.items()],
        )
        if next_offset is not None:
            conn.execute(
                "INSERT INTO positions (topic, partition, next_offset, epoch, owner, updated_at)"
                " VALUES ('t', ?, ?, 0, 'test', 'now') ON CONFLICT DO UPDATE"
                " SET next_offset = excluded.next_offset",
                (partition, next_offset),
            )


async def _checked(checker: SnapshotChecker, snapshots: int) -> None:
    deadline = time.monotonic() + 10
    start = checker.checked
    while checker.checked < start + snapshots:
        assert time.monotonic() < deadline, "the checker read nothing"
        await asyncio.sleep(0.01)


async def test_whole_batches_pass_and_a_half_batch_is_reported(tmp_path: Path) -> None:
    database = tmp_path / "host.db"
    missing = tmp_path / "not-yet.db"
    _migrated(database)
    async with SnapshotChecker([database, missing], ["t"], interval_s=0.01) as checker:
        _commit(database, 0, {"a": 2, "b": 1}, 3)
        _commit(database, 1, {"a": 4}, 4)
        await _checked(checker, 3)
        assert checker.violations == []
        # Batch K+1's rows with batch K's position, then rows of a partition with no position.
        _commit(database, 0, {"c": 5}, None)
        _commit(database, 2, {"a": 1}, None)
        await _checked(checker, 3)
    assert not missing.exists()
    assert "host.db: t-0 shows 8 counted records with next_offset 3" in checker.violations
    assert "host.db: t-2 shows 1 counted records with no position" in checker.violations
    assert checker.errors == []
