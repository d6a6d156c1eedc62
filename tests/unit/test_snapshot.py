"""``sqlstate snapshot``: the copy of a quiet file, of a file written to during the copy, and
every refusal, each leaving DEST as it was and nothing of the copy behind."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sqlstate.cli.commands import main
from sqlstate.errors import ConfigError, DatabaseBusyError, DatabaseError
from sqlstate.state import migrate, snapshot
from sqlstate.state.database import Database
from tests.support.db import corrupt_file, held_exclusively, query, writing

KEYS = 20_000


async def sqlstate_file(path: Path) -> Path:
    """A migrated database with two partitions' positions and ``KEYS`` counted keys."""
    database = await Database.open(path, busy_timeout_s=1)
    try:
        await migrate.apply_pending(database)
    finally:
        await database.close()
    with writing(path) as conn:
        conn.executemany(
            "INSERT INTO positions (topic, partition, next_offset, epoch, owner, log_end_offset,"
            " updated_at) VALUES ('t', ?, ?, 3, 'daemon', NULL, '')",
            [(0, KEYS), (1, 7)],
        )
        conn.executemany(
            "INSERT INTO key_counts (topic, partition, key, count) VALUES ('t', 0, ?, ?)",
            ((f"key-{i}", i % 7 + 1) for i in range(KEYS)),
        )
    return path


def rows(path: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    return (
        query(path, "SELECT * FROM positions ORDER BY topic, partition"),
        query(path, "SELECT * FROM key_counts ORDER BY topic, partition, key"),
    )


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
async def source(tmp_path: Path) -> Path:
    (tmp_path / "live").mkdir()
    return await sqlstate_file(tmp_path / "live" / "state.db")


async def test_a_quiet_file_is_copied_whole_in_wal_mode(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "copy.db"
    taken = await snapshot.take(source, dest, pages_per_step=16)

    # One file, renamed into place: no WAL beside it, no temporary file left. (A read-only
    # connection, as below, leaves its -wal and -shm behind: it may not delete them.)
    assert files(tmp_path) == {"live", "copy.db"}
    assert rows(dest) == rows(source)
    assert query(dest, "PRAGMA journal_mode") == [("wal",)]
    assert query(dest, "PRAGMA quick_check") == [("ok",)]
    assert taken.size_bytes == dest.stat().st_size
    assert [(p.topic, p.partition, p.next_offset) for p in taken.positions] == [
        ("t", 0, KEYS),
        ("t", 1, 7),
    ]
    assert taken.steps == math.ceil(taken.pages / 16) > 1


# Another process that commits as fast as it can until its stdin closes. Each transaction adds
# one key to partition 1 and moves partition 1's position by one, as a batch of a daemon would.
WRITER = textwrap.dedent(
    """
    import select, sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
    commits = 0
    while not select.select([sys.stdin], [], [], 0)[0]:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO key_counts (topic, partition, key, count) VALUES ('t', 1, ?, 1)",
            (f"new-{commits}",),
        )
        conn.execute("UPDATE positions SET next_offset = next_offset + 1 WHERE partition = 1")
        conn.execute("COMMIT")
        commits += 1
        if commits == 10:
            print("writing", flush=True)
    """
)


def position(path: Path) -> int:
    return int(query(path, "SELECT next_offset FROM positions WHERE partition = 1")[0][0])


async def test_the_copy_is_one_commit_while_another_process_writes(
    source: Path, tmp_path: Path
) -> None:
    """The copy, taken one page per step while another process commits, holds as many new
    keys as its position says (one commit, whole), and the backup never started over: one
    step per page. Without the read transaction held across the steps, it starts over at
    each commit it notices."""
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER,
        str(source),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert writer.stdin is not None
    assert writer.stdout is not None
    try:
        assert await asyncio.wait_for(writer.stdout.readline(), 30) == b"writing\n"
        before = position(source)
        taken = await asyncio.wait_for(
            snapshot.take(source, tmp_path / "copy.db", pages_per_step=1), 60
        )
        after = position(source)
    finally:
        writer.stdin.close()
        assert await asyncio.wait_for(writer.wait(), 30) == 0

    copied = position(tmp_path / "copy.db")
    new_keys = query(tmp_path / "copy.db", "SELECT count(*) FROM key_counts WHERE partition = 1")
    assert new_keys == [(copied - 7,)]
    assert before <= copied < after, "the writer committed nothing while the copy ran"
    assert taken.steps == taken.pages


async def test_an_existing_destination_is_refused_unless_forced(
    source: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "copy.db"
    dest.write_bytes(b"an older copy")
    with pytest.raises(ConfigError, match="exists: give another name, or --force"):
        await snapshot.take(source, dest)
    assert dest.read_bytes() == b"an older copy"
    assert files(tmp_path) == {"live", "copy.db"}

    await snapshot.take(source, dest, force=True)
    assert rows(dest) == rows(source)


async def test_a_wal_left_without_its_file_is_an_existing_destination(
    source: Path, tmp_path: Path
) -> None:
    """Renamed in beside a WAL that is not its own, the copy would have it replayed into it."""
    dest = tmp_path / "copy.db"
    stale = tmp_path / "copy.db-wal"
    stale.write_bytes(b"frames of another database")
    with pytest.raises(ConfigError, match=r"copy\.db-wal exists"):
        await snapshot.take(source, dest)

    await snapshot.take(source, dest, force=True)
    assert not stale.exists()
    assert rows(dest) == rows(source)


@pytest.mark.parametrize("planted", ["copy.db", "copy.db-wal", "copy.db-journal"])
async def test_a_destination_that_appears_during_the_copy_is_refused_unless_forced(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    """Checked when the command starts, DEST may still appear while the copy is made: it is
    looked at again right before the rename, never replaced nor left beside the copy."""
    checked_copy = snapshot._checked_copy

    async def planting(*args: object) -> object:
        positions = await checked_copy(*args)  # type: ignore[arg-type]
        (tmp_path / planted).write_bytes(b"planted meanwhile")
        return positions

    monkeypatch.setattr(snapshot, "_checked_copy", planting)
    dest = tmp_path / "copy.db"
    with pytest.raises(ConfigError, match=rf"{planted} exists \(it appeared while the copy"):
        await snapshot.take(source, dest)
    assert (tmp_path / planted).read_bytes() == b"planted meanwhile"
    assert files(tmp_path) == {"live", planted}

    (tmp_path / planted).unlink()
    await snapshot.take(source, dest, force=True)
    assert files(tmp_path) == {"live", "copy.db"}
    assert rows(dest) == rows(source)
    assert dest.stat().st_mode & 0o777 == 0o600  # it holds record payloads


async def test_a_destination_that_appears_at_the_last_instant_is_not_replaced(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the last look and the rename: the copy is linked to DEST, which, unlike a
    rename, fails when DEST exists."""
    dest = tmp_path / "copy.db"
    refuse_existing = snapshot._refuse_existing

    def looked_too_early(path: Path, when: str) -> None:
        refuse_existing(path, when)
        if when:  # the look right before the rename, not the one at the start
            dest.write_bytes(b"another copy")

    monkeypatch.setattr(snapshot, "_refuse_existing", looked_too_early)
    with pytest.raises(ConfigError, match="exists \\(it appeared while the copy was made"):
        await snapshot.take(source, dest)
    assert dest.read_bytes() == b"another copy"
    assert files(tmp_path) == {"live", "copy.db"}


async def test_force_refuses_a_destination_another_process_has_open(
    source: Path, tmp_path: Path
) -> None:
    dest = await sqlstate_file(tmp_path / "other.db")
    before = dest.read_bytes()
    reader = sqlite3.connect(dest)
    try:
        reader.execute("SELECT count(*) FROM positions").fetchall()
        with pytest.raises(DatabaseError, match="is open in another process"):
            await snapshot.take(source, dest, force=True, busy_timeout_s=0.2)
    finally:
        reader.close()
    assert dest.read_bytes() == before
    assert not [name for name in files(tmp_path) if name.endswith(".snapshot")]


@pytest.mark.parametrize("dest", ["live/state.db", "live"])
async def test_the_database_itself_or_a_folder_is_refused(
    source: Path, tmp_path: Path, dest: str
) -> None:
    before = rows(source)
    with pytest.raises(ConfigError, match=r"is the database itself|is a folder"):
        await snapshot.take(source, tmp_path / dest, force=True)
    assert rows(source) == before


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("missing", "no database at"),
        ("not_sqlite", "is not a usable SQLite database"),
        ("not_sqlstate", "is not a sqlstate database"),
        ("corrupt", "failed its check .*itself is likely damaged"),
    ],
)
async def test_a_source_that_cannot_be_copied_leaves_nothing(
    tmp_path: Path, make: str, message: str
) -> None:
    path = tmp_path / "state.db"
    if make == "not_sqlite":
        path.write_bytes(b"not a database" * 100)
    elif make == "not_sqlstate":
        with writing(path) as conn:
            conn.execute("CREATE TABLE t (x)")
    elif make == "corrupt":
        await sqlstate_file(path)
        await asyncio.to_thread(corrupt_file, path)
    with pytest.raises(DatabaseError, match=message):
        await snapshot.take(path, tmp_path / "copy.db")
    assert not (tmp_path / "copy.db").exists()
    assert not [name for name in files(tmp_path) if ".snapshot" in name]


async def test_a_locked_source_is_reported(source: Path, tmp_path: Path) -> None:
    """A connection in exclusive locking mode keeps every reader out, even in WAL mode."""
    with (
        held_exclusively(source),
        pytest.raises(DatabaseBusyError, match="is locked by another connection"),
    ):
        await snapshot.take(source, tmp_path / "copy.db", busy_timeout_s=0.2)
    assert files(tmp_path) == {"live"}


async def test_a_missing_destination_folder_is_reported(source: Path, tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match=r"folder .*nowhere does not exist"):
        await snapshot.take(source, tmp_path / "nowhere" / "copy.db")


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """A folder nobody may create files in: by its mode, and for root, whom the mode does not
    stop, by the immutable attribute."""
    folder.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


async def test_an_unwritable_destination_folder_is_reported(source: Path, tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    with unwritable(folder), pytest.raises(DatabaseError, match="cannot write snapshot"):
        await snapshot.take(source, folder / "copy.db")
    assert files(folder) == set()


def test_a_full_disk_is_reported_and_leaves_nothing(source: Path, tmp_path: Path) -> None:
    """A real full disk: the command runs in a mount namespace of its own (``unshare``, no
    privileges needed) where DEST's folder is a 256 KiB tmpfs, smaller than the copy."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    command = [sys.executable, "-m", "sqlstate", "snapshot", "--database", str(source)]
    # What the folder holds afterwards is listed inside the namespace: outside, the tmpfs and
    # whatever the command left on it are gone.
    script = (
        'folder="$1"; shift; mount -t tmpfs -o size=256k tmpfs "$folder" || exit 99;'
        ' "$@"; code=$?; echo "left: $(ls -A "$folder")"; exit $code'
    )
    result = subprocess.run(
        [
            *("unshare", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(folder)),
            *(*command, str(folder / "copy.db")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert "database or disk is full" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == "left: \n"


def test_the_command_prints_what_the_copy_holds(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "copy.db"
    command = ["snapshot", "--database", str(source), str(dest)]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    assert f"written to {dest}" in result.output
    assert "quick_check ok, 2 partition(s)" in result.output
    assert f"t      0          {KEYS}" in result.output

    again = CliRunner().invoke(main, command)
    assert again.exit_code == 2
    assert "exists: give another name, or --force" in again.output

    forced = CliRunner().invoke(main, [*command, "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    assert '"next_offset": 7' in forced.output
