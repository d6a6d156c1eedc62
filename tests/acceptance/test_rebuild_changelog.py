"""``sqlstate rebuild`` under ``--changelog``, as an operator runs it on two hosts: both count
steady traffic in group g1 with ``counts``. Host 1's rebuild builds ``counts`` and ``latest``
from the input and hands its file over to group g2; its daemon, restarted in g2, publishes each
partition's new state to g2's empty changelogs (the seed), and is killed with kill -9 once it has
published one. Host 2's rebuild then follows g2's changelogs, and waits, g2 standing still; it is
killed with kill -9 there. Host 1 started again seeds the rest and goes on; host 2's rebuild run
again goes on from its work file and hands over to g2 too. Meanwhile host 2's old daemon is the
only one of g1.

While it all runs, every committed snapshot of both files shows whole batches (the hand-overs
among them). At the end both files hold exactly the new processors' state of every record, and
each old daemon stopped with exit code 13 rather than apply the old group's changelogs to the
new state."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.acceptance.test_rebuild import NEW, OLD, rebuild
from tests.support.daemon import Daemon, stored_positions, wait_for_positions, wait_for_progress
from tests.support.db import query
from tests.support.hosts import host, host_database, logs
from tests.support.kafka import TopicFactory, log_end_offsets
from tests.support.oracle import Counts, Latest, assert_exactly_once
from tests.support.snapshot_check import SnapshotChecker
from tests.support.workload import SteadyTraffic

EXIT_HANDED_OVER, EXIT_CONFIG = 13, 2
PARTITIONS = 4


async def run_rebuild(
    bootstrap: str, topic: str, database: Path, *options: str, exit_code: int = 0
) -> str:
    """Run ``sqlstate rebuild``, which must end with ``exit_code``; its output."""
    process = await asyncio.create_subprocess_exec(
        *rebuild(bootstrap, topic, database, *options),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == exit_code, out.decode()
    return out.decode()


async def wait_for_work(work: Path, timeout: float = 30.0) -> None:
    """Until the work file holds a position."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not stored_positions(work):
        assert asyncio.get_running_loop().time() < deadline, "the work file never held a position"
        await asyncio.sleep(0.05)


async def test_rebuild_moves_every_host_to_a_new_group(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    topic = await topic_factory(PARTITIONS)
    old_group, new_group = "g1-" + topic, "g2-" + topic
    files = [host_database(tmp_path, index) for index in (1, 2)]
    traffic = SteadyTraffic(kafka_bootstrap, topic, PARTITIONS, rate=300)
    hosts: list[Daemon] = [
        host(kafka_bootstrap, topic, old_group, tmp_path, index, *OLD).start() for index in (1, 2)
    ]
    try:
        async with traffic.running(), SnapshotChecker(files, [topic]) as checker:
            for database in files:
                await wait_for_progress(database, 600)
            # The group must be named, and be a new one.
            out = await run_rebuild(kafka_bootstrap, topic, files[0], exit_code=EXIT_CONFIG)
            assert "--group-id" in out, out
            out = await run_rebuild(
                kafka_bootstrap, topic, files[0], "--group-id", old_group, exit_code=EXIT_CONFIG
            )
            assert "never had" in out, out

            # Host 1: built from the input, handed over to the new group.
            out = await run_rebuild(kafka_bootstrap, topic, files[0], "--group-id", new_group)
            assert "handed it over" in out, out
            assert await hosts[0].wait(30) == EXIT_HANDED_OVER, logs(hosts)
            assert not query(files[0], "SELECT * FROM changelog_offsets")
            hosts[0] = host(kafka_bootstrap, topic, new_group, tmp_path, 1, *NEW).start()
            # Killed once it has seeded a partition's changelog: the new group stands still.
            await hosts[0].wait_for_log("to its new changelog")
            await hosts[0].kill()

            # Host 2: the new group's changelogs hold state now, so the work file follows them,
            # and waits while the new group is behind the live file; killed with kill -9 there,
            # it leaves its work file, which the next rebuild goes on from.
            work = Path(f"{files[1]}.rebuild")
            waiting = await asyncio.create_subprocess_exec(
                *rebuild(kafka_bootstrap, topic, files[1], "--group-id", new_group),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await wait_for_work(work)
            waiting.kill()
            await waiting.wait()
            assert query(files[1], "SELECT processor FROM topic_processors") == [("counts",)]
            # Started again, host 1 seeds the other partitions and goes on.
            hosts[0].start()
            await hosts[0].wait_for_log("claimed partitions held since the rebalance")
            out = await run_rebuild(kafka_bootstrap, topic, files[1], "--group-id", new_group)
            assert not stored_positions(work)  # handed over, then removed
            assert "handed it over" in out, out
            assert await hosts[1].wait(30) == EXIT_HANDED_OVER, logs(hosts)
            assert "sqlstate rebuild handed" in hosts[1].current_log(), hosts[1].current_log()[
                -3000:
            ]
            hosts[1] = host(kafka_bootstrap, topic, new_group, tmp_path, 2, *NEW).start()

            await traffic.wait_for_more(300)
            traffic.stop.set()
            await asyncio.sleep(0.3)
            ends = await log_end_offsets(kafka_bootstrap, topic)
            for database in files:
                await wait_for_positions(
                    database,
                    {(topic, p): end for p, end in ends.items()},
                    timeout=60,
                    daemons=hosts,
                )
        assert checker.checked > 20
        assert not checker.violations, checker.violations[:5]
        for database in files:
            assert query(database, "SELECT DISTINCT changelog FROM changelog_topics") == [
                (f"{new_group}.{topic}.changelog",)
            ]
            await assert_exactly_once(kafka_bootstrap, database, topic, (Counts(), Latest()))
        for daemon in hosts:
            assert await daemon.terminate() == 0, logs(hosts)
    finally:
        for daemon in hosts:
            await daemon.stop_quietly()


async def test_a_file_without_every_partition_is_refused(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """Under --standby none a file holds what its host owned: no group can be made from it.
    Host 2 owns both partitions first; host 1 joins and is given one, and never held the other."""
    topic = await topic_factory(2)
    database = host_database(tmp_path, 1)
    daemons = [
        host(kafka_bootstrap, topic, "g1-" + topic, tmp_path, index, *OLD, "--standby", "none")
        for index in (1, 2)
    ]
    try:
        async with SteadyTraffic(kafka_bootstrap, topic, 2, rate=200).running():
            daemons[1].start()
            await wait_for_progress(host_database(tmp_path, 2), 100)
            daemons[0].start()
            await daemons[0].wait_for_log("claimed partitions held since the rebalance")
            await wait_for_progress(database, 1)
        for daemon in daemons:
            assert await daemon.terminate() == 0, logs(daemons)
        assert query(database, "SELECT count(*) FROM positions") == [(1,)]
        out = await run_rebuild(
            kafka_bootstrap, topic, database, "--group-id", "g2-" + topic, exit_code=EXIT_CONFIG
        )
        assert "every partition" in out, out
    finally:
        for daemon in daemons:
            await daemon.stop_quietly()
