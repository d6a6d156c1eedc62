"""Read your writes against a running daemon: a service produces, then waits with ``sqlstate
wait`` or ``sqlstate.wait_for`` until the file holds its record, and reads it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer

import sqlstate
from sqlstate.changelog.topics import changelog_topic
from tests.support.daemon import Daemon, stored_positions
from tests.support.db import query_value
from tests.support.hosts import STANDBY, host, owners, wait_for_assignments
from tests.support.kafka import TopicFactory, delete_topics, started


async def sqlstate_command(*arguments: str) -> tuple[int, str, str]:
    """``sqlstate ARGUMENTS`` as a user runs it: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sqlstate",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def key_count(database: Path, topic: str, key: str) -> int:
    return int(
        query_value(
            database,
            "SELECT coalesce(sum(count), 0) FROM counts WHERE topic = ? AND key = ?",
            (topic, key),
        )
    )


async def test_a_service_reads_its_writes(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=2)
    database = tmp_path / "state.db"
    daemon = Daemon(kafka_bootstrap, [topic], group_id, database).start()
    daemons.append(daemon)
    # The file exists from then on: a wait on a file that does not exist is an error (exit 3).
    await daemon.wait_for_log("assigned partitions: ")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    async with started(producer):
        # The Python helper, with the RecordMetadata the producer returns.
        first = await producer.send_and_wait(topic, b"v", key=b"first", partition=1)
        waits = await sqlstate.wait_for(database, first, timeout=60)
        assert waits[0].applied
        assert key_count(database, topic, "first") == 1  # read right after: it is there
        second = await producer.send_and_wait(topic, b"v", key=b"second", partition=0)

    # The command, with what the producer said.
    code, out, err = await sqlstate_command(
        "wait",
        "--database",
        str(database),
        "--until",
        f"{topic}:{second.partition}:{second.offset},{topic}:{first.partition}:{first.offset}",
        "--timeout",
        "30s",
        "--json",
    )
    assert code == 0, err
    assert key_count(database, topic, "second") == 1
    # Nothing more is produced: the file stands where the wait saw it.
    stored = stored_positions(database)
    assert [(r["partition"], r["next_offset"], r["applied"]) for r in json.loads(out)] == [
        (0, stored[(topic, 0)], True),
        (1, stored[(topic, 1)], True),
    ]

    # counts --json: each row with the positions it was counted at, which are the file's.
    code, out, err = await sqlstate_command("counts", "--database", str(database), "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert {r["key"] for r in rows} == {"first", "second"}
    for row in rows:
        assert {(p["topic"], p["partition"]): p["next_offset"] for p in row["positions"]} == stored

    # A record not produced yet: exit 124 once the timeout passed, and where the file stands.
    began = time.monotonic()
    code, out, err = await sqlstate_command(
        "wait", "--database", str(database), "--until", f"{topic}:0:{second.offset + 5}",
        "--timeout", "2s",
    )  # fmt: skip
    took = time.monotonic() - began
    assert code == 124, err
    assert 2 <= took < 10  # the timeout, plus starting Python
    assert f"{topic}:0 stands at {stored[(topic, 0)]}, not past {second.offset + 5}" in err


async def test_a_wait_on_a_standby_waits_for_the_owners_state(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """Under --changelog each file follows the partition the other host owns: its position
    there is the one published with the changelog transactions applied to it."""
    topic = await topic_factory(partitions=2)
    hosts = [host(kafka_bootstrap, topic, group_id, tmp_path, i).start() for i in range(2)]
    daemons.extend(hosts)
    try:
        owned = await wait_for_assignments(hosts, topic, 2)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        async with started(producer):
            written = [
                await producer.send_and_wait(topic, b"v", key=f"k{p}".encode(), partition=p)
                for p in (0, 1)
            ]
        for h, mine in zip(hosts, owned, strict=True):
            await sqlstate.wait_for(h.database, written, timeout=60)
            assert [key_count(h.database, topic, f"k{p}") for p in (0, 1)] == [1, 1]
            followed = {p for p, owner in owners(h.database, topic).items() if owner == STANDBY}
            assert followed == {0, 1} - mine
    finally:
        for h in hosts:
            await h.stop_quietly()
        with contextlib.suppress(Exception):
            await delete_topics(kafka_bootstrap, [changelog_topic(group_id, topic)])
