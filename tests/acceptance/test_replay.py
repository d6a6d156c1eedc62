"""``sqlstate replay`` makes the state ``sqlstate run`` makes: the same records, produced to a
real topic and consumed by the daemon, and replayed from a records file, leave the same rows in
every processor's tables and the same positions."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer

from sqlstate.app import records_file
from tests.support.daemon import Daemon, wait_for_positions
from tests.support.kafka import started
from tests.support.replaying import PROCESSOR_ARGS, ROOT, order_lines, state, write_lines


async def test_a_replay_matches_the_daemon_on_the_same_records(
    kafka_bootstrap: str, topic: str, group_id: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    # Record times close to now: the broker keeps them (its retention counts from them).
    first_timestamp_ms = int(time.time() * 1000) - 60_000
    records = write_lines(tmp_path / "orders.jsonl", order_lines(topic, 400, first_timestamp_ms))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    async with started(producer):
        sent = [
            await producer.send(
                topic,
                record.value,
                key=record.key,
                partition=record.partition,
                timestamp_ms=record.timestamp,
            )
            for record in records_file.read(records)
        ]
        await producer.flush()
        results = await asyncio.gather(*sent)
    # The file's offsets are the partition's consecutive ones, as Kafka gave them.
    assert [r.offset for r in results] == [r.offset for r in records_file.read(records)]
    ends = {(topic, p): sum(1 for r in results if r.partition == p) for p in range(3)}

    live = tmp_path / "live.db"
    daemon = Daemon(
        kafka_bootstrap, [topic], group_id, live, *PROCESSOR_ARGS, "--max-records", "37"
    )
    daemons.append(daemon.start())
    await wait_for_positions(live, ends, timeout=60, daemons=daemons)
    assert await daemon.terminate() == 0

    replayed = tmp_path / "replayed.db"
    replay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sqlstate", "-q", "replay", "--records", str(records),
        "--database", str(replayed), "--batch-size", "64", *PROCESSOR_ARGS,
        cwd=ROOT,
    )  # fmt: skip
    assert await asyncio.wait_for(replay.wait(), 60) == 0

    made = state(live)
    assert made["order_totals"]
    assert made["windowed_key_counts"]
    assert made["rejected_records"]
    assert state(replayed) == made
