"""The oracle's model of ``slot_holders.sql``, the soak's processor with a second UNIQUE index:
what its table must hold after the records, replayed the way SQLite's INSERT OR REPLACE does."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlstate.processors.base import Record
from sqlstate.processors.keys import stored_key
from tests.support.oracle import Row, StoredKey

SQL_FILE = Path(__file__).with_name("slot_holders.sql")
SLOTS = 5


@dataclass
class SlotHolders:
    """``slot_holders``: per partition, (holder, slot, offset) of each key that still holds the
    slot its last record took."""

    name: str = "slot_holders"

    def expected(self, records: Sequence[Record]) -> Counter[Row]:
        holders: dict[tuple[int, StoredKey], tuple[int, int]] = {}  # -> (slot, offset)
        slots: dict[tuple[int, int], StoredKey] = {}  # (partition, slot) -> holder
        for r in records:
            key = stored_key(r.key)
            holder = b"" if key is None else key
            slot = r.offset % SLOTS
            # REPLACE deletes the row with the same PRIMARY KEY, then the one with the same slot.
            former = holders.pop((r.partition, holder), None)
            if former is not None:
                del slots[(r.partition, former[0])]
            evicted = slots.pop((r.partition, slot), None)
            if evicted is not None:
                del holders[(r.partition, evicted)]
            holders[(r.partition, holder)] = (slot, r.offset)
            slots[(r.partition, slot)] = holder
        return Counter(
            (partition, holder, slot, offset)
            for (partition, holder), (slot, offset) in holders.items()
        )

    def stored(self, conn: sqlite3.Connection, topic: str) -> Counter[Row]:
        rows = conn.execute(
            "SELECT partition, holder, slot, offset FROM slot_holders WHERE topic = ?", (topic,)
        )
        return Counter(tuple(row) for row in rows)
