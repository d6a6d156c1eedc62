"""The built-in processor ``latest``: the latest value of every key, a compacted topic as a table.

Table ``latest (topic, key, value, partition, offset, timestamp)``, one row per key and
partition (``migrations/latest/``). A record whose value is null (a tombstone) deletes its key.
Only each key's last record of a batch matters, so a batch costs one row per distinct key: the
table ends the same whatever the batch boundaries, as a compacted topic does.

Keys and values are stored as ``key_counts`` stores keys: TEXT when valid UTF-8 (or decoded by
``--key-format``/``--value-format text`` or ``json``), BLOB otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiokafka import TopicPartition

from sqlstate import migrate
from sqlstate.processors.base import Migration, Record, Records, Statement
from sqlstate.processors.counting import stored_key
from sqlstate.queries import sql


class Latest:
    """The latest value per key; tombstones delete."""

    name = "latest"
    # --changelog: what identifies a row, and how to find it through the table's unique index.
    changelog_tables: Mapping[str, Sequence[str]] = {"latest": ("topic", "partition", "key")}

    def __init__(self) -> None:
        self.migrations: Sequence[Migration] = migrate.bundled(self.name)

    @property
    def changelog_matches(self) -> Mapping[str, str]:
        return {"latest": sql("changelog_match_latest")}

    def statements(self, tp: TopicPartition, records: Records) -> Sequence[Statement]:
        last: dict[object, Record] = {record.key: record for record in records}
        topic, partition = tp.topic, tp.partition
        upserts = []
        deletes = []
        for key, record in last.items():
            if record.value is None:
                deletes.append((topic, partition, stored_key(key)))  # type: ignore[arg-type]
            else:
                upserts.append(
                    (
                        topic,
                        partition,
                        stored_key(key),  # type: ignore[arg-type]
                        stored_key(record.value),
                        record.offset,
                        record.timestamp,
                    )
                )
        statements = []
        if upserts:
            statements.append(Statement(sql("upsert_latest"), upserts))
        if deletes:
            statements.append(Statement(sql("delete_latest"), deletes))
        return statements

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        return [Statement(sql("forget_latest"), [{"topic": tp.topic, "partition": tp.partition}])]
