"""Snapshots of a live file: taken while a daemon counts steady traffic, each copy is exact as
of its positions, and a daemon started on a copy catches up from them to exactly the oracle.

Two ways to start on a copy, each proving something:

- in a new group, beside the daemon still running on the original: Kafka has no offsets for
  that group, so the positions it starts from can only come from the copy, and the two files
  then go their own ways;
- in the same group once the first daemon stopped, as a host replaced from its last backup:
  the group's offsets in Kafka stand past the copy's positions (``--commit-offsets-to-kafka``),
  and the daemon must start from the copy's, not from those.

Either way the oracle finds what starting anywhere else would leave: records counted twice
(from earlier) or never (from later).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tests.support.daemon import Daemon, stored_positions, wait_for_positions, wait_for_progress
from tests.support.kafka import TopicFactory
from tests.support.oracle import assert_exactly_once
from tests.support.workload import end_offsets, keyed_messages, produce_keyed

MESSAGES = 36_000
RATE = 4_000  # records a second: about 9 s of traffic


async def take_snapshot(database: Path, dest: Path) -> dict[str, Any]:
    """``sqlstate snapshot --json`` as a user runs it; its summary."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sqlstate",
        "snapshot",
        "--database",
        str(database),
        str(dest),
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    [summary] = json.loads(out)
    return dict(summary)


def claimed_at(topic: str, positions: dict[int, int]) -> list[str]:
    """What the daemon's assignment line says for partitions claimed at ``positions``."""
    return [f"{topic}-{p}@{offset} (epoch" for p, offset in sorted(positions.items())]


async def test_snapshots_taken_while_the_daemon_writes_are_exact_and_catch_up(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=3)
    messages = keyed_messages(MESSAGES, partitions=3, seed=12)
    database = tmp_path / "state.db"
    first = Daemon(kafka_bootstrap, [topic], group_id, database, "--max-records", "300")
    daemons.append(first.start())
    producing = asyncio.create_task(produce_keyed(kafka_bootstrap, topic, messages, rate=RATE))

    copies: list[tuple[Path, dict[int, int]]] = []
    for number in range(3):
        await wait_for_progress(database, 6_000 * (number + 1), timeout=60)
        dest = tmp_path / f"copy-{number}.db"
        before = stored_positions(database)
        summary = await take_snapshot(database, dest)
        after = stored_positions(database)
        positions = {row["partition"]: row["next_offset"] for row in summary["positions"]}
        assert summary["quick_check"] == "ok"
        # Taken mid-stream: the daemon was committing around the copy, and the copy is one of
        # its commits.
        assert sum(after.values()) > sum(before.values())
        for partition, offset in positions.items():
            assert before[(topic, partition)] <= offset <= after[(topic, partition)]
        copies.append((dest, positions))
    assert not producing.done(), "the traffic ended before the last snapshot"

    # Each copy holds exactly the records below its own positions (quick_check included).
    for dest, positions in copies:
        verdict = await assert_exactly_once(kafka_bootstrap, dest, topic)
        assert verdict.positions == positions
        assert 0 < verdict.read_back < MESSAGES

    # A new group on the second copy, beside the first daemon still counting.
    replica_copy, replica_from = copies[1]
    replica = Daemon(
        kafka_bootstrap, [topic], f"{group_id}-replica", replica_copy, name="replica"
    ).start()
    daemons.append(replica)
    await replica.wait_for_log("assigned partitions: ")
    for claim in claimed_at(topic, replica_from):
        assert claim in replica.current_log(), replica.current_log()[-3000:]

    await producing
    ends = await end_offsets(kafka_bootstrap, topic)
    await wait_for_positions(database, ends, 90, [first])
    assert await first.terminate() == 0

    # The same group on the third copy, once the first daemon stopped: a host replaced.
    replacement_copy, replacement_from = copies[2]
    replacement = Daemon(
        kafka_bootstrap, [topic], group_id, replacement_copy, name="replacement"
    ).start()
    daemons.append(replacement)
    await replacement.wait_for_log("assigned partitions: ")
    for claim in claimed_at(topic, replacement_from):
        assert claim in replacement.current_log(), replacement.current_log()[-3000:]

    for copy, daemon in ((replica_copy, replica), (replacement_copy, replacement)):
        await wait_for_positions(copy, ends, 90, [daemon])
        assert await daemon.terminate() == 0
    for file in (database, replica_copy, replacement_copy):
        verdict = await assert_exactly_once(kafka_bootstrap, file, topic)
        assert verdict.read_back == MESSAGES
