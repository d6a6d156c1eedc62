"""--changelog: a kill -9 between a batch's Kafka commit and its SQLite commit, on either side.

The fault wrapper kills the daemon inside the batch's SQLite transaction, in the database
thread: before the changelog transactions begin, or right after they committed (the file is then
behind its changelog). Whoever claims the partitions next, on the same file or on an empty one
(another host), restores from the changelog and counts everything exactly once.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.db import query
from tests.support.faults import caught_up, daemon, produce
from tests.support.kafka import TopicFactory


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
