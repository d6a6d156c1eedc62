"""The first processor: how many messages each key has, per partition.

Keys are raw bytes and are never deserialized. In the database a key is TEXT when its bytes are
valid UTF-8, a BLOB when they are not, and NULL for a record without a key, so every distinct
key stays distinct and each can be queried naturally (``key = 'a'``, ``key = X'ff'``, ``key IS
NULL``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from operator import attrgetter

from aiokafka import TopicPartition

from sqlstate.processors.base import Records
from sqlstate.store import Transaction

_key = attrgetter("key")


def stored_key(key: bytes | None) -> str | bytes | None:
    """How a Kafka key is kept in SQLite: TEXT if valid UTF-8, else BLOB; None stays NULL."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key


class KeyCounter:
    """Counts messages per key; one upsert row per distinct key and partition in the batch."""

    name = "key_counts"

    async def apply(self, tx: Transaction, batch: Mapping[TopicPartition, Records]) -> None:
        # Aggregate first: the database sees each distinct key once per batch, in one call.
        rows = [
            (tp.topic, tp.partition, stored_key(key), count)
            for tp, records in batch.items()
            for key, count in Counter(map(_key, records)).items()
        ]
        await tx.executemany("upsert_key_counts", rows)

    async def discard(self, tx: Transaction, tp: TopicPartition) -> None:
        await tx.execute("delete_key_counts", {"topic": tp.topic, "partition": tp.partition})
