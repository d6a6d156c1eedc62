"""--changelog: a file that catches up from an offset older than the changelog keeps its
tombstones (``delete.retention.ms``) is restored whole, not from its tail, so that no row
whose deletion compaction has since dropped from the log survives in it.

The changelog is created before the daemons with a retention of a few seconds. The old file is a
snapshot into which rows are written that nothing in the changelog names, as a row whose
deletion's tombstone compaction dropped: applied from its tail, the file keeps them and the
oracle finds them; restored whole, they are gone and the counts are exact. Each way in: a claim
(the new host alone, ``--standby none``), a standby that starts following (beside the first
host, every file complete), and two processes sharing the old file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sqlstate.changelog.topics import changelog_topic
from tests.acceptance.test_snapshot import take_snapshot
from tests.support.db import query, writing
from tests.support.faults import caught_up, daemon, produce
from tests.support.kafka import TopicFactory, create_topic

RETENTION_MS = 3_000


@pytest.mark.parametrize("way_in", ["claim", "standby", "shared"])
async def test_a_file_older_than_the_changelogs_tombstones_is_restored_whole(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    way_in: str,
) -> None:
    """``shared``: two processes start together on the one old file, each following the
    partitions the other owns: whichever forgets a partition first, the other never applies a
    chunk of it over the forgotten part."""
    topic = await topic_factory(partitions=3)
    await create_topic(
        kafka_bootstrap,
        changelog_topic(group_id, topic),
        3,
        {"cleanup.policy": "compact", "delete.retention.ms": str(RETENTION_MS)},
    )
    database, old = tmp_path / "state.db", tmp_path / "old.db"
    options = ("--changelog", "--standby", "none") if way_in == "claim" else ("--changelog",)
    first = daemon(kafka_bootstrap, topic, group_id, database, *options, name="first")
    later = [daemon(kafka_bootstrap, topic, group_id, old, *options, name="second")]
    if way_in == "shared":
        later.append(daemon(kafka_bootstrap, topic, group_id, old, *options, name="third"))
    try:
        first.start()
        await produce(kafka_bootstrap, topic, 600, partitions=3, seed=21)
        await caught_up(kafka_bootstrap, database, topic, [first])
        await take_snapshot(database, old)
        with writing(old) as conn:
            conn.executemany(
                "INSERT INTO key_counts (topic, partition, key, count) VALUES (?, ?, 'ghost', 7)",
                [(topic, partition) for partition in range(3)],
            )
        await produce(kafka_bootstrap, topic, 300, partitions=3, seed=22)
        await caught_up(kafka_bootstrap, database, topic, [first])
        if way_in != "standby":
            assert await first.terminate() == 0
        # Every record the old file lacks is now older than the tombstones are kept.
        await asyncio.sleep(RETENTION_MS / 1000 + 0.5)

        for host in later:
            host.start()
        await produce(kafka_bootstrap, topic, 300, partitions=3, seed=23)
        running = [first, *later] if way_in == "standby" else later
        verdict = await caught_up(kafka_bootstrap, old, topic, running)
        assert verdict.read_back == 1_200
        assert query(old, "SELECT count(*) FROM key_counts WHERE key = 'ghost'") == [(0,)]
        logs = "".join(host.log() for host in later)
        for partition in range(3):
            assert f"{topic}-{partition} is restored whole" in logs, logs[-4000:]
        if way_in == "standby":
            await caught_up(kafka_bootstrap, database, topic, running)
            # The first host's file stood at its changelogs' ends: nothing restored whole.
            assert "restored whole" not in first.log()
            assert await first.terminate() == 0
        for host in later:
            assert await host.terminate() == 0
    finally:
        await first.stop_quietly()
        for host in later:
            await host.stop_quietly()
