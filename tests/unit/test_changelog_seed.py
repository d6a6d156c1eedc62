"""The seed of an empty changelog (``changelog/seed.py``), without Kafka: a handed-over file's
state of each partition, read as the records a capture makes, and shipped with its position as
one transaction, makes an empty file equal to the first, with no record set aside; a partition
this file has no position for, or a file never handed over, has nothing to seed."""

from __future__ import annotations

import functools
from pathlib import Path

from aiokafka import TopicPartition

from sqlstate.changelog.seed import _read_seed
from sqlstate.changelog.tables import state_tables
from sqlstate.processors.base import Processor
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.latest import Latest
from sqlstate.processors.sql_file import SqlFileProcessor
from tests.support.processing import order, record
from tests.unit.test_changelog_rows import (
    EXAMPLE,
    ODD_KEYS,
    T0,
    T1,
    Changelog,
    Owner,
    assert_same_state,
    follow,
)


async def test_a_seed_makes_an_empty_file_equal_to_the_seeded_one(tmp_path: Path) -> None:
    members: list[Processor] = [KeyCounter(), Latest(), SqlFileProcessor.load(EXAMPLE)]
    # The batches' own changelog is not the seed's: only the seed is applied below.
    async with Owner(tmp_path / "owner.db", members, Changelog()) as owner:
        await owner.claim([T0, T1])
        for start in range(0, 90, 30):
            for tp, keys in ((T0, ODD_KEYS), (T1, ["a", "b"])):
                await owner.commit(
                    tp,
                    [
                        record(tp, o, keys[o % len(keys)], order(f"c-{o % 3}", o * 10))
                        for o in range(start, start + 30)
                    ],
                )
        tables = state_tables(members)
        unseeded = await owner.store.database.read(
            functools.partial(_read_seed, tp=T0, tables=tables)
        )
        assert unseeded is None  # never handed over: its changelog holds its state already
        await owner.store.database.transaction(
            lambda conn: conn.executemany(
                "INSERT INTO changelog_seeds VALUES ('t', ?, 'x')", [(0,), (1,), (2,)]
            )
        )
        seeds = {
            tp: await owner.store.database.read(functools.partial(_read_seed, tp=tp, tables=tables))
            for tp in (T0, T1, TopicPartition("t", 2))
        }
    assert seeds[TopicPartition("t", 2)] is None
    seeded = Changelog()
    for tp in (T0, T1):
        seed = seeds[tp]
        assert seed is not None
        assert seed.next_offset == 90
        assert seed.hand_over == "x"
        seeded.append(tp, seed.rows, seed.next_offset)
    applied = await follow(tmp_path / "new.db", members, seeded, chunks=2)
    assert not [q for a in applied for q in a.quarantined]
    assert_same_state(tmp_path / "owner.db", tmp_path / "new.db", members)
