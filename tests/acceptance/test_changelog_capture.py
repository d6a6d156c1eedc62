"""Rows that ``INSERT OR REPLACE`` deletes through a second UNIQUE index reach every host.

Two hosts (``--changelog --standby all``, one group, two files) run a ``--sql`` processor whose
accounts move an email from one account to another with ``INSERT OR REPLACE`` (the other
account's row is deleted), and whose triggers keep a count and the accounts' sessions in two
more tables. The second host joins while the first runs, so partitions relocate and each host
follows the other's. Both files end at the log's end with the state the oracle makes of the
records, equal row for row, and no host exits: a standby that missed a deleted row would fail
on the UNIQUE index (exit code 3) at the same changelog offset on every restart.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlstate.changelog.topics import changelog_topic
from sqlstate.processors.base import Record
from tests.support.daemon import Daemon, wait_for_positions
from tests.support.db import query
from tests.support.hosts import host, host_database, logs
from tests.support.kafka import TopicFactory, delete_topics, produce
from tests.support.oracle import Row, check
from tests.support.workload import end_offsets
from tests.unit.test_changelog_capture import (
    ACCOUNTS,
    DERIVED,
    INSERT_OR_REPLACE,
    expected_accounts,
    sql_file,
)

PARTITIONS = 4
RECORDS = 600  # in two halves: before the second host joins, and while both run


@dataclass
class Accounts:
    """The processor's accounts, and the per-partition count its triggers keep."""

    name: str = "accounts"

    def expected(self, records: Sequence[Record]) -> Counter[Row]:
        accounts = expected_accounts(records, upsert=False)
        members = Counter(row[1] for row in accounts)
        return Counter([row[1:] for row in accounts] + [("members", *m) for m in members.items()])

    def stored(self, conn: sqlite3.Connection, topic: str) -> Counter[Row]:
        accounts = conn.execute(
            "SELECT partition, id, email, since FROM accounts WHERE topic = ?", (topic,)
        ).fetchall()
        members = conn.execute(
            "SELECT 'members', partition, n FROM members WHERE topic = ? AND n > 0", (topic,)
        ).fetchall()
        return Counter(tuple(row) for row in [*accounts, *members])


def messages(first: int, count: int) -> list[tuple[bytes, bytes, int]]:
    """Round robin over the partitions; in each, ids a0..a5 taking emails e0..e3 in turn, so
    that most records move an email from one account to another."""
    return [
        (f"a{n // PARTITIONS % 6}".encode(), f"e{n // PARTITIONS * 7 % 4}".encode(), n % PARTITIONS)
        for n in range(first, first + count)
    ]


async def test_replaced_rows_reach_every_host_and_no_host_fails(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=PARTITIONS)
    try:
        await _run_two_hosts(tmp_path, kafka_bootstrap, topic, group_id, daemons)
    finally:
        # Changelog topics are not the topic factory's; a long-lived broker should not keep them.
        with contextlib.suppress(Exception):
            await delete_topics(kafka_bootstrap, [changelog_topic(group_id, topic)])


async def _run_two_hosts(
    tmp_path: Path, kafka_bootstrap: str, topic: str, group_id: str, daemons: list[Daemon]
) -> None:
    processor = tmp_path / "accounts.sql"
    processor.write_text(sql_file(ACCOUNTS + DERIVED, INSERT_OR_REPLACE))
    args = ("--sql", str(processor), "--standby", "all")
    hosts = [host(kafka_bootstrap, topic, group_id, tmp_path, n, *args) for n in range(2)]
    daemons.extend(hosts)
    await produce(kafka_bootstrap, topic, messages(0, RECORDS // 2))
    hosts[0].start()
    await hosts[0].wait_for_log("claimed partitions", timeout=60)
    hosts[1].start()
    await hosts[1].wait_for_log("claimed partitions", timeout=60)
    await produce(kafka_bootstrap, topic, messages(RECORDS // 2, RECORDS // 2))

    targets = await end_offsets(kafka_bootstrap, topic)
    for h in hosts:
        await wait_for_positions(h.database, targets, 90, hosts)
    assert all(h.running() for h in hosts), logs(hosts)
    for h in hosts:
        verdict = await check(kafka_bootstrap, h.database, topic, models=[Accounts()])
        assert verdict.read_back == RECORDS, h.database.name
        assert verdict.ok, f"{h.database.name}: {verdict.describe()}"
    # Six ids share four emails in each partition: at least two accounts of each were deleted
    # by a REPLACE, and more than one is left.
    accounts = query(host_database(tmp_path, 0), "SELECT count(*) FROM accounts")[0][0]
    assert PARTITIONS < accounts <= 4 * PARTITIONS
    for table in ("accounts", "members", "sessions"):
        sql = f"SELECT * FROM {table} ORDER BY 1, 2, 3"
        assert query(host_database(tmp_path, 0), sql) == query(host_database(tmp_path, 1), sql)
    for h in hosts:
        # 0 only for a host that ran until now: one that failed earlier exited with its code.
        assert await h.terminate() == 0, logs(hosts)
