"""The store and the counting processor on a real SQLite file: claims, compare-and-set, keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from sqlstate import migrate
from sqlstate.errors import DatabaseError
from sqlstate.processors.counting import KeyCounter, stored_key
from sqlstate.store import PartitionAdvance, Store, Write
from tests.support.db import query

TP = TopicPartition("orders", 0)


def record(offset: int, key: bytes | None, tp: TopicPartition = TP) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, key, b"v", None, 0, 1, [])


async def open_store(path: Path) -> Store:
    store = await Store.open(path)
    await migrate.apply_pending(store)
    return store


def counts(path: Path) -> dict[object, int]:
    return {key: n for key, n in query(path, "SELECT key, count FROM counts")}


async def test_claim_bumps_epoch_and_keeps_position(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "s.db")
    try:
        first = await store.claim({TP: 7}, "a", {TP: 9})
        assert [p.log_end_offset for p in await store.positions()] == [9]
        assert (first[TP].next_offset, first[TP].epoch) == (7, 1)
        second = await store.claim({TP: 0}, "b")  # start offset only applies to a new row
        assert (second[TP].next_offset, second[TP].epoch) == (7, 2)
        position = await store.read_position(TP)
        assert position is not None
        assert position.owner == "b"
    finally:
        await store.close()


async def test_commit_from_a_stale_epoch_is_fenced_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)
    counter = KeyCounter()
    try:
        old = (await store.claim({TP: 0}, "zombie"))[TP]
        new = (await store.claim({TP: 0}, "owner"))[TP]
        stale = PartitionAdvance(TP, old.epoch, 0, 2, None, [record(0, b"a"), record(1, b"a")])
        assert await store.commit_batch([stale], counter.writes) == [TP]
        assert counts(path) == {}
        fresh = PartitionAdvance(TP, new.epoch, 0, 1, 5, [record(0, b"a")])
        assert await store.commit_batch([fresh], counter.writes) == []
        assert counts(path) == {"a": 1}
        # The same batch again: its expected offset no longer matches.
        assert await store.commit_batch([fresh], counter.writes) == [TP]
        assert counts(path) == {"a": 1}
    finally:
        await store.close()


async def test_odd_keys_are_counted_distinctly(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)
    big = b"k" * 100_000
    keys: list[bytes | None] = [None, b"", b"\xff\xfe", "é".encode(), big, None, b"", b"\xff\xfe"]
    try:
        claim = (await store.claim({TP: 0}, "a"))[TP]
        records = [record(i, key) for i, key in enumerate(keys)]
        advance = PartitionAdvance(TP, claim.epoch, 0, len(keys), None, records)
        assert await store.commit_batch([advance], KeyCounter().writes) == []
        # A second batch adds to the same rows, including the NULL key's row.
        advance2 = PartitionAdvance(
            TP, claim.epoch, len(keys), len(keys) + 1, None, [record(len(keys), None)]
        )
        assert await store.commit_batch([advance2], KeyCounter().writes) == []
    finally:
        await store.close()
    assert counts(path) == {None: 3, "": 2, b"\xff\xfe": 2, "é": 1, big.decode(): 1}
    kinds = dict(query(path, "SELECT typeof(key), count(*) FROM key_counts GROUP BY 1"))
    assert kinds == {"null": 1, "text": 3, "blob": 1}


def test_stored_key() -> None:
    assert stored_key(None) is None
    assert stored_key(b"") == ""
    assert stored_key(b"abc") == "abc"
    assert stored_key(b"\x80") == b"\x80"


async def test_reset_discards_only_that_partition(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    other = TopicPartition("orders", 1)
    store = await open_store(path)
    counter = KeyCounter()
    try:
        claims = await store.claim({TP: 0, other: 0}, "a")
        await store.commit_batch(
            [
                PartitionAdvance(TP, claims[TP].epoch, 0, 1, None, [record(0, b"x")]),
                PartitionAdvance(other, claims[other].epoch, 0, 1, None, [record(0, b"x", other)]),
            ],
            counter.writes,
        )
        assert await store.reset_partition(TP, claims[TP].epoch, 50, counter.discard)
        assert not await store.reset_partition(TP, claims[TP].epoch + 1, 60, counter.discard)
        position = await store.read_position(TP)
        assert position is not None
        assert position.next_offset == 50
    finally:
        await store.close()
    assert counts(path) == {"x": 1}


async def test_failed_transaction_rolls_back_everything(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(path)

    def explode(batch: Mapping[TopicPartition, Sequence[Any]]) -> list[Write]:
        # The counts, then a statement that fails after the positions and counts were written.
        return [*KeyCounter().writes(batch), Write("upsert_key_counts", [("too", "few")])]

    try:
        claim = (await store.claim({TP: 0}, "a"))[TP]
        with pytest.raises(DatabaseError):
            await store.commit_batch(
                [PartitionAdvance(TP, claim.epoch, 0, 1, None, [record(0, b"x")])], explode
            )
        position = await store.read_position(TP)
        assert position is not None
        assert position.next_offset == 0
    finally:
        await store.close()
    assert counts(path) == {}
