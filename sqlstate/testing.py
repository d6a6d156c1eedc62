"""Run processors over records in a test, and query what they made: no broker, no daemon.

    from sqlstate.testing import run_processors

    def test_totals() -> None:
        db = run_processors(
            ["examples.order_totals:OrderTotals"],
            [{"key": "c-1", "value": {"json": {"customer": "c-1", "amount_cents": 250}}}],
            value_format="json",
        )
        try:
            assert db.execute("SELECT orders FROM order_total").fetchall() == [(1,)]
        finally:
            db.close()

The records go through what ``sqlstate run`` does with records it fetched: the processors are
loaded and checked as at the daemon's start, the keys and values decoded by ``key_format`` and
``value_format``, a record that does not decode sorted out by ``on_bad_record``, and each batch
committed in one transaction with the partitions' positions (``sqlstate/app/replay.py``).
docs/testing-processors.md documents it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlstate.app import records_file
from sqlstate.app.processor_checks import load_checked, offline_settings
from sqlstate.app.records_file import RawRecord
from sqlstate.app.replay import Replayed, in_batches, replay
from sqlstate.processors.base import Processor

__all__ = ["ProcessorLike", "RecordLike", "Replayed", "replay_into", "run_processors"]

#: A processor: a built-in's name, ``PACKAGE.MODULE:NAME``, a ``.sql`` file, or an object.
ProcessorLike = str | Path | Processor
#: A record: the fields of a line of a records file (docs/testing-processors.md), or a pair
#: ``(key, value)``; keys and values as text, bytes, None, or ``{"json": ...}`` and the like.
RecordLike = Mapping[str, Any] | tuple[Any, Any]
#: The topic of a record that names none.
TOPIC = "records"
# Where the scratch file goes when the system has a folder in memory: it needs no durability,
# and on a disk the fsyncs of its migrations would be most of a call's time (50 ms against 5).
_MEMORY_FOLDER = Path("/dev/shm")


def run_processors(
    processors: Sequence[ProcessorLike],
    records: Iterable[RecordLike],
    *,
    batch_size: int | None = None,
    **options: Any,
) -> sqlite3.Connection:
    """Run ``processors`` over ``records`` into a new database and return an in-memory copy of
    it, to query (close it when done). ``batch_size``: records per batch (default: all of them
    in one); ``options``: the settings of ``sqlstate run`` that processors depend on, by their
    field names (``key_format``, ``value_format``, ``on_bad_record``, ``window``,
    ``retention``, ``isolation_level``).

    Synchronous, for plain test functions; in an ``async`` test, ``await replay_into(...)``.
    """
    with tempfile.TemporaryDirectory(prefix="sqlstate-testing-", dir=_scratch_folder()) as folder:
        path = Path(folder) / "state.db"
        asyncio.run(replay_into(path, processors, records, batch_size=batch_size, **options))
        copy = sqlite3.connect(":memory:")
        with contextlib.closing(sqlite3.connect(path)) as made:
            made.backup(copy)
        return copy


async def replay_into(
    database: Path,
    processors: Sequence[ProcessorLike],
    records: Iterable[RecordLike],
    *,
    batch_size: int | None = None,
    **options: Any,
) -> Replayed:
    """Run ``processors`` over ``records`` into the database file ``database`` (created, or
    continued from its positions), as ``run_processors`` does; return what was done."""
    offsets = records_file.Offsets()
    raw = [_record(record, offsets, f"record {number}") for number, record in enumerate(records)]
    specs = [str(p) for p in processors if isinstance(p, str) and not p.endswith(".sql")]
    sql_files = [
        Path(p) for p in processors if isinstance(p, Path | str) and str(p).endswith(".sql")
    ]
    given = [p for p in processors if not isinstance(p, str | Path)]
    settings = offline_settings(
        sorted({record.topic for record in raw}) or [TOPIC],
        processors=tuple(specs),
        sql_files=tuple(sql_files),
        **options,
    )
    size = batch_size or max(1, len(raw))
    loaded, _ = load_checked(settings, given)
    with contextlib.closing(loaded):
        return await replay(in_batches(raw, size), database, loaded, settings)


def _scratch_folder() -> str | None:
    """The folder in memory, if there is one to write to; None: the system's temporary folder."""
    if _MEMORY_FOLDER.is_dir() and os.access(_MEMORY_FOLDER, os.W_OK):
        return str(_MEMORY_FOLDER)
    return None


def _record(record: RecordLike, offsets: records_file.Offsets, where: str) -> RawRecord:
    if isinstance(record, tuple):
        key, value = record
        record = {"key": key, "value": value}
    return records_file.parse(record, offsets, where, topic=TOPIC)
