"""The first processor, ``counts``: how many messages each key has, per partition.

Keys are raw bytes and are never deserialized. In the database a key is TEXT when its bytes are
valid UTF-8, a BLOB when they are not, and NULL for a record without a key, so every distinct
key stays distinct and each can be queried naturally (``key = 'a'``, ``key = X'ff'``, ``key IS
NULL``). With ``--key-format text`` or ``json`` the keys arrive as text and are stored as such.

Its statements are in ``queries.sql`` beside this file. Its table, ``key_counts``, and the
``counts`` view are sqlstate's own schema (migration 0001, from before processors had migrations
of their own), so it has no ``migrations/`` folder; that is also why the guard gives it
``key_counts`` by name (``guard.WRITES_OF_BUILT_INS``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from aiokafka import TopicPartition

from sqlstate.processors import Migration, Queries, Statement
from sqlstate.processors.base import ParsedRecords, record_key
from sqlstate.processors.keys import split_keys

sql = Queries(__name__)


class KeyCounter:
    """Counts messages per key; one upsert row per distinct key and partition in the batch."""

    name = "counts"
    migrations: Sequence[Migration] = ()
    # --changelog: what identifies a row, and how to find it through the table's unique index.
    changelog_tables: Mapping[str, Sequence[str]] = {"key_counts": ("topic", "partition", "key")}
    #: What makes its state besides sqlstate's version (``sqlstate rebuild`` compares it).
    definition = name

    @property
    def changelog_matches(self) -> Mapping[str, str]:
        return {"key_counts": sql("changelog_match_key_counts")}

    def statements(self, tp: TopicPartition, records: ParsedRecords) -> Sequence[Statement]:
        # Aggregate first: the database sees each distinct key once per batch.
        document, single_rows = split_keys(Counter(map(record_key, records)))
        statements = []
        if document is not None:
            statements.append(
                Statement(
                    sql("upsert_partition_key_counts"),
                    [{"topic": tp.topic, "partition": tp.partition, "counts": document}],
                )
            )
        if single_rows:
            statements.append(
                Statement(
                    sql("upsert_key_counts"),
                    [(tp.topic, tp.partition, key, count) for key, count in single_rows],
                )
            )
        return statements

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        return [
            Statement(sql("delete_key_counts"), [{"topic": tp.topic, "partition": tp.partition}])
        ]
