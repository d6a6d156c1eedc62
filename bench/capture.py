"""``python -m bench.capture``: what ``--changelog``'s row capture costs in SQLite, without Kafka.

For batches of the bench's records (``bench/stages.py``'s: keys drawn uniformly), runs each
processor's statements in one transaction on a WAL file, as the batch loop does, once without
capture and once with the TEMP triggers installed plus ``take_changes`` after the statements;
then applies the captured records to a second file (``apply_changes``, as a restore does).
Prints records per second of each and the capture's cost per changed row, from the least
CPU time of several repetitions. A warm-up batch first fills each file with every key, so each
timed batch updates rows rather than inserting them, as in a running database.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from aiokafka import TopicPartition

from bench.stages import SQL_PROCESSOR, records
from sqlstate.changelog.apply import apply_changes
from sqlstate.changelog.capture import install_capture, take_changes
from sqlstate.changelog.tables import state_tables
from sqlstate.kafka.decoding import Decoding
from sqlstate.processors.base import Processor, Record
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.latest import Latest
from sqlstate.processors.registry import Processors
from sqlstate.processors.sql_file import SqlFileProcessor
from sqlstate.processors.windowed_counts import WindowedCounts
from sqlstate.state import migrate
from sqlstate.state.database import utc_now
from sqlstate.state.statements import run_statements

# A changelog record as read back: key, value (None: a tombstone), changelog offset.
Logged = tuple[bytes, bytes | None, int]

TP = TopicPartition("t", 0)
T = TypeVar("T")
Changes = list[tuple[bytes, bytes | None]]


def best(work: Callable[[], object], repeat: int) -> float:
    """The least CPU time of ``repeat`` runs of ``work``, in seconds. CPU time, not wall time:
    on a shared machine the wall clock also counts the other processes' turns. (SQLite runs in
    this process and thread, so its work is counted; the WAL's writes to the page cache too.)"""
    times = []
    for _ in range(repeat):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return min(times)


def open_file(path: Path, processor: Processor) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for migration in [*migrate.available(), *processor.migrations]:
        conn.executescript(migration.script)
    return conn


def in_transaction(conn: sqlite3.Connection, work: Callable[[], T]) -> Callable[[], T]:
    def run() -> T:
        conn.execute("BEGIN IMMEDIATE")
        result = work()
        conn.execute("COMMIT")
        return result

    return run


def measure(
    folder: Path, name: str, processor: Processor, batch: Sequence[Record], repeat: int
) -> None:

    processors = Processors.checked([processor])
    tables = state_tables([processor])
    statements = processors.statements(TP, batch)
    plain = open_file(folder / f"{name}-plain.db", processor)
    captured = open_file(folder / f"{name}-captured.db", processor)
    standby = open_file(folder / f"{name}-standby.db", processor)
    try:
        install_capture(captured, tables)

        def batch_without() -> None:
            run_statements(plain, statements)

        def batch_with_capture() -> Changes:
            run_statements(captured, statements)
            return take_changes(captured)

        in_transaction(plain, batch_without)()  # warm-up: every key inserted
        in_transaction(captured, batch_with_capture)()
        without = best(in_transaction(plain, batch_without), repeat)

        with_capture = best(in_transaction(captured, batch_with_capture), repeat)
        changes = in_transaction(captured, batch_with_capture)()
        log: list[Logged] = [(key, value, offset) for offset, (key, value) in enumerate(changes)]
        offsets = iter(range(0, 1_000_000_000, len(log)))

        def restore() -> object:
            shifted = [(key, value, offset + next(offsets)) for key, value, offset in log]
            return apply_changes(standby, "t", 0, shifted, tables, now=utc_now())

        applying = best(in_transaction(standby, restore), repeat)
    finally:
        for conn in (plain, captured, standby):
            conn.close()
        processors.close()
    rows = len(changes)
    print(
        f"{name:<20} {len(batch) / without:>10,.0f} {len(batch) / with_capture:>10,.0f}"
        f" {with_capture / without:>6.2f} {rows:>7,} {(with_capture - without) / rows * 1e6:>8.2f}"
        f" {rows / applying:>10,.0f}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capture",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--records", type=int, default=30_000, help="one batch, as --max-records")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    options = parser.parse_args(argv)
    raw = records(options.records, options.keys, None)
    decode = Decoding("bytes", "json").value_deserializer
    decoded = records(options.records, options.keys, decode)
    print(
        f"{options.records:,} records a batch, {options.keys:,} keys, one partition, best of"
        f" {options.repeat} in CPU time; SQLite only (no Kafka)"
    )
    print(
        f"{'processor':<20} {'records/s':>10} {'captured':>10} {'ratio':>6} {'rows':>7}"
        f" {'us/row':>8} {'applied/s':>10}"
    )
    runs: list[tuple[str, Processor, Sequence[Record]]] = [
        ("counts", KeyCounter(), raw),
        ("latest", Latest(), raw),
        ("windowed-counts 1m", WindowedCounts(60_000, 7 * 86_400_000), raw),
        ("--sql, JSON values", SqlFileProcessor.load(SQL_PROCESSOR), decoded),
    ]
    with tempfile.TemporaryDirectory() as folder:
        for name, processor, batch in runs:
            measure(Path(folder), name.split()[0].strip("-,"), processor, batch, options.repeat)
    print(
        "records/s: the batch's statements in one transaction; captured: the same with the"
        " triggers and the take; us/row: the capture's cost per changed row; applied/s: rows"
        " of captured records applied per second (a restore's SQLite side)"
    )


if __name__ == "__main__":
    main()
