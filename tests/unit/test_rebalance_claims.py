"""The assignment callback against a real database and a stand-in consumer (no broker)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from sqlstate import migrate, rebalance
from sqlstate.database import Database
from sqlstate.out_of_range import LogBounds
from sqlstate.processors.base import Statement
from sqlstate.rebalance import Claimer, Listener, Ownership
from sqlstate.stats import Stats
from sqlstate.store import Claim, Store

A, B = TopicPartition("t", 0), TopicPartition("t", 1)
TOPIC_IDS: dict[str, str | None] = {"t": "AAAAAAAAAAAAAAAAAAAAAQ"}


class StandInConsumer:
    """Only what the listener calls; the log of each partition is [50, 100)."""

    def __init__(self) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 50 for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 100 for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def pause(self, tp: TopicPartition) -> None:
        raise AssertionError("nothing here is claimed by another consumer")


async def topic_ids(
    consumer: object, topics: Iterable[str], all_exist: bool = False
) -> dict[str, str | None]:
    """The listener's Metadata request, answered without a broker."""
    return {topic: TOPIC_IDS[topic] for topic in topics}


async def test_no_partition_is_seeked_before_every_claim_is_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka fetches a partition as soon as it is seeked; a seek before the loop knows the
    claim would let the loop pass over the records fetched meanwhile."""
    database = await Database.open(tmp_path / "s.db", busy_timeout_s=5.0)
    await migrate.apply_pending(database)
    store = Store(database)
    consumer = StandInConsumer()
    monkeypatch.setattr(rebalance, "topic_ids", topic_ids)
    seeks_seen_by_forget: list[int] = []

    def forget(tp: TopicPartition) -> list[Statement]:
        seeks_seen_by_forget.append(len(consumer.seeks))
        return []

    try:
        # Stored positions now below the log.
        await store.claim(
            {A: LogBounds(10, 10), B: LogBounds(10, 10)},
            "earlier",
            "reset",
            forget,
            topic_ids=TOPIC_IDS,
            isolation_level="read_uncommitted",
        )
        ownership = Ownership()
        stats = Stats()
        fatal: list[BaseException] = []
        published: list[dict[TopicPartition, Claim]] = []
        claimer = Claimer(
            consumer,
            store,
            ownership,
            "me",
            stats,
            "reset",
            "read_uncommitted",
            forget,
            lambda claims: published.append(dict(claims)),
        )
        await Listener(claimer, ownership, fatal.append).on_partitions_assigned({A, B})
    finally:
        await database.close()
    assert fatal == []
    assert seeks_seen_by_forget == [0, 0]
    assert sorted(consumer.seeks) == [(A, 50), (B, 50)]
    assert {tp: claim.next_offset for tp, claim in ownership.claims.items()} == {A: 50, B: 50}
    # The claims go to the copy in Kafka's group offsets once committed and sought.
    assert published == [ownership.claims]
    assert stats.out_of_range_resets == 2


def test_log_bounds() -> None:
    exact = LogBounds(5, 10)
    assert exact.holds(5)
    assert exact.holds(10)
    assert not exact.holds(4)
    assert not exact.holds(11)
    # Under read_committed the end is the last stable offset: the log reaches to its own end.
    stable = LogBounds(5, 10, log_end=12)
    assert stable.holds(12)
    assert not stable.holds(13)
    assert not stable.holds(4)
