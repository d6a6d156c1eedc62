"""Store.commit_batch: the one-call transaction commits everything or, once a compare-and-set
fails, falls back to committing only the partitions that were not fenced."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from sqlstate import migrate
from sqlstate.store import PartitionAdvance, Store, Write
from tests.support.db import query

A = TopicPartition("t", 0)
B = TopicPartition("t", 1)


def _writes(batch: Mapping[TopicPartition, Sequence[Any]]) -> list[Write]:
    rows = [(tp.topic, tp.partition, key, 1) for tp, keys in batch.items() for key in keys]
    return [Write("upsert_key_counts", rows)]


def _advance(tp: TopicPartition, epoch: int, start: int, keys: list[str]) -> PartitionAdvance:
    return PartitionAdvance(tp, epoch, start, start + len(keys), None, keys)


def _state(path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    positions = query(
        path, "SELECT partition, next_offset, epoch FROM positions ORDER BY partition"
    )
    counts = query(path, "SELECT partition, key, count FROM key_counts ORDER BY partition, key")
    return positions, counts


async def test_a_batch_commits_positions_and_counts_together(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "x.db")
    try:
        await migrate.apply_pending(store)
        claims = await store.claim({A: 0, B: 0}, "me")
        fenced = await store.commit_batch(
            [_advance(A, claims[A].epoch, 0, ["k", "k"]), _advance(B, claims[B].epoch, 0, ["j"])],
            _writes,
        )
    finally:
        await store.close()
    assert fenced == []
    assert _state(tmp_path / "x.db") == ([(0, 2, 1), (1, 1, 1)], [(0, "k", 2), (1, "j", 1)])


async def test_a_fenced_partition_is_left_out_and_the_others_commit(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "x.db")
    try:
        await migrate.apply_pending(store)
        mine = await store.claim({A: 0, B: 0}, "me")
        await store.claim({B: 0}, "someone else")  # bumps B's epoch: we are a zombie for B
        fenced = await store.commit_batch(
            [_advance(A, mine[A].epoch, 0, ["k"]), _advance(B, mine[B].epoch, 0, ["j"])],
            _writes,
        )
    finally:
        await store.close()
    assert fenced == [B]
    assert _state(tmp_path / "x.db") == ([(0, 1, 1), (1, 0, 2)], [(0, "k", 1)])
