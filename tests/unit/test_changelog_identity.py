"""Identity under ``--changelog``, without Kafka: position records carry the input topic's ID
(and records written before they did are still read), a position of another incarnation of the
input is refused with nothing written, and a file records the changelog topic's ID it applied
and refuses another one."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from sqlstate.changelog.apply import apply_changes
from sqlstate.changelog.identity import check_identity
from sqlstate.changelog.offsets import changelog_offset
from sqlstate.changelog.records import POSITION_KEY, PositionChange, decode, position_record
from sqlstate.changelog.tables import state_tables
from sqlstate.errors import ChangelogLostError, ProcessorError
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.registry import Processors
from sqlstate.state.database import utc_now
from sqlstate.state.out_of_range import LogBounds
from sqlstate.state.store import Store
from tests.support.db import query
from tests.support.processing import open_store

T0 = TopicPartition("t", 0)
CHANGELOG = "g.t.changelog"
# Topic IDs as Kafka writes them: URL-safe base64 of 16 bytes, 22 characters.
OLD_ID = "vQ4Kq0sQQ3iEhgmkZc2bQw"
NEW_ID = "Xy-_7tqMRUqmO3bq1V9qXg"
ROW = (b'["key_counts","t",0,"k"]', b'{"topic":"t","partition":0,"key":"k","count":3}')
# Everything a check must leave as it was when it refuses.
STATE = (
    "SELECT 'count', * FROM key_counts",
    "SELECT 'position', topic, partition, next_offset FROM positions",
    "SELECT 'offset', * FROM changelog_offsets",
    "SELECT 'topic', topic, topic_id FROM topics",
    "SELECT 'changelog', topic, changelog, topic_id FROM changelog_topics",
)


def test_the_position_record_carries_the_input_topic_id() -> None:
    assert position_record(12, OLD_ID) == (
        POSITION_KEY,
        b'{"next_offset":12,"topic_id":"%s"}' % OLD_ID.encode(),
    )
    assert decode(*position_record(12, OLD_ID)) == PositionChange(12, OLD_ID)
    # Written before positions carried the ID (or where Kafka gives none): read as before.
    assert position_record(12) == (POSITION_KEY, b'{"next_offset":12}')
    assert decode(POSITION_KEY, b'{"next_offset":12}') == PositionChange(12, None)
    for value in [b'{"next_offset":12,"topic_id":7}', b"[12]", b'"x"']:
        with pytest.raises(ProcessorError, match="cannot read"):
            decode(POSITION_KEY, value)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    processors = Processors.checked([KeyCounter()])
    opened = await open_store(tmp_path / "s.db", processors)
    try:
        yield opened
    finally:
        await opened.database.close()
        processors.close()


async def apply(store: Store, records: list[tuple[bytes, bytes | None]]) -> None:
    """Apply ``records`` as the changelog's next ones, after what the file applied."""
    first = await store.database.read(functools.partial(changelog_offset, tp=T0))
    await store.database.transaction(
        functools.partial(
            apply_changes,
            topic=T0.topic,
            partition=T0.partition,
            records=[(key, value, first + n) for n, (key, value) in enumerate(records)],
            tables=state_tables([KeyCounter()]),
            now=utc_now(),
        )
    )


async def check(store: Store, changelog: str, changelog_id: str | None, input_id: str) -> None:
    await store.database.transaction(
        functools.partial(
            check_identity,
            topic=T0.topic,
            changelog=changelog,
            changelog_id=changelog_id,
            input_id=input_id,
            now=utc_now(),
        )
    )


def state(path: Path) -> list[tuple[object, ...]]:
    return [row for statement in STATE for row in query(path, statement)]


async def test_a_position_of_another_incarnation_of_the_input_is_refused(
    store: Store, tmp_path: Path
) -> None:
    # The file counts t under OLD_ID (its first claim recorded it), and has applied a batch.
    processors = Processors.checked([KeyCounter()])
    try:
        await store.claim(
            {T0: LogBounds(0, 0)},
            "me",
            "fail",
            processors.forget,
            topic_ids={"t": OLD_ID},
            isolation_level="read_committed",
        )
    finally:
        processors.close()
    await apply(store, [ROW, position_record(3, OLD_ID)])
    before = state(tmp_path / "s.db")

    with pytest.raises(ChangelogLostError, match=f"with ID {NEW_ID}.*counts t with ID {OLD_ID}"):
        await apply(store, [ROW, position_record(9, OLD_ID), ROW, position_record(12, NEW_ID)])
    assert state(tmp_path / "s.db") == before
    assert ChangelogLostError.exit_code == 5

    # A changelog written before positions carried the ID is applied as before.
    await apply(store, [ROW, position_record(3, OLD_ID), ROW, position_record(5)])
    assert query(tmp_path / "s.db", "SELECT next_offset FROM positions") == [(5,)]


async def test_a_file_without_an_input_id_takes_the_first_positions(
    store: Store, tmp_path: Path
) -> None:
    await apply(store, [ROW, position_record(3, OLD_ID)])
    assert query(tmp_path / "s.db", "SELECT topic, topic_id FROM topics") == [("t", OLD_ID)]
    with pytest.raises(ChangelogLostError):
        await apply(store, [position_record(9, NEW_ID)])


async def test_the_changelog_topic_id_is_recorded_then_checked(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "s.db"
    # First restore or standby start: both IDs recorded.
    await check(store, CHANGELOG, OLD_ID, NEW_ID)
    assert query(path, "SELECT topic, changelog, topic_id FROM changelog_topics") == [
        ("t", CHANGELOG, OLD_ID)
    ]
    assert query(path, "SELECT topic, topic_id FROM topics") == [("t", NEW_ID)]
    await check(store, CHANGELOG, OLD_ID, NEW_ID)  # the same incarnation: fine
    before = state(path)

    with pytest.raises(ChangelogLostError, match=f"has ID {NEW_ID}.*applied the one with ID"):
        await check(store, CHANGELOG, NEW_ID, NEW_ID)
    with pytest.raises(ChangelogLostError, match="another group's changelog"):
        await check(store, "other.t.changelog", OLD_ID, NEW_ID)
    assert state(path) == before
    # The input topic's ID is the claim's to check: a restore never overwrites it.
    await check(store, CHANGELOG, OLD_ID, OLD_ID)
    assert query(path, "SELECT topic, topic_id FROM topics") == [("t", NEW_ID)]


async def test_a_changelog_recorded_without_an_id_gets_it_when_kafka_gives_one(
    store: Store, tmp_path: Path
) -> None:
    await check(store, CHANGELOG, None, OLD_ID)
    await check(store, CHANGELOG, NEW_ID, OLD_ID)
    assert query(tmp_path / "s.db", "SELECT topic_id FROM changelog_topics") == [(NEW_ID,)]
    with pytest.raises(ChangelogLostError):
        await check(store, CHANGELOG, OLD_ID, OLD_ID)
