"""The isolation level is part of the state: counts made under read_uncommitted include records of
aborted transactions, so a database is only ever continued with the level it was counted with."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.support.daemon import Daemon, wait_for_positions
from tests.support.db import query
from tests.support.kafka import TopicFactory
from tests.support.oracle import assert_exactly_once
from tests.support.workload import database_digests, end_offsets, keyed_messages, produce_keyed


async def count_to_the_end(daemon: Daemon, bootstrap: str, topic: str) -> None:
    daemon.start()
    await wait_for_positions(daemon.database, await end_offsets(bootstrap, topic), 90, [daemon])
    assert await daemon.terminate() == 0


async def refused(daemon: Daemon, recorded: str) -> None:
    """``daemon`` asks for the other level: exit 2, a message saying how to rebuild, and the
    database as it was."""
    before = database_digests(daemon.database)
    assert await daemon.start().wait(60) == 2, daemon.log()[-3000:]
    log = daemon.current_log()
    database = daemon.database
    assert f"the counts in {database} were made with --isolation-level {recorded}" in log
    assert f"Run with --isolation-level {recorded}, or move {database} away" in log
    assert database_digests(daemon.database) == before


def recorded_level(database: Path) -> list[tuple[str]]:
    rows = query(database, "SELECT value FROM state_settings WHERE name = 'isolation_level'")
    return [(value,) for (value,) in rows]


async def test_another_isolation_level_is_refused(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, daemons: list[Daemon]
) -> None:
    topic = await topic_factory(partitions=2)
    await produce_keyed(kafka_bootstrap, topic, keyed_messages(1_000, partitions=2, seed=21))
    database = tmp_path / "state.db"
    daemon = Daemon(kafka_bootstrap, [topic], f"g-{topic}", database)
    daemons.append(daemon)
    await count_to_the_end(daemon, kafka_bootstrap, topic)
    assert recorded_level(database) == [("read_committed",)]

    other = Daemon(
        kafka_bootstrap,
        [topic],
        f"g-{topic}",
        database,
        "--isolation-level",
        "read_uncommitted",
        name="other",
    )
    daemons.append(other)
    await refused(other, "read_committed")

    # With the recorded level it goes on, exactly.
    await produce_keyed(kafka_bootstrap, topic, keyed_messages(500, partitions=2, seed=22))
    await count_to_the_end(daemon, kafka_bootstrap, topic)
    await assert_exactly_once(kafka_bootstrap, database, topic)


def as_made_by_the_previous_release(database: Path) -> None:
    """Take away what the previous release's schema does not have: no topic IDs, no level, no
    record of processors, no changelog offsets or changelog topic IDs, no recorded starts."""
    conn = sqlite3.connect(database)
    try:
        with conn:
            # The progress view names the start columns; the migrations that follow 0001 drop
            # it and create it again, so a stand-in is all they need here.
            conn.execute("DROP VIEW progress")
            conn.execute("ALTER TABLE positions DROP COLUMN start_offset")
            conn.execute("ALTER TABLE positions DROP COLUMN start_from")
            conn.execute("CREATE VIEW progress AS SELECT * FROM positions")
            conn.execute("DROP TABLE topic_starts")
            conn.execute("DROP TABLE topics")
            conn.execute("DROP TABLE state_settings")
            conn.execute("DROP TABLE topic_processors")
            conn.execute("DROP TABLE rejected_records")
            conn.execute("DROP TABLE changelog_offsets")
            conn.execute("DROP TABLE changelog_topics")
            conn.execute("DROP TABLE processor_definitions")
            conn.execute("DROP TABLE changelog_seeds")
            conn.execute("DELETE FROM schema_migrations WHERE name != '0001_initial.sql'")
    finally:
        conn.close()


async def test_a_database_of_the_previous_release_takes_the_level_of_its_first_run(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, daemons: list[Daemon]
) -> None:
    topic = await topic_factory(partitions=2)
    await produce_keyed(kafka_bootstrap, topic, keyed_messages(1_000, partitions=2, seed=23))
    database = tmp_path / "state.db"
    uncommitted = ("--isolation-level", "read_uncommitted")
    daemon = Daemon(kafka_bootstrap, [topic], f"g-{topic}", database, *uncommitted)
    daemons.append(daemon)
    await count_to_the_end(daemon, kafka_bootstrap, topic)
    as_made_by_the_previous_release(database)

    # Its first run under this release records its level and the topic's ID, and counts on.
    await produce_keyed(kafka_bootstrap, topic, keyed_messages(500, partitions=2, seed=24))
    await count_to_the_end(daemon, kafka_bootstrap, topic)
    assert recorded_level(database) == [("read_uncommitted",)]
    assert query(database, "SELECT topic FROM topics") == [(topic,)]
    await assert_exactly_once(kafka_bootstrap, database, topic)

    committed = Daemon(kafka_bootstrap, [topic], f"g-{topic}", database, name="committed")
    daemons.append(committed)
    await refused(committed, "read_uncommitted")
