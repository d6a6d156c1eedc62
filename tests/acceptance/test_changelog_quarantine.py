"""Records written straight into a changelog topic, by anyone who can write it, while two hosts
follow each other's partitions as standbys (docs/scaling.md, "Untrusted changelog records").

Each host owns one partition of the input and follows the other's changelog. A transaction of
crafted records goes into both changelog partitions: a row of a table no processor keeps, a row
of sqlstate's positions, a value that is not a row, an integer of 2**64, a NUL in a column name,
a key that disagrees with its row, a dead letter and a count of the other partition, a position
past the input's end and one that goes back. Then more input. Every crafted record must be set
aside (counted, logged, ``/healthz`` degraded but healthy), the hosts must keep following (the
later batches reach both files), and every file must hold exactly the state the input makes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sqlstate.changelog.records import position_record
from sqlstate.changelog.topics import changelog_topic
from tests.acceptance.test_operations import endpoint, eventually, health, scrape
from tests.support.daemon import Daemon
from tests.support.db import query
from tests.support.faults import produce
from tests.support.hosts import converged, host, logs, wait_for_assignments
from tests.support.kafka import Message, TopicFactory, delete_topics, produce_transaction

PARTITIONS = 2
OBSERVED = ("--metrics-port", "0")
QUARANTINED = "sqlstate_changelog_quarantined_records_total"
# Why each crafted record is set aside, as logged.
REASONS = [
    "table 'latest' is not a state table",
    "table 'positions' is not a state table",
    "the value is not a JSON object",
    "SQLite refused it: Python int too large",
    "unknown: 'c\\x00'",
    "is not the key of its row",
    "its row belongs to partition",
    "lies past the end of",
    "position 1 goes back",
]


def crafted(topic: str, partition: int) -> list[tuple[bytes, bytes]]:
    """Records for the changelog of input partition ``partition`` that no owner writes."""
    other = 1 - partition
    row = b'{"topic":"%s","partition":%d,"key":"k%s","count":%s}'
    name = topic.encode()
    return [
        (b'["latest","%s",%d,"k"]' % (name, partition), b"{}"),
        (b'["positions","%s",%d]' % (name, partition), b'{"next_offset":0}'),
        (b'["key_counts","%s",%d,"list"]' % (name, partition), b"[1]"),
        (
            b'["key_counts","%s",%d,"khuge"]' % (name, partition),
            row % (name, partition, b"huge", b"18446744073709551616"),
        ),
        (
            b'["key_counts","%s",%d,"knul"]' % (name, partition),
            b'{"topic":"%s","partition":%d,"key":"knul","count":1,"c\\u0000":1}'
            % (name, partition),
        ),
        (
            b'["key_counts","%s",%d,"k1"]' % (name, partition),
            row % (name, partition, b"2", b"5"),
        ),
        (
            b'["key_counts","%s",%d,"k1"]' % (name, other),
            row % (name, other, b"1", b"1000"),
        ),
        (
            b'["rejected_records","%s",%d,0]' % (name, other),
            b'{"topic":"%s","partition":%d,"offset":0,"key":null,"value":null,"error":"x","processor":null}'
            % (name, other),
        ),
        position_record(10**12),
        position_record(1),
    ]


@pytest.fixture
async def hosts(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    daemons: list[Daemon],
) -> AsyncIterator[tuple[str, list[Daemon]]]:
    """Two hosts serving /metrics and /healthz, each owning one partition of a new topic."""
    topic = await topic_factory(PARTITIONS)
    await produce(kafka_bootstrap, topic, 200, partitions=PARTITIONS, seed=1)
    made = [
        host(kafka_bootstrap, topic, group_id, tmp_path, i, *OBSERVED).start()
        for i in range(PARTITIONS)
    ]
    daemons.extend(made)
    yield topic, made
    for daemon in made:
        await daemon.stop_quietly()
    with contextlib.suppress(Exception):
        await delete_topics(kafka_bootstrap, [changelog_topic(group_id, topic)])


async def test_crafted_changelog_records_are_set_aside_and_following_goes_on(
    kafka_bootstrap: str, group_id: str, hosts: tuple[str, list[Daemon]]
) -> None:
    topic, made = hosts
    owned = await wait_for_assignments(made, topic, PARTITIONS)
    assert all(len(partitions) == 1 for partitions in owned), owned
    await converged(kafka_bootstrap, topic, made)
    bases = [await endpoint(h) for h in made]

    changelog = changelog_topic(group_id, topic)
    for partition in range(PARTITIONS):
        records = [Message(key, value, partition) for key, value in crafted(topic, partition)]
        await produce_transaction(kafka_bootstrap, changelog, records)
    # The owners go on: their next batches reach the other host's file through the changelogs.
    await produce(kafka_bootstrap, topic, 300, partitions=PARTITIONS, seed=2)
    await converged(kafka_bootstrap, topic, made)

    # Each host sets aside the crafted records of the changelog it follows; those of a changelog
    # it was restoring, or followed, at a rebalance, too (each time it reads them).
    expected = len(crafted(topic, 0))
    for h, base in zip(made, bases, strict=True):

        async def quarantined(h: Daemon = h, base: str = base) -> bool:
            # /healthz follows the monitor's tick, once a second.
            degraded = (await health(base))[1].get("degraded") or ""
            counted = (await scrape(base)).get((QUARANTINED, ()))
            logged = h.current_log().count("set aside, not applied")
            return logged >= expected and counted == logged and f"{logged} changelog" in degraded

        await eventually(quarantined, 30, f"at least {expected} records set aside", h)
        status, answer = await health(base)
        assert status == 200, answer
        assert answer["healthy"], answer
        log = h.current_log()
        for reason in REASONS:
            assert reason in log, (reason, logs(made))
        assert "Traceback" not in log
        assert query(h.database, "SELECT count(*) FROM rejected_records") == [(0,)]
