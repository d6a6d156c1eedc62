"""Every kind of state exact under the faults the counts survive, against the real broker.

One daemon keeps four processors at once, ``counts``, ``latest``, ``windowed-counts`` and the
SQL example (``examples/customer_totals.sql``: a sum of a JSON field per customer), over order
events that hold bad JSON, tombstones and late records (``tests/support/orders.py``). Each test
ends with the oracle applied to every processor's state (``tests/support/oracle.py``): lost = 0
and duplicated = 0 for each, and ``rejected_records`` holding exactly the records that did not
decode under ``dead-letter`` (none under ``skip``).

- kill -9, again and again, while records arrive (``skip``);
- three members on one file, one of them frozen with SIGSTOP before its commit until the group
  expels it (a zombie, fenced when it resumes), another killed and restarted (``dead-letter``);
- records deleted below a stored position while the daemon is down: the out-of-range reset
  forgets that partition in every processor and rebuilds it (``dead-letter``);
- ``fail``: exit code 8 at the first bad record, its batch not committed; the state up to the
  stored positions still exact; a restart with ``skip`` carries on;
- a database made by the release before processors: counting goes on unchanged.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

from aiokafka import TopicPartition

from tests.acceptance.test_faults_of_input import delete_below
from tests.support.daemon import Daemon, stored_positions, wait_for_progress
from tests.support.db import query
from tests.support.faults import ROOT, caught_up, daemon, wait_for_log, wait_stopped
from tests.support.kafka import TopicFactory
from tests.support.oracle import (
    Counts,
    CustomerAmounts,
    Latest,
    Model,
    Rejected,
    WindowedCounts,
    assert_exactly_once,
    json_value,
)
from tests.support.orders import RETENTION, RETENTION_MS, WINDOW, WINDOW_MS, produce_orders
from tests.support.workload import end_offsets

SQL_EXAMPLE = ROOT / "examples" / "customer_totals.sql"
RELEASE_DATABASE = ROOT / "tests" / "fixtures" / "release-0.1.0.db"


def processor_args(policy: str) -> tuple[str, ...]:
    return (
        *("--processor", "counts", "--processor", "latest", "--processor", "windowed-counts"),
        *("--window", WINDOW, "--retention", RETENTION, "--sql", str(SQL_EXAMPLE)),
        *("--value-format", "json", "--on-bad-record", policy),
    )


def models(policy: str) -> Sequence[Model]:
    return (
        Counts(json_value),
        Latest(json_value),
        WindowedCounts(WINDOW_MS, RETENTION_MS, json_value),
        CustomerAmounts(json_value),
        Rejected(json_value, dead_letter=policy == "dead-letter"),
    )


async def test_kill_9_again_and_again(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    victim = daemon(kafka_bootstrap, topic, group_id, database, *processor_args("skip"))
    producing = asyncio.create_task(
        produce_orders(kafka_bootstrap, topic, 2_400, partitions=3, seed=1, rate=1_500)
    )
    try:
        for round_ in range(3):
            victim.start()
            await victim.wait_for_log("assigned partitions: ", timeout=60)
            await wait_for_progress(database, 400 * (round_ + 1), timeout=60)
            await victim.kill()
        await producing
        victim.start()
        # The file may hold every record already (the last round can consume them all before
        # its kill): wait for this process itself, so that the SIGTERM below finds it running
        # and not still starting, before it takes signals.
        await victim.wait_for_log("assigned partitions: ", timeout=60)
        verdict = await caught_up(kafka_bootstrap, database, topic, [victim], models=models("skip"))
        assert verdict.read_back == 2_400
        assert "do not decode, left out" in victim.log()
        assert "records copied as ConsumerRecords" in victim.log()  # JSON values, a SQL file
        assert await victim.terminate() == 0
    finally:
        producing.cancel()
        await victim.stop_quietly()


async def test_three_members_a_zombie_and_a_kill_on_one_file(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = await topic_factory(partitions=4)
    database = tmp_path / "state.db"
    await produce_orders(kafka_bootstrap, topic, 1_600, partitions=4, seed=2)
    args = processor_args("dead-letter")
    zombie = daemon(
        kafka_bootstrap, topic, group_id, database, *args, name="zombie",
        fault="before_commit", at=3, action="stop",
    )  # fmt: skip
    second = daemon(kafka_bootstrap, topic, group_id, database, *args, name="second")
    third = daemon(kafka_bootstrap, topic, group_id, database, *args, name="third")
    members = [zombie, second, third]
    try:
        zombie.start()
        await wait_stopped(zombie)
        # The others join; the group waits for the frozen member, expels it, and splits its
        # partitions between them.
        second.start()
        third.start()
        await wait_for_progress(database, 900, timeout=60)
        await second.kill()
        second.start()
        assert zombie.process is not None
        zombie.process.send_signal(signal.SIGCONT)
        await wait_for_log(zombie, "fenced on ")
        await produce_orders(kafka_bootstrap, topic, 400, partitions=4, seed=3, first=1_600)
        verdict = await caught_up(
            kafka_bootstrap, database, topic, members, models=models("dead-letter")
        )
        assert verdict.read_back == 2_000
        assert query(database, "SELECT count(*) FROM rejected_records")[0][0] > 0
        for member in members:
            assert await member.terminate() == 0
    finally:
        for member in members:
            await member.stop_quietly()


async def test_an_out_of_range_reset_rebuilds_every_processor(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = await topic_factory(partitions=2)
    database = tmp_path / "state.db"
    await produce_orders(kafka_bootstrap, topic, 800, partitions=2, seed=4)
    args = processor_args("dead-letter")
    first = daemon(kafka_bootstrap, topic, group_id, database, *args)
    try:
        first.start()
        await caught_up(kafka_bootstrap, database, topic, [first], models=models("dead-letter"))
        assert await first.terminate() == 0
        # While it is down: more records, and partition 0 loses everything below an offset
        # past its stored position.
        await produce_orders(kafka_bootstrap, topic, 400, partitions=2, seed=5, first=800)
        cut = stored_positions(database)[(topic, 0)] + 100
        await delete_below(kafka_bootstrap, TopicPartition(topic, 0), cut)
        first.start()
        verdict = await caught_up(
            kafka_bootstrap, database, topic, [first], models=models("dead-letter")
        )
        assert "discarded the partition's state" in first.log()
        assert verdict.read_back == 1_200 - cut
        assert await first.terminate() == 0
    finally:
        await first.stop_quietly()


async def test_fail_stops_before_the_bad_batch_and_a_restart_can_skip_it(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = await topic_factory(partitions=2)
    database = tmp_path / "state.db"
    await produce_orders(kafka_bootstrap, topic, 600, partitions=2, seed=6)
    strict = daemon(kafka_bootstrap, topic, group_id, database, *processor_args("fail"))
    lenient = daemon(
        kafka_bootstrap, topic, group_id, database, *processor_args("skip"), name="lenient"
    )
    try:
        strict.start()
        assert await strict.wait(60) == 8
        assert "--on-bad-record fail" in strict.log()
        # What was committed before the bad batch is exact, and no bad record is below the
        # stored positions.
        positions = stored_positions(database)
        ends = await end_offsets(kafka_bootstrap, topic)
        assert all(positions[tp] < ends[tp] for tp in ends)
        verdict = await assert_exactly_once(kafka_bootstrap, database, topic, models("fail"))
        assert verdict.read_back < 600

        lenient.start()
        verdict = await caught_up(
            kafka_bootstrap, database, topic, [lenient], models=models("skip")
        )
        assert verdict.read_back == 600
        assert await lenient.terminate() == 0
    finally:
        await strict.stop_quietly()
        await lenient.stop_quietly()


async def test_a_database_of_the_release_before_processors_counts_on(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = await topic_factory(partitions=3)
    database = tmp_path / "old.db"
    shutil.copyfile(RELEASE_DATABASE, database)
    before = query(database, "SELECT * FROM key_counts ORDER BY 1, 2, 3")
    await produce_orders(kafka_bootstrap, topic, 300, partitions=3, seed=7)
    plain = Daemon(kafka_bootstrap, [topic], group_id, database).start()
    try:
        await caught_up(kafka_bootstrap, database, topic, [plain])
        assert await plain.terminate() == 0
    finally:
        await plain.stop_quietly()
    assert query(database, "SELECT * FROM key_counts WHERE topic = 'orders' ORDER BY 1, 2, 3") == (
        before
    )
    # A processor added to the old topic would miss its first 300 records: refused, before
    # anything else is asked of Kafka or written.
    added = Daemon(
        kafka_bootstrap, ["orders"], group_id, database, "--processor", "counts",
        "--processor", "latest", name="added",
    ).start()  # fmt: skip
    assert await added.wait(30) == 2
    assert "kept by processors counts, and this run has counts, latest" in added.log()
    # (The refusal rolled back everything, the record of the old topic's counts included.)
    assert query(database, "SELECT topic, processor FROM topic_processors") == [(topic, "counts")]
