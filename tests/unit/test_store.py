"""The store and the counting processor on a real SQLite file: claims, compare-and-set, resets,
odd keys, and each transaction committing all of itself or nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from sqlstate.errors import DatabaseError, IsolationLevelError, OutOfRangeError
from sqlstate.processors.base import Statement
from sqlstate.processors.counts import KeyCounter, sql
from sqlstate.processors.keys import stored_key
from sqlstate.processors.registry import Processors
from sqlstate.settings import OutOfRangePolicy
from sqlstate.state import migrate
from sqlstate.state.database import Database
from sqlstate.state.model import Claim, Claimed, Committed, Fenced, PartitionBatch
from sqlstate.state.out_of_range import LogBounds
from sqlstate.state.store import Store
from tests.support.db import query

TP = TopicPartition("orders", 0)
OTHER = TopicPartition("orders", 1)
COUNTER = Processors([KeyCounter()])


def record(offset: int, key: bytes | None, tp: TopicPartition = TP) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, key, b"v", None, 0, 1, [])


def batch(
    tp: TopicPartition, claim: Claim, keys: Sequence[bytes | None], *extra: Statement
) -> PartitionBatch:
    """The share of a batch that counts ``keys`` from the claimed position on."""
    records = [record(claim.next_offset + i, key, tp) for i, key in enumerate(keys)]
    return PartitionBatch(
        tp=tp,
        claim=claim,
        next_offset=claim.next_offset + len(keys),
        log_end_offset=None,
        records=len(records),
        statements=[*COUNTER.statements(tp, records), *extra],
    )


async def open_store(path: Path) -> Store:
    database = await Database.open(path, busy_timeout_s=5.0)
    await migrate.apply_pending(database)
    return Store(database)


def bounds(
    *tps: TopicPartition, first: int = 0, end: int = 1_000
) -> dict[TopicPartition, LogBounds]:
    return {tp: LogBounds(first, end) for tp in tps}


async def claim_all(
    store: Store,
    log: Mapping[TopicPartition, LogBounds],
    owner: str,
    policy: OutOfRangePolicy,
    topic_ids: Mapping[str, str | None] | None = None,
    isolation_level: str = "read_committed",
) -> Claimed:
    return await store.claim(
        log,
        owner,
        policy,
        COUNTER.forget,
        topic_ids=topic_ids or {},
        isolation_level=isolation_level,
    )


def counts(path: Path) -> dict[object, int]:
    return {key: n for key, n in query(path, "SELECT key, count FROM counts")}


def state(path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    positions = query(path, "SELECT partition, next_offset, epoch FROM positions ORDER BY 1")
    key_counts = query(path, "SELECT partition, key, count FROM key_counts ORDER BY 1, 2")
    return positions, key_counts


async def test_claim_bumps_epoch_and_keeps_position(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "s.db")
    try:
        first = await claim_all(store, bounds(TP, first=7, end=9), "a", "reset")
        assert first.claims == {TP: Claim(7, 1)}
        assert [p.log_end_offset for p in await store.positions()] == [9]
        # The log's first offset only applies to a partition never seen before.
        second = await claim_all(store, bounds(TP), "b", "reset")
        assert (second.claims, second.resets) == ({TP: Claim(7, 2)}, [])
        position = await store.position(TP)
        assert position is not None
        assert (position.owner, position.log_end_offset) == ("b", 1_000)
    finally:
        await store.database.close()


async def test_a_batch_commits_positions_and_counts_together(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)
    try:
        claims = (await claim_all(store, bounds(TP, OTHER), "me", "reset")).claims
        outcomes = await store.commit_batch(
            [batch(TP, claims[TP], [b"k", b"k"]), batch(OTHER, claims[OTHER], [b"j"])]
        )
    finally:
        await store.database.close()
    assert outcomes == [Committed(TP, Claim(2, 1), 2), Committed(OTHER, Claim(1, 1), 1)]
    assert state(path) == ([(0, 2, 1), (1, 1, 1)], [(0, "k", 2), (1, "j", 1)])


async def test_a_fenced_partition_is_left_out_with_the_row_that_fenced_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)
    try:
        mine = (await claim_all(store, bounds(TP, OTHER), "me", "reset")).claims
        # Another consumer claims OTHER: we are a zombie for it.
        await claim_all(store, bounds(OTHER), "someone else", "reset")
        outcomes = await store.commit_batch(
            [batch(TP, mine[TP], [b"k"]), batch(OTHER, mine[OTHER], [b"j"])]
        )
    finally:
        await store.database.close()
    assert outcomes[0] == Committed(TP, Claim(1, 1), 1)
    fenced = outcomes[1]
    assert isinstance(fenced, Fenced)
    assert fenced.holder is not None
    assert (fenced.tp, fenced.records) == (OTHER, 1)
    assert (fenced.holder.owner, fenced.holder.epoch, fenced.holder.next_offset) == (
        "someone else",
        2,
        0,
    )
    assert state(path) == ([(0, 1, 1), (1, 0, 2)], [(0, "k", 1)])


async def test_a_replayed_batch_is_fenced(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)
    try:
        claim = (await claim_all(store, bounds(TP), "a", "reset")).claims[TP]
        once = batch(TP, claim, [b"a"])
        assert isinstance((await store.commit_batch([once]))[0], Committed)
        # The same batch again: its expected offset no longer matches (same epoch, moved).
        again = (await store.commit_batch([once]))[0]
        assert isinstance(again, Fenced)
        assert again.holder is not None
        assert (again.holder.epoch, again.holder.next_offset) == (claim.epoch, 1)
    finally:
        await store.database.close()
    assert counts(path) == {"a": 1}


async def test_odd_keys_are_counted_distinctly(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)
    big = b"k" * 100_000
    keys: list[bytes | None] = [None, b"", b"\xff\xfe", "é".encode(), big, None, b"", b"\xff\xfe"]
    try:
        claim = (await claim_all(store, bounds(TP), "a", "reset")).claims[TP]
        first = await store.commit_batch([batch(TP, claim, keys)])
        assert first == [Committed(TP, Claim(len(keys), 1), len(keys))]
        # A second batch adds to the same rows, including the NULL key's row.
        await store.commit_batch([batch(TP, Claim(len(keys), 1), [None])])
    finally:
        await store.database.close()
    assert counts(path) == {None: 3, "": 2, b"\xff\xfe": 2, "é": 1, big.decode(): 1}
    kinds = dict(query(path, "SELECT typeof(key), count(*) FROM key_counts GROUP BY 1"))
    assert kinds == {"null": 1, "text": 3, "blob": 1}


def test_stored_key() -> None:
    assert stored_key(None) is None
    assert stored_key(b"") == ""
    assert stored_key(b"abc") == "abc"
    assert stored_key(b"\x80") == b"\x80"


async def test_a_claim_again_out_of_range_discards_only_that_partition(tmp_path: Path) -> None:
    """The one out-of-range path: claimed again (as while running) with its log now starting
    past its position, a partition restarts at the log's first offset, its state forgotten;
    the other partition keeps its counts."""
    path = tmp_path / "s.db"
    store = await open_store(path)
    try:
        claims = (await claim_all(store, bounds(TP, OTHER), "a", "reset")).claims
        await store.commit_batch(
            [batch(TP, claims[TP], [b"x"]), batch(OTHER, claims[OTHER], [b"x"])]
        )
        claimed = await claim_all(store, {TP: LogBounds(50, 60)}, "a", "reset")
        assert claimed.claims == {TP: Claim(50, claims[TP].epoch + 1)}
        assert [(reset.tp, reset.stored_offset) for reset in claimed.resets] == [(TP, 1)]
        position = await store.position(TP)
        assert position is not None
        assert position.next_offset == 50
        assert query(path, "SELECT partition, key, count FROM key_counts") == [(1, "x", 1)]
    finally:
        await store.database.close()
    assert state(path)[1] == [(1, "x", 1)]


async def test_a_claim_out_of_range_resets_in_the_same_transaction(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)
    try:
        claims = (await claim_all(store, bounds(TP, OTHER), "a", "reset")).claims
        await store.commit_batch(
            [batch(TP, claims[TP], [b"x"] * 5), batch(OTHER, claims[OTHER], [b"y"])]
        )
        # TP's records [0, 5) were deleted: the log now starts at 8. OTHER's log still holds 1.
        log = {TP: LogBounds(8, 20), OTHER: LogBounds(0, 1)}
        claimed = await claim_all(store, log, "b", "reset")
    finally:
        await store.database.close()
    assert claimed.claims == {TP: Claim(8, 2), OTHER: Claim(1, 2)}
    assert [(r.tp, r.stored_offset, r.bounds) for r in claimed.resets] == [(TP, 5, log[TP])]
    assert state(path) == ([(0, 8, 2), (1, 1, 2)], [(1, "y", 1)])


async def test_a_claim_out_of_range_under_fail_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)
    try:
        claims = (await claim_all(store, bounds(TP, OTHER), "a", "reset")).claims
        await store.commit_batch([batch(TP, claims[TP], [b"x"] * 5)])
        before = state(path)
        with pytest.raises(OutOfRangeError, match="outside the log"):
            await claim_all(store, {TP: LogBounds(8, 20), OTHER: LogBounds(0, 0)}, "b", "fail")
        # A partition never seen before is claimed with the others, or not at all.
        new = TopicPartition("orders", 2)
        with pytest.raises(OutOfRangeError):
            await claim_all(store, {new: LogBounds(0, 0), TP: LogBounds(8, 20)}, "b", "fail")
    finally:
        await store.database.close()
    assert state(path) == before


async def test_a_failed_statement_rolls_back_the_whole_batch(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)
    try:
        claims = (await claim_all(store, bounds(TP, OTHER), "a", "reset")).claims
        # OTHER's counts, then a statement that fails after TP's position and counts were written.
        broken = Statement(sql("upsert_key_counts"), [("too", "few")])
        with pytest.raises(DatabaseError, match="rolled back"):
            await store.commit_batch(
                [batch(TP, claims[TP], [b"x"]), batch(OTHER, claims[OTHER], [b"y"], broken)]
            )
    finally:
        await store.database.close()
    assert state(path) == ([(0, 0, 1), (1, 0, 1)], [])


PAYMENTS = TopicPartition("payments", 0)


def topics_table(path: Path) -> list[tuple[Any, ...]]:
    return query(path, "SELECT topic, topic_id FROM topics ORDER BY topic")


async def test_the_first_claim_records_the_topic_ids_and_the_isolation_level(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)
    try:
        assert await store.isolation_level() is None
        ids = {"orders": "id-1", "payments": "id-2"}
        await claim_all(store, bounds(TP, PAYMENTS), "a", "reset", ids)
        assert await store.isolation_level() == "read_committed"
        # The same IDs again: nothing to reset.
        again = await claim_all(store, bounds(TP, PAYMENTS), "b", "reset", ids)
        assert (again.recreated, again.resets) == ([], [])
    finally:
        await store.database.close()
    assert topics_table(path) == [("orders", "id-1"), ("payments", "id-2")]


async def test_a_new_topic_id_resets_every_partition_of_the_topic_in_the_claim(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)
    try:
        old = {"orders": "old", "payments": "p"}
        claims = (await claim_all(store, bounds(TP, OTHER, PAYMENTS), "a", "reset", old)).claims
        await store.commit_batch(
            [
                batch(TP, claims[TP], [b"x"] * 5),
                batch(OTHER, claims[OTHER], [b"y"] * 3),
                batch(PAYMENTS, claims[PAYMENTS], [b"z"]),
            ]
        )
        # The topic was deleted and created again; this consumer is assigned TP only, whose new
        # log holds [2, 9). OTHER is another consumer's: it is reset too, and fenced.
        claimed = await claim_all(
            store, {TP: LogBounds(2, 9)}, "b", "reset", {"orders": "new", "payments": "p"}
        )
        fenced = await store.commit_batch([batch(OTHER, Claim(3, claims[OTHER].epoch), [b"y"])])
    finally:
        await store.database.close()
    assert [(r.topic, r.old_id, r.new_id, r.stored) for r in claimed.recreated] == [
        ("orders", "old", "new", {0: 5, 1: 3})
    ]
    assert claimed.resets == []
    # TP: reset (epoch 2) and claimed (epoch 3) at its new log's first offset; OTHER: reset to
    # the first offset of a new log, 0, with a new epoch that fences its holder.
    assert claimed.claims == {TP: Claim(2, 3)}
    assert isinstance(fenced[0], Fenced)
    positions, key_counts = state(path)
    # orders-0, orders-1, and payments-0 untouched.
    assert sorted(positions) == [(0, 1, 1), (0, 2, 3), (1, 0, 2)]
    assert key_counts == [(0, "z", 1)]
    assert topics_table(path) == [("orders", "new"), ("payments", "p")]


async def test_a_new_topic_id_under_fail_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)
    try:
        claims = (await claim_all(store, bounds(TP, OTHER), "a", "reset", {"orders": "A"})).claims
        await store.commit_batch([batch(TP, claims[TP], [b"x"] * 5)])
        before = state(path), topics_table(path)
        # The new log holds the stored positions: only the ID tells.
        with pytest.raises(OutOfRangeError, match=r"orders-0@5, orders-1@0\) belong to the old"):
            await claim_all(store, bounds(TP, OTHER), "b", "fail", {"orders": "B"})
    finally:
        await store.database.close()
    assert (state(path), topics_table(path)) == before


async def test_a_database_without_topic_ids_records_them_and_goes_on(tmp_path: Path) -> None:
    """A database of the previous release: positions and counts, no topic ID, no level."""
    path = tmp_path / "s.db"
    store = await open_store(path)
    try:
        claims = (await claim_all(store, bounds(TP), "a", "reset")).claims
        await store.commit_batch([batch(TP, claims[TP], [b"x"] * 5)])
        conn = sqlite3.connect(path)
        try:
            with conn:
                conn.execute("DELETE FROM state_settings")
        finally:
            conn.close()
        assert topics_table(path) == []
        claimed = await claim_all(store, bounds(TP), "b", "fail", {"orders": "A"})
        level = await store.isolation_level()
    finally:
        await store.database.close()
    assert (claimed.claims, claimed.recreated) == ({TP: Claim(5, 2)}, [])
    assert topics_table(path) == [("orders", "A")]
    assert level == "read_committed"
    assert state(path)[1] == [(0, "x", 5)]


async def test_another_isolation_level_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)
    try:
        await claim_all(store, bounds(TP), "a", "reset", isolation_level="read_uncommitted")
        before = state(path)
        with pytest.raises(IsolationLevelError, match="made with --isolation-level read_unc") as e:
            await claim_all(store, bounds(TP, OTHER), "b", "reset")
        assert e.value.exit_code == 2
        assert await store.isolation_level() == "read_uncommitted"
    finally:
        await store.database.close()
    assert state(path) == before
