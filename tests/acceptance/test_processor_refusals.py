"""What ``sqlstate run --changelog`` refuses at start, as users meet it: a ``--sql`` table keyed
without the partition, and a file that steps into sqlstate's name space. Each exits 2 with the
table or the file, line and reason, before the database is opened: no file is made. Without
``--changelog`` the table keyed without the partition counts as before (one file holds every
partition)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_for_positions
from tests.support.db import query_value
from tests.support.kafka import TopicFactory
from tests.support.workload import end_offsets, keyed_messages, produce_keyed

# Records per key over every partition: one row per key, written by every partition's owner.
TOTALS = """\
-- sqlstate: schema
CREATE TABLE totals (key PRIMARY KEY, n INTEGER NOT NULL);
-- sqlstate: record
INSERT INTO totals (key, n) VALUES (ifnull(:key, ''), 1)
ON CONFLICT (key) DO UPDATE SET n = n + 1;
-- sqlstate: forget
DELETE FROM totals WHERE :topic IS NULL AND :partition IS NULL;
"""
# Its own table, and a second one named like sqlstate's TEMP capture table, which an
# unqualified name would reach at run time.
SHADOW = """\
-- sqlstate: schema
CREATE TABLE seen (topic, partition, key, PRIMARY KEY (topic, partition, key));
CREATE TABLE changelog_capture (seq INTEGER PRIMARY KEY, key, value);
-- sqlstate: record
INSERT OR IGNORE INTO seen VALUES (:topic, :partition, :key);
-- sqlstate: forget
DELETE FROM seen WHERE topic = :topic AND partition = :partition;
"""


RECORDS = 200


@pytest.fixture
async def topic(kafka_bootstrap: str, topic_factory: TopicFactory) -> str:
    """Two partitions holding ``RECORDS`` records: what a run that started would write."""
    name = await topic_factory(partitions=2)
    await produce_keyed(kafka_bootstrap, name, keyed_messages(RECORDS, 2, keys=20))
    return name


def run_file(
    tmp_path: Path, bootstrap: str, topic: str, group_id: str, file: tuple[str, str], *args: str
) -> Daemon:
    """``sqlstate run --sql`` of ``file`` (its name and text) on ``tmp_path/state.db``."""
    name, text = file
    path = tmp_path / f"{name}.sql"
    path.write_text(text)
    database = tmp_path / "state.db"
    return Daemon(bootstrap, [topic], group_id, database, "--sql", str(path), *args, name=name)


async def refused(daemon: Daemon, messages: Sequence[str]) -> None:
    """``daemon`` exits 2 at start, saying ``messages``, and makes no database file."""
    assert await daemon.start().wait(60) == 2, daemon.log()[-3000:]
    log = daemon.current_log()
    for message in messages:
        assert message in log, log[-3000:]
    assert not daemon.database.exists()


async def test_a_file_in_sqlstates_name_space_is_refused_before_the_database_is_opened(
    tmp_path: Path, kafka_bootstrap: str, topic: str, group_id: str, daemons: list[Daemon]
) -> None:
    daemon = run_file(tmp_path, kafka_bootstrap, topic, group_id, ("shadow", SHADOW), "--changelog")
    daemons.append(daemon)
    path = tmp_path / "shadow.sql"
    await refused(daemon, [f"{path}, line 3): the name changelog_capture is sqlstate's"])


async def test_a_table_keyed_without_the_partition_still_counts_on_one_host(
    tmp_path: Path, kafka_bootstrap: str, topic: str, group_id: str, daemons: list[Daemon]
) -> None:
    changelog = run_file(
        tmp_path, kafka_bootstrap, topic, group_id, ("totals", TOTALS), "--changelog"
    )
    daemons.append(changelog)
    await refused(
        changelog,
        [
            f"processor totals (--sql {tmp_path / 'totals.sql'}): under --changelog, table totals"
            " (keyed by key) must be keyed by the partition too",
            "Add a column partition",
        ],
    )
    single = run_file(tmp_path, kafka_bootstrap, topic, group_id, ("totals", TOTALS))
    daemons.append(single)
    single.start()
    database = single.database
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 60, [single])
    assert query_value(database, "SELECT sum(n) FROM totals") == RECORDS
    assert await single.terminate() == 0
