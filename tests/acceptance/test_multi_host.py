"""Three hosts simulated on one machine: three ``sqlstate run --changelog`` daemons, each with a
database file of its own, in one group, over one input topic of six partitions, under steady
keyed traffic while a host or the broker fails (docs/scaling.md).

While each scenario runs, every file is read 20 times a second as a user's SQLite client would
(``tests.support.snapshot_check``): every committed snapshot must show whole batches. Each
scenario ends with the oracle on every file: with standbys (the default) each file must hold
exactly the state the records make, for every partition, stood at the end of the log; with
``--standby none`` each host's owned partitions must stand at the end, and every file must hold
exactly the state of the positions it has (lost = 0, duplicated = 0 everywhere).

- a host killed with kill -9 and restarted on its file;
- a host frozen past the session timeout while it holds a batch (a zombie), then resumed: its
  changelog producer was fenced by the new owner's, so its batch rolls back and nothing it does
  reaches any file;
- a new host joining with an empty file: its state comes from the changelogs, and the partition
  each earlier host keeps keeps its changelog producer;
- the input's records deleted below every position, then a host killed and replaced by one with an
  empty file: the partitions' state can only come from their changelogs, and no partition may be
  read from the input's start (``--out-of-range fail`` would stop the daemon);
- the broker killed with kill -9 and restarted;
- ``--standby none``: each file holds only what its host claimed, and a partition that moves is
  restored from its changelog;
- ``--standby 1``: each partition kept in two files, its owner's and one other the group chose,
  as each file's ``progress.role`` says, through a host killed and started again; every file
  exact in what it keeps, and the partitions a file no longer keeps said so;
- large batches of long keys, whose changelog transactions each span several fetches: every
  committed snapshot of every file, read while the hosts write, follow and restore, shows whole
  batches (``tests.support.snapshot_check``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from sqlstate.changelog.topics import changelog_topic
from tests.support.broker import AsyncBrokerControl
from tests.support.daemon import Daemon, wait_for_positions
from tests.support.faults import produce, wait_for_log, wait_stopped
from tests.support.hosts import (
    KEPT,
    STANDBY,
    assignment,
    claimed,
    converged,
    host,
    host_database,
    logs,
    lose_file,
    owners,
    roles,
    wait_for_assignments,
    wait_for_copies,
)
from tests.support.kafka import (
    TopicFactory,
    delete_records,
    delete_topics,
    log_end_offsets,
)
from tests.support.kafka import produce as produce_messages
from tests.support.oracle import assert_exactly_once, data_ends, read_committed
from tests.support.snapshot_check import SnapshotChecker
from tests.support.workload import SteadyTraffic, end_offsets

PARTITIONS = 6
RATE = 100.0  # records a second while a scenario runs
BACKLOG = 600  # records in the topic before the hosts start
BROKER_DOWN_S = 8.0  # longer than the session timeout (6 s): the group is rebuilt
# Large batches of distinct 200-byte keys: each changelog record (key and row) takes about 500
# bytes, so one batch's changelog transaction is several times a fetch's 1 MB per partition.
LARGE_BATCH = ("--max-records", "20000")
KEY_BYTES = 200
BURSTS = 3
BURST = 24_000


@dataclass
class Cluster:
    """One scenario's topic and group, and the hosts made for it (stopped at its end)."""

    bootstrap: str
    topic: str
    group_id: str
    workdir: Path
    made: list[Daemon]
    snapshots: SnapshotChecker

    def host(
        self,
        index: int,
        *extra_args: str,
        fault: str | None = None,
        at: int = 1,
        action: str = "kill",
    ) -> Daemon:
        """Host ``index`` (not started), on file ``host-<index>.db``."""
        daemon = host(
            self.bootstrap,
            self.topic,
            self.group_id,
            self.workdir,
            index,
            *extra_args,
            fault=fault,
            at=at,
            action=action,
        )
        self.made.append(daemon)
        return daemon

    def traffic(self, seed: int) -> SteadyTraffic:
        return SteadyTraffic(self.bootstrap, self.topic, PARTITIONS, RATE, seed=seed)

    async def ends(self) -> dict[tuple[str, int], int]:
        return await end_offsets(self.bootstrap, self.topic)

    async def wait_at_end(
        self, host: Daemon, partitions: Collection[int], hosts: Sequence[Daemon]
    ) -> None:
        """Wait until ``host``'s file stands at the log's end (now) in ``partitions``."""
        ends = await self.ends()
        targets = {tp: end for tp, end in ends.items() if tp[1] in partitions}
        await wait_for_positions(host.database, targets, 60, hosts)

    @property
    def changelog(self) -> str:
        return changelog_topic(self.group_id, self.topic)

    async def changelog_data_ends(self) -> dict[int, int]:
        """{changelog partition: offset after its last committed record}."""
        committed = await log_end_offsets(
            self.bootstrap, self.changelog, isolation_level="read_committed"
        )
        return await data_ends(self.bootstrap, self.changelog, committed)


@pytest.fixture
async def cluster(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    daemons: list[Daemon],
) -> AsyncIterator[Cluster]:
    """A topic of six partitions holding a backlog, a group, and the hosts' directory; every
    host's file checked for whole batches throughout."""
    topic = await topic_factory(PARTITIONS)
    await produce(kafka_bootstrap, topic, BACKLOG, partitions=PARTITIONS, seed=1)
    files = [host_database(tmp_path, i) for i in range(3)]
    async with SnapshotChecker(files, [topic]) as snapshots:
        made = Cluster(kafka_bootstrap, topic, group_id, tmp_path, daemons, snapshots)
        yield made
        for daemon in daemons:
            await daemon.stop_quietly()
    # Changelog topics are not the topic factory's; a long-lived broker should not keep them.
    with contextlib.suppress(Exception):
        await delete_topics(kafka_bootstrap, [made.changelog])
    assert snapshots.errors == []
    assert snapshots.violations == [], "\n".join(snapshots.violations[:20])


async def stop_all(hosts: Sequence[Daemon]) -> None:
    """A graceful stop of every host, each exiting 0."""
    codes = [await h.terminate() for h in hosts]
    assert codes == [0] * len(hosts), logs(hosts)


async def test_host_killed_and_restarted(cluster: Cluster) -> None:
    hosts = [cluster.host(i).start() for i in range(3)]
    async with cluster.traffic(seed=1).running():
        await wait_for_assignments(hosts, cluster.topic, PARTITIONS)
        await wait_for_positions(hosts[1].database, await cluster.ends(), 60, hosts)
        await hosts[1].kill()
        survivors = [hosts[0], hosts[2]]
        await wait_for_assignments(survivors, cluster.topic, PARTITIONS)
        hosts[1].start()
        await wait_for_assignments(hosts, cluster.topic, PARTITIONS)
    await converged(cluster.bootstrap, cluster.topic, hosts)
    await stop_all(hosts)


async def test_zombie_host_changes_nothing(cluster: Cluster) -> None:
    hosts = [cluster.host(1).start(), cluster.host(2).start()]
    async with cluster.traffic(seed=2).running():
        await wait_for_assignments(hosts, cluster.topic, PARTITIONS)
        # The zombie joins last, so that its first batch comes once the group has settled with
        # three members: it freezes itself holding that batch, before its transaction begins.
        zombie = cluster.host(0, fault="before_commit", at=1, action="stop").start()
        await wait_stopped(zombie)
        assert assignment(zombie, cluster.topic), zombie.log()[-3000:]
        # Past the session timeout the other two share its partitions: their producers fence
        # its producer, they restore and go on counting. Nobody else may advance a partition
        # the zombie holds before that, so reaching the log's ends proves it happened.
        ends = await cluster.ends()
        for h in hosts:
            await wait_for_positions(h.database, ends, 60, [*hosts, zombie])
    await converged(cluster.bootstrap, cluster.topic, hosts)
    # No traffic from here on: whatever the changelogs gain would be the zombie's doing.
    before = await cluster.changelog_data_ends()

    zombie.resume()
    await wait_for_log(zombie, "a batch rolled back")
    await wait_for_assignments([*hosts, zombie], cluster.topic, PARTITIONS)
    assert await cluster.changelog_data_ends() == before
    for h in hosts:
        await assert_exactly_once(cluster.bootstrap, h.database, cluster.topic)

    # All three go on as ordinary members.
    await produce(cluster.bootstrap, cluster.topic, 300, partitions=PARTITIONS, seed=3)
    await converged(cluster.bootstrap, cluster.topic, [*hosts, zombie])
    await stop_all([*hosts, zombie])


async def test_new_host_joins_with_an_empty_file(cluster: Cluster) -> None:
    hosts = [cluster.host(0).start(), cluster.host(1).start()]
    async with cluster.traffic(seed=4).running():
        await wait_for_assignments(hosts, cluster.topic, PARTITIONS)
        ends = await cluster.ends()
        for h in hosts:
            await wait_for_positions(h.database, ends, 60, hosts)
        newcomer = cluster.host(2).start()
        owned = (await wait_for_assignments([*hosts, newcomer], cluster.topic, PARTITIONS))[2]
        assert owned, newcomer.log()[-3000:]
        # It claims its partitions where their changelogs left them, never at the input's start.
        await wait_for_log(newcomer, "claimed partitions held since the rebalance")
        offsets = claimed(newcomer, cluster.topic)
        assert offsets
        assert all(offset > 0 for offset in offsets.values()), offsets
        # Each earlier host keeps two of its three partitions (the assignor is sticky), and
        # their changelog producers: no InitProducerId, no restore.
        for h in hosts:
            await wait_for_log(h, "claiming 2 partitions: 2 changelog producers kept, 0 started")
    await converged(cluster.bootstrap, cluster.topic, [*hosts, newcomer])
    await stop_all([*hosts, newcomer])


async def test_input_deleted_below_every_position_then_a_host_replaced(cluster: Cluster) -> None:
    # --out-of-range fail: a partition read from an offset the input no longer has stops the
    # daemon (exit code) instead of starting it over quietly.
    strict = ("--out-of-range", "fail")
    hosts = [cluster.host(i, *strict).start() for i in range(3)]
    await wait_for_assignments(hosts, cluster.topic, PARTITIONS)
    await converged(cluster.bootstrap, cluster.topic, hosts)
    # Every position stands at the log's end: delete every record the hosts have counted.
    ends = await log_end_offsets(cluster.bootstrap, cluster.topic, isolation_level="read_committed")
    deleted = await read_committed(cluster.bootstrap, cluster.topic, ends)
    assert len(deleted) == BACKLOG
    await delete_records(cluster.bootstrap, cluster.topic, ends)

    async with cluster.traffic(seed=5).running():
        # Host 2 is lost with its disk: its partitions move to the others, which follow them.
        await hosts[2].kill()
        lose_file(host_database(cluster.workdir, 2))
        await wait_for_assignments(hosts[:2], cluster.topic, PARTITIONS)
        # A new host with an empty file and no standby takes its place: the partitions it is
        # given can only be restored from their changelogs.
        hosts[2] = cluster.host(2, *strict, "--standby", "none").start()
        owned = (await wait_for_assignments(hosts, cluster.topic, PARTITIONS))[2]
        assert owned
    await converged(cluster.bootstrap, cluster.topic, hosts[:2], deleted=deleted)
    await cluster.wait_at_end(hosts[2], owned, hosts)
    await assert_exactly_once(cluster.bootstrap, hosts[2].database, cluster.topic, deleted=deleted)
    for partition in owned:
        assert f"restored {cluster.topic}-{partition} from its changelog" in hosts[2].current_log()
    await stop_all(hosts)


async def test_broker_killed_and_restarted(
    cluster: Cluster, broker_control: AsyncBrokerControl
) -> None:
    hosts = [cluster.host(i).start() for i in range(3)]
    traffic = cluster.traffic(seed=6)
    async with traffic.running():
        await wait_for_assignments(hosts, cluster.topic, PARTITIONS)
        await wait_for_positions(hosts[0].database, await cluster.ends(), 60, hosts)
        await broker_control.kill()
        await asyncio.sleep(BROKER_DOWN_S)
        assert all(h.running() for h in hosts), logs(hosts)
        await broker_control.start()
        # Traffic again, after the restart, counted by the group rebuilt on the broker.
        await traffic.wait_for_more(int(2 * RATE))
    await converged(cluster.bootstrap, cluster.topic, hosts, timeout=120)
    await stop_all(hosts)


async def test_without_standbys_each_file_holds_what_its_host_claimed(cluster: Cluster) -> None:
    hosts = [cluster.host(i, "--standby", "none").start() for i in range(3)]
    async with cluster.traffic(seed=7).running():
        before = await wait_for_assignments(hosts, cluster.topic, PARTITIONS)
        await cluster.wait_at_end(hosts[1], before[1], hosts)
        await hosts[1].kill()
        moved = await wait_for_assignments([hosts[0], hosts[2]], cluster.topic, PARTITIONS)
        hosts[1].start()
        after = await wait_for_assignments(hosts, cluster.topic, PARTITIONS)
    for h, owned in zip(hosts, after, strict=True):
        await cluster.wait_at_end(h, owned, hosts)
    for h in hosts:
        # Only partitions this host claimed, each standing where the file's state stands. A
        # claim whose restore a rebalance cut short leaves the partition where the restore
        # stood, as the changelog's owner had it (a followed row): only one it began restoring.
        followed = [p for p, owner in owners(h.database, cluster.topic).items() if owner == STANDBY]
        for partition in followed:
            assert f"restoring {cluster.topic}-{partition} from its changelog" in h.log()
        await assert_exactly_once(cluster.bootstrap, h.database, cluster.topic)
    # A file keeps only what its host owns now. What a survivor took of the killed host's and
    # gave back, what the killed host owned and was not given again (and any partition a
    # host held for a moment as the group formed) is no longer kept there, and says so.
    took = [moved[0], set(), moved[1]]
    for h, held, was, now in zip(hosts, took, before, after, strict=True):
        found = roles(h.database, cluster.topic)
        expected = {
            p: "owns" if p in now else "unfollowed" for p in found.keys() | was | held | now
        }
        assert found == expected, f"{h.log_path.name}: {found} ({before}, {moved}, {after})"
    # The killed host's partitions were new (or stale) in the survivors' files: each was restored
    # from its changelog before it was consumed again.
    for partition in before[1]:
        new_owner = hosts[0] if partition in moved[0] else hosts[2]
        assert f"restored {cluster.topic}-{partition} from its changelog" in new_owner.log()
    await stop_all(hosts)


async def test_standby_count_keeps_each_partition_in_that_many_more_files(
    cluster: Cluster,
) -> None:
    hosts = [cluster.host(i, "--standby", "1").start() for i in range(3)]
    async with cluster.traffic(seed=9).running():
        await wait_for_assignments(hosts, cluster.topic, PARTITIONS)
        await wait_for_copies(hosts, cluster.topic, PARTITIONS, copies=2)
        await hosts[1].kill()
        survivors = [hosts[0], hosts[2]]
        await wait_for_assignments(survivors, cluster.topic, PARTITIONS)
        await wait_for_copies(survivors, cluster.topic, PARTITIONS, copies=2)
        hosts[1].start()
        await wait_for_assignments(hosts, cluster.topic, PARTITIONS)
        await wait_for_copies(hosts, cluster.topic, PARTITIONS, copies=2)
    for h in hosts:
        kept = [p for p, role in roles(h.database, cluster.topic).items() if role in KEPT]
        await cluster.wait_at_end(h, kept, hosts)
        # Exact in every partition it has a row of: those it keeps at the log's end, those it
        # no longer keeps as of the position they show.
        await assert_exactly_once(cluster.bootstrap, h.database, cluster.topic)
    # The survivors kept all six while host 1 was away; with it back, each keeps four (two it
    # owns, two it follows) and says the two others are no longer kept here.
    for h in survivors:
        found = sorted(str(role) for role in roles(h.database, cluster.topic).values())
        assert found == ["follows"] * 2 + ["owns"] * 2 + ["unfollowed"] * 2, found
        assert "no longer following" in h.log()
    await stop_all(hosts)


async def test_every_snapshot_of_every_file_shows_whole_batches(cluster: Cluster) -> None:
    # A backlog, so that the owners write batches as large as a fetch of the input allows.
    for burst in range(BURSTS):
        keys = (b"%0*d" % (KEY_BYTES, burst * BURST + i) for i in range(BURST))
        await produce_messages(
            cluster.bootstrap,
            cluster.topic,
            [(key, b"v", i % PARTITIONS) for i, key in enumerate(keys)],
            timeout=120,
        )
    # Every file is read meanwhile (the cluster's snapshot checker).
    checker = cluster.snapshots
    # Two hosts share the partitions and follow each other's as standbys...
    hosts = [cluster.host(i, *LARGE_BATCH).start() for i in range(2)]
    await wait_for_assignments(hosts, cluster.topic, PARTITIONS)
    await converged(cluster.bootstrap, cluster.topic, hosts, timeout=180)
    # ... then a host with an empty file restores what it claims, in chunks of the changelog.
    hosts.append(cluster.host(2, *LARGE_BATCH).start())
    await wait_for_assignments(hosts, cluster.topic, PARTITIONS)
    await converged(cluster.bootstrap, cluster.topic, hosts, timeout=180)
    assert checker.checked > 100, checker.checked
    assert checker.errors == []
    assert checker.violations == [], "\n".join(checker.violations[:20])
    await stop_all(hosts)
