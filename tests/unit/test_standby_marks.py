"""--standby N's marks in the file: a partition no longer kept says so in progress.role, one
claimed meanwhile is never marked, and one followed again says so at once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aiokafka import TopicPartition

from sqlstate.changelog.standby import mark_followed, mark_unfollowed
from sqlstate.state import migrate

A = TopicPartition("orders", 0)
B = TopicPartition("orders", 1)


def roles(conn: sqlite3.Connection) -> dict[int, str]:
    return dict(conn.execute("SELECT partition, role FROM progress ORDER BY partition"))


def test_marks_say_which_partitions_the_file_keeps(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    for migration in migrate.available():
        conn.executescript(migration.script)
    for tp, owner in ((A, "me@host:1"), (B, "standby")):
        conn.execute(
            "INSERT INTO positions (topic, partition, next_offset, epoch, owner, updated_at)"
            " VALUES (?, ?, 10, 1, ?, '2026-01-01T00:00:00Z')",
            (tp.topic, tp.partition, owner),
        )
        conn.execute(
            "INSERT INTO changelog_offsets (topic, partition, next_offset) VALUES (?, ?, 5)",
            (tp.topic, tp.partition),
        )
    assert roles(conn) == {0: "owns", 1: "follows"}
    # A claimed here by the time the mark runs (the claim paused it first): left as it is.
    mark_unfollowed(conn, [A, B], kept=lambda tp: tp == A)
    assert roles(conn) == {0: "owns", 1: "unfollowed"}
    mark_followed(conn, [A, B])  # only a partition marked unfollowed changes
    assert roles(conn) == {0: "owns", 1: "follows"}
    conn.close()
