"""``sqlstate rebuild`` as an operator runs it: a live daemon counts steady traffic; rebuild
builds the state with ``counts`` and ``latest`` beside the live file and hands it over; the
daemon, fenced, exits 13; restarted with the new flags it carries on. The oracle and
``sqlstate verify`` then find the file exact. A reader holding a read transaction across the
hand-over keeps the old state whole; kill -9 of rebuild while the new state is being built, then
rebuild again, continues from the work file; kill -9 of the daemon then leaves the hand-over to
a stopped daemon, whose restart with its old flags is refused (exit 2).
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.support.daemon import Daemon, stored_positions, wait_for_positions, wait_for_progress
from tests.support.db import query
from tests.support.kafka import TopicFactory, log_end_offsets
from tests.support.oracle import Counts, Latest, Model, assert_exactly_once
from tests.support.workload import SteadyTraffic

OLD = ("--processor", "counts")
NEW = ("--processor", "counts", "--processor", "latest")
EXIT_HANDED_OVER, EXIT_PROCESSORS_REFUSED = 13, 2


def rebuild(
    bootstrap: str, topic: str, database: Path, *options: str, processors: Sequence[str] = NEW
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sqlstate",
        "rebuild",
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        topic,
        "--database",
        str(database),
        "--connect-timeout",
        "20",
        *processors,
        *options,
    ]


async def run_rebuild(
    bootstrap: str, topic: str, database: Path, *options: str, processors: Sequence[str] = NEW
) -> str:
    process = await asyncio.create_subprocess_exec(
        *rebuild(bootstrap, topic, database, *options, processors=processors),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, out.decode()
    return out.decode()


async def finish_with_new_flags(
    bootstrap: str,
    topic: str,
    database: Path,
    old: Daemon,
    traffic: SteadyTraffic,
    exit_code: int = EXIT_HANDED_OVER,
    flags: Sequence[str] = NEW,
    models: Sequence[Model] = (Counts(), Latest()),
) -> None:
    """The old daemon exits 13 (or 2, started after the hand-over with its old flags);
    restarted with the new flags it continues; once the traffic stops and it caught up, the
    file is exact."""
    assert await old.wait(30) == exit_code, old.current_log()[-3000:]
    if exit_code == EXIT_HANDED_OVER:
        assert "handed" in old.current_log()
    new = Daemon(bootstrap, [topic], "g-" + topic, database, *flags, name="new").start()
    try:
        await traffic.wait_for_more(200)
        traffic.stop.set()
        await asyncio.sleep(0.3)
        ends = await log_end_offsets(bootstrap, topic)
        await wait_for_positions(
            database, {(topic, p): end for p, end in ends.items()}, timeout=30, daemons=[new]
        )
        assert await new.terminate() == 0
    finally:
        await new.stop_quietly()
    await assert_exactly_once(bootstrap, database, topic, models)
    verify = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sqlstate",
        "verify",
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        topic,
        "--database",
        str(database),
        *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(verify.communicate(), 60)
    assert verify.returncode == 0, out.decode()


async def test_hand_over_under_traffic_keeps_readers_whole(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    topic = await topic_factory(3)
    database = tmp_path / "state.db"
    traffic = SteadyTraffic(kafka_bootstrap, topic, 3, rate=400)
    old = Daemon(kafka_bootstrap, [topic], "g-" + topic, database, *OLD).start()
    try:
        async with traffic.running():
            await wait_for_progress(database, 300)
            reader = sqlite3.connect(database, isolation_level=None)
            try:
                reader.execute("BEGIN")
                before = reader.execute("SELECT sum(count) FROM key_counts").fetchone()[0]
                out = await run_rebuild(kafka_bootstrap, topic, database)
                assert "handed it over" in out
                assert "records done" in out, out
                # The old snapshot, whole: its counts, and no table of the new processors.
                assert reader.execute("SELECT sum(count) FROM key_counts").fetchone()[0] == before
                assert not reader.execute(
                    "SELECT count(*) FROM sqlite_master WHERE name = 'latest'"
                ).fetchone()[0]
                reader.execute("COMMIT")
                assert reader.execute("SELECT count(*) FROM latest").fetchone()[0] > 0
            finally:
                reader.close()
            assert before
            await finish_with_new_flags(kafka_bootstrap, topic, database, old, traffic)
    finally:
        await old.stop_quietly()


async def test_rebuild_killed_mid_build_continues(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    topic = await topic_factory(3)
    database = tmp_path / "state.db"
    work = tmp_path / "state.db.rebuild"
    traffic = SteadyTraffic(kafka_bootstrap, topic, 3, rate=3000)
    old = Daemon(kafka_bootstrap, [topic], "g-" + topic, database, *OLD).start()
    try:
        async with traffic.running():
            process = await rebuild_under_way(
                kafka_bootstrap, topic, database, traffic, asyncio.subprocess.DEVNULL
            )
            process.kill()
            await process.wait()
            built = sum(stored_positions(work).values())
            # Killed mid-build: nothing was handed over, the daemon still counts alone.
            assert built >= 500
            assert query(database, "SELECT processor FROM topic_processors") == [("counts",)]
            assert old.running()
            out = await run_rebuild(kafka_bootstrap, topic, database)
            done = int(out.split(" from ")[1].split(" ")[0])
            # It continued from the work file's positions rather than starting over.
            assert done < sum(stored_positions(database).values()) - built + 1000, out
            assert not work.exists()
            await finish_with_new_flags(kafka_bootstrap, topic, database, old, traffic)
    finally:
        await old.stop_quietly()


async def test_daemon_killed_mid_build_ends_exact(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    topic = await topic_factory(3)
    database = tmp_path / "state.db"
    traffic = SteadyTraffic(kafka_bootstrap, topic, 3, rate=3000)
    old = Daemon(kafka_bootstrap, [topic], "g-" + topic, database, *OLD).start()
    try:
        async with traffic.running():
            process = await rebuild_under_way(
                kafka_bootstrap, topic, database, traffic, asyncio.subprocess.PIPE
            )
            await old.kill()
            out, _ = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, out.decode()
            # Started again with its old flags after the hand-over: refused, nothing written.
            old.start()
            await finish_with_new_flags(
                kafka_bootstrap, topic, database, old, traffic, EXIT_PROCESSORS_REFUSED
            )
    finally:
        await old.stop_quietly()


async def test_a_processor_removed_carries_the_others_state_over(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """counts and latest, then counts alone: the work file starts as a copy of the live file,
    at its positions, so the rebuild folds only the records that came after; latest is gone."""
    topic = await topic_factory(3)
    database = tmp_path / "state.db"
    traffic = SteadyTraffic(kafka_bootstrap, topic, 3, rate=300)
    old = Daemon(kafka_bootstrap, [topic], "g-" + topic, database, *NEW).start()
    try:
        async with traffic.running():
            await wait_for_progress(database, 3000)
            out = await run_rebuild(kafka_bootstrap, topic, database, processors=OLD)
            assert "carried over from the live file" in out, out
            folded = int(out.split(" from ")[-1].split(" ")[0])
            assert folded < 1500, out
            assert query(database, "SELECT processor FROM topic_processors") == [("counts",)]
            assert not query(database, "SELECT name FROM sqlite_master WHERE name = 'latest'")
            await finish_with_new_flags(
                kafka_bootstrap, topic, database, old, traffic, flags=OLD, models=(Counts(),)
            )
    finally:
        await old.stop_quietly()


async def rebuild_under_way(
    bootstrap: str, topic: str, database: Path, traffic: SteadyTraffic, output: int
) -> asyncio.subprocess.Process:
    """Once the daemon has 6,000 records, slow the traffic and start a rebuild in small
    batches; return it once its work file holds 500 (``output``: where its output goes)."""
    await wait_for_progress(database, 6000)
    traffic.rate = 300
    process = await asyncio.create_subprocess_exec(
        *rebuild(bootstrap, topic, database, "--max-records", "50"),
        stdout=output,
        stderr=asyncio.subprocess.STDOUT if output == asyncio.subprocess.PIPE else output,
    )
    await _wait_for_work(Path(f"{database}.rebuild"), 500)
    return process


async def _wait_for_work(work: Path, records: int, timeout: float = 30.0) -> None:
    """Until the work file's positions add up to ``records``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if sum(stored_positions(work).values()) >= records:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the work file never held {records} records")
        await asyncio.sleep(0.02)
