"""--changelog: a kill -9 between a batch's Kafka commit and its SQLite commit, on either side;
a host seeded from a snapshot; a changelog deleted under the state.

The fault wrapper kills the daemon inside the batch's SQLite transaction, in the database
thread: before the changelog transactions begin, or right after they committed (the file is then
behind its changelog). Whoever claims the partitions next, on the same file or on an empty one
(another host), restores from the changelog and counts everything exactly once.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from sqlstate.changelog.topics import changelog_topic
from tests.acceptance.test_snapshot import take_snapshot
from tests.support.daemon import Daemon
from tests.support.db import query
from tests.support.faults import caught_up, daemon, produce
from tests.support.kafka import TopicFactory, delete_topics


async def _crashed(victim: Daemon) -> None:
    code = await victim.wait(60)
    assert code == -signal.SIGKILL, victim.log()[-3000:]


@pytest.mark.parametrize("point", ["before_changelog_publish", "after_changelog_publish"])
@pytest.mark.parametrize("next_file", ["same", "empty"])
async def test_kill_around_the_changelog_commit_then_claim_again(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    point: str,
    next_file: str,
) -> None:
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    await produce(kafka_bootstrap, topic, 600, partitions=3, seed=5)
    victim = daemon(
        kafka_bootstrap, topic, group_id, database, "--changelog", name="victim", fault=point, at=4
    ).start()
    after = database if next_file == "same" else tmp_path / "other-host.db"
    # No standby: it would apply the changelog before the victim's session ends and the claim
    # comes; here the claim's restore must repair the file.
    survivor = daemon(
        kafka_bootstrap, topic, group_id, after, "--changelog", "--standby", "none", name="next"
    )
    try:
        await _crashed(victim)
        assert f"FAULT {point} 4" in victim.log()
        applied = dict(
            (partition, offset)
            for partition, offset in query(
                database, "SELECT partition, next_offset FROM changelog_offsets"
            )
        )
        assert applied, "three batches committed before the crash"

        survivor.start()
        await produce(kafka_bootstrap, topic, 300, partitions=3, seed=6)
        verdict = await caught_up(kafka_bootstrap, after, topic, [victim, survivor])
        assert verdict.read_back == 900
        if point == "after_changelog_publish" or next_file == "empty":
            # The batch the crash cut off was in the changelog only: the claim read it back.
            assert "restored" in survivor.log()
        assert await survivor.terminate() == 0
    finally:
        await victim.stop_quietly()
        await survivor.stop_quietly()


async def test_a_host_seeded_from_a_snapshot_reads_only_what_the_changelog_added_since(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    """``sqlstate snapshot`` of a --changelog host while it writes, then a new host on the copy
    (the first one gone, its partitions moved): the new host's restore starts at the copy's
    changelog offsets, not at the changelog's start, and its state is exact."""
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    seeded = tmp_path / "seeded.db"
    first = daemon(kafka_bootstrap, topic, group_id, database, "--changelog", name="first")
    second = daemon(
        kafka_bootstrap, topic, group_id, seeded, "--changelog", "--standby", "none", name="new"
    )
    try:
        first.start()
        await produce(kafka_bootstrap, topic, 600, partitions=3, seed=8)
        await caught_up(kafka_bootstrap, database, topic, [first])
        producing = asyncio.create_task(produce(kafka_bootstrap, topic, 300, partitions=3, seed=9))
        summary = await take_snapshot(database, seeded)
        await producing
        # More after the copy, which only the changelog brings to the new host.
        await produce(kafka_bootstrap, topic, 300, partitions=3, seed=11)
        await caught_up(kafka_bootstrap, database, topic, [first])
        assert await first.terminate() == 0
        copied = dict(query(seeded, "SELECT partition, next_offset FROM changelog_offsets"))
        assert len(copied) == 3, summary
        assert min(copied.values()) > 0, summary

        second.start()
        await produce(kafka_bootstrap, topic, 300, partitions=3, seed=10)
        verdict = await caught_up(kafka_bootstrap, seeded, topic, [second])
        assert verdict.read_back == 1_500
        for partition, offset in copied.items():
            # What the first host added after the copy was read from the copy's offsets on,
            # not from the changelog's start.
            line = f"restoring {topic}-{partition} from its changelog, offsets {offset} to"
            assert line in second.log()
        assert await second.terminate() == 0
    finally:
        await first.stop_quietly()
        await second.stop_quietly()


async def test_a_deleted_changelog_stops_the_daemon_instead_of_losing_state(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    """The changelog topic deleted while the daemon was down: started again, it finds that the
    changelog no longer holds what its file applied from it, and stops with exit code 5 and a
    message, changing nothing, rather than restoring or following an incomplete changelog."""
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    await produce(kafka_bootstrap, topic, 600, partitions=3, seed=12)
    first = daemon(kafka_bootstrap, topic, group_id, database, "--changelog", name="first")
    again = daemon(kafka_bootstrap, topic, group_id, database, "--changelog", name="again")
    try:
        first.start()
        await caught_up(kafka_bootstrap, database, topic, [first])
        assert await first.terminate() == 0
        before = query(database, "SELECT * FROM key_counts ORDER BY partition, key")
        await delete_topics(kafka_bootstrap, [changelog_topic(group_id, topic)])

        again.start()
        assert await again.wait(60) == 5, again.log()[-3000:]
        assert "created again" in again.log()
        assert query(database, "SELECT * FROM key_counts ORDER BY partition, key") == before
    finally:
        await first.stop_quietly()
        await again.stop_quietly()
