"""The marks in the file: under --standby N, a partition no longer kept says so in
progress.role, one claimed meanwhile is never marked, and one followed again says so at once;
under --standby none, a partition let go, or left by a process that exited, says so too, and
one another process on the file claimed since keeps its own."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from aiokafka import TopicPartition

from sqlstate.changelog.standby import (
    mark_departed,
    mark_followed,
    mark_released,
    mark_unfollowed,
)
from sqlstate.settings import owner_gone
from sqlstate.state import migrate

A = TopicPartition("orders", 0)
B = TopicPartition("orders", 1)


def roles(conn: sqlite3.Connection) -> dict[int, str]:
    return dict(conn.execute("SELECT partition, role FROM progress ORDER BY partition"))


def file_with(path: Path, owners: dict[TopicPartition, str]) -> sqlite3.Connection:
    """A migrated file whose positions rows have these owners."""
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in migrate.available():
        conn.executescript(migration.script)
    for tp, owner in owners.items():
        conn.execute(
            "INSERT INTO positions (topic, partition, next_offset, epoch, owner, updated_at)"
            " VALUES (?, ?, 10, 1, ?, '2026-01-01T00:00:00Z')",
            (tp.topic, tp.partition, owner),
        )
        conn.execute(
            "INSERT INTO changelog_offsets (topic, partition, next_offset) VALUES (?, ?, 5)",
            (tp.topic, tp.partition),
        )
    return conn


def exited_pid() -> int:
    """The pid of a process of this host that has exited."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(child.stdout)


def test_marks_say_which_partitions_the_file_keeps(tmp_path: Path) -> None:
    conn = file_with(tmp_path / "state.db", {A: "me@host:1", B: "standby"})
    assert roles(conn) == {0: "owns", 1: "follows"}
    # A claimed here by the time the mark runs (the claim paused it first): left as it is.
    mark_unfollowed(conn, [A, B], kept=lambda tp: tp == A)
    assert roles(conn) == {0: "owns", 1: "unfollowed"}
    mark_followed(conn, [A, B])  # only a partition marked unfollowed changes
    assert roles(conn) == {0: "owns", 1: "follows"}
    conn.close()


C, D, E, F = (TopicPartition("orders", p) for p in range(2, 6))


def test_without_standbys_a_partition_let_go_says_so(tmp_path: Path) -> None:
    me = "me@host:1"
    # B was claimed since by another process on the file; C's restore here was cut short (a
    # followed row).
    conn = file_with(tmp_path / "state.db", {A: me, B: "sibling@host:2", C: "standby"})
    # A is claimed again here meanwhile: left to its claim.
    mark_released(conn, [A, B, C], owner=me, claiming={A})
    assert roles(conn) == {0: "owns", 1: "owns", 2: "unfollowed"}
    mark_released(conn, [A, B], owner=me, claiming=set())
    assert roles(conn) == {0: "unfollowed", 1: "owns", 2: "unfollowed"}
    conn.close()


def test_without_standbys_what_nothing_applies_says_so_at_start(tmp_path: Path) -> None:
    host = socket.gethostname()
    me = f"me@{host}:{os.getpid()}"  # as after a start under the same host name and pid
    sibling = f"sibling@{host}:{os.getppid()}"
    exited = f"earlier@{host}:{exited_pid()}"
    elsewhere = f"earlier@not-{host}:{exited_pid()}"
    conn = file_with(
        tmp_path / "state.db",
        {A: sibling, B: exited, C: elsewhere, D: "standby", E: me, F: me},
    )
    # F is being claimed here already.
    assert mark_departed(conn, owner=me, claiming={F}) == [B, D, E]
    assert roles(conn) == {
        0: "owns",
        1: "unfollowed",
        2: "owns",
        3: "unfollowed",
        4: "unfollowed",
        5: "owns",
    }
    conn.close()


def test_only_an_exited_process_of_this_host_is_gone() -> None:
    host = socket.gethostname()
    assert not owner_gone(f"me@{host}:{os.getpid()}")
    assert owner_gone(f"me@{host}:{exited_pid()}")
    assert owner_gone(f"a@b@{host}:{exited_pid()}")  # a client id with @ in it
    assert not owner_gone(f"me@not-{host}:{exited_pid()}")
    for text in ("standby", "unfollowed", f"me@{host}:0", f"me@{host}:-1", f"me@{host}:x", ""):
        assert not owner_gone(text)
