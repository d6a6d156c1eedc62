"""``--start-from``: the flag read, and the claim that uses it on a real SQLite file (a start
applies only to a partition the file has no row for, is recorded with it, and a partition
added to its topic later starts at its earliest offset)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from click.testing import CliRunner

from sqlstate.cli.commands import main
from sqlstate.kafka.starts import utc_text
from sqlstate.settings import StartPoint, start_point
from sqlstate.state.out_of_range import LogBounds
from sqlstate.state.start import Start
from tests.support.db import query
from tests.unit.test_store import claim_all, open_store

TP = TopicPartition("orders", 0)
OTHER = TopicPartition("orders", 1)


@pytest.mark.parametrize(
    ("text", "point"),
    [
        ("earliest", StartPoint("earliest")),
        ("latest", StartPoint("latest")),
        ("-2h", StartPoint("timestamp", ago_ms=7_200_000)),
        ("-7d", StartPoint("timestamp", ago_ms=604_800_000)),
        ("1970-01-01T00:00:01Z", StartPoint("timestamp", at_ms=1_000)),
        ("1970-01-01T01:00:01.5+01:00", StartPoint("timestamp", at_ms=1_500)),
    ],
)
def test_start_points(text: str, point: StartPoint) -> None:
    assert start_point(text) == point


@pytest.mark.parametrize(
    "text", ["", "first", "2h", "-0h", "-2 fortnights", "2026-12-01T00:00:00", "1969-12-31T23:00Z"]
)
def test_a_bad_start_is_a_config_error(text: str) -> None:
    """A time without a zone, a duration forward, a time before 1970: exit code 2, named."""
    with pytest.raises(ValueError, match="is not earliest, latest"):
        start_point(text)
    result = CliRunner().invoke(main, ["run", "-t", "t", "-g", "g", "--start-from", text])
    assert result.exit_code == 2, result.output
    assert "--start-from" in result.output


def test_utc_text() -> None:
    at = datetime(2026, 12, 1, 10, 30, 5, 250_000, UTC)
    assert utc_text(round(at.timestamp() * 1000)) == "2026-12-01T10:30:05.250Z"


def started(log: LogBounds, policy: str, offset: int, partitions: int = 2) -> LogBounds:
    return dataclasses.replace(log, start=Start(policy, offset, partitions))


def starts_of(path: Path) -> list[tuple[object, ...]]:
    return query(
        path,
        "SELECT partition, next_offset, start_from, start_offset FROM progress ORDER BY partition",
    )


async def test_a_start_applies_to_a_new_partition_only(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await open_store(path)
    try:
        log = LogBounds(10, 500)
        claimed = await claim_all(store, {TP: started(log, "latest", 500)}, "a", "reset")
        assert claimed.claims[TP].next_offset == 500
        # Claimed again, by another policy: the position and its start stay.
        again = await claim_all(store, {TP: started(log, "earliest", 10)}, "b", "reset")
        assert again.claims[TP].next_offset == 500
        # Without a start (a claim that did not ask Kafka): the earliest offset, as before.
        await claim_all(store, {OTHER: LogBounds(10, 500)}, "b", "reset")
    finally:
        await store.database.close()
    assert starts_of(path) == [(0, 500, "latest", 500), (1, 10, "earliest", 10)]


async def test_a_start_stays_within_the_log(tmp_path: Path) -> None:
    """The offset was read a moment after the bounds: the log may have moved in between."""
    path = tmp_path / "state.db"
    store = await open_store(path)
    try:
        low = started(LogBounds(10, 500), "2026-12-01T00:00:00.000Z", 3)
        high = started(LogBounds(10, 500), "latest", 900)
        await claim_all(store, {TP: low, OTHER: high}, "a", "reset")
    finally:
        await store.database.close()
    assert starts_of(path) == [
        (0, 10, "2026-12-01T00:00:00.000Z", 10),
        (1, 500, "latest", 500),
    ]


async def test_a_partition_added_later_starts_at_its_earliest_offset(tmp_path: Path) -> None:
    """The topic had two partitions at the file's first claim: a third, claimed for the first
    time later, was added since, and starts at its first offset whatever the policy; another
    file that first sees the topic with three partitions applies the policy to all three."""
    added = TopicPartition("orders", 2)
    path = tmp_path / "state.db"
    store = await open_store(path)
    try:
        await claim_all(store, {TP: started(LogBounds(0, 50), "latest", 50)}, "a", "reset")
        log = LogBounds(0, 7)
        await claim_all(store, {added: started(log, "latest", 7, partitions=3)}, "a", "reset")
        await claim_all(store, {OTHER: started(log, "latest", 7, partitions=3)}, "a", "reset")
    finally:
        await store.database.close()
    assert starts_of(path) == [(0, 50, "latest", 50), (1, 7, "latest", 7), (2, 0, "earliest", 0)]
    assert query(path, "SELECT topic, partitions FROM topic_starts") == [("orders", 2)]


async def test_an_out_of_range_reset_restarts_the_start_too(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await open_store(path)
    try:
        await claim_all(store, {TP: started(LogBounds(0, 50), "latest", 50)}, "a", "reset")
        await claim_all(store, {TP: started(LogBounds(80, 90), "latest", 90)}, "a", "reset")
    finally:
        await store.database.close()
    assert starts_of(path) == [(0, 80, "earliest", 80)]
