"""--changelog carries every kind of state: the built-ins, the SQL example and the dead letters.

Two hosts (two daemons, two files, one group) keep ``counts``, ``latest``, ``windowed-counts``
and the SQL example over order events that hold bad JSON, tombstones and late records; one host
is killed with kill -9 mid-stream and restarted, and a third host joins with an empty file.
Every file then holds every partition's state, each processor's exactly as the oracle says (the
rows of partitions a file never owned came through the changelog alone), and the files' state
tables are equal row for row.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tests.acceptance.test_processors import models, processor_args
from tests.support.daemon import wait_for_progress
from tests.support.faults import caught_up, daemon, wait_for_log
from tests.support.kafka import TopicFactory
from tests.support.orders import produce_orders

STATE_TABLES = ("key_counts", "latest", "windowed_key_counts", "window_clocks", "rejected_records")


def _rows(database: Path, table: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)
    try:
        return sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
    finally:
        conn.close()


async def test_two_hosts_a_kill_and_a_new_host_hold_every_processors_state(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = await topic_factory(partitions=4)
    files = [tmp_path / f"host-{n}.db" for n in range(3)]
    args = (*processor_args("dead-letter"), "--changelog")
    first, second, third = (
        daemon(kafka_bootstrap, topic, group_id, file, *args, name=f"host-{n}")
        for n, file in enumerate(files)
    )
    hosts = [first, second, third]
    producing = asyncio.create_task(
        produce_orders(kafka_bootstrap, topic, 2_000, partitions=4, seed=7, rate=800)
    )
    try:
        first.start()
        second.start()
        await wait_for_log(second, "claimed partitions", timeout=60)
        await wait_for_progress(files[0], 300, timeout=60)
        await first.kill()
        first.start()
        await producing
        third.start()
        await wait_for_log(third, "claimed partitions", timeout=60)
        for file in files:
            verdict = await caught_up(
                kafka_bootstrap, file, topic, hosts, models=models("dead-letter")
            )
            assert verdict.read_back == 2_000, file.name
        for table in STATE_TABLES:
            reference = _rows(files[0], table)
            assert reference or table == "rejected_records", table
            for file in files[1:]:
                assert _rows(file, table) == reference, (table, file.name)
        for host in hosts:
            assert await host.terminate() == 0
    finally:
        producing.cancel()
        for host in hosts:
            await host.stop_quietly()
