"""The first processor: how many messages each key has, per partition.

Keys are raw bytes and are never deserialized. In the database a key is TEXT when its bytes are
valid UTF-8, a BLOB when they are not, and NULL for a record without a key, so every distinct
key stays distinct and each can be queried naturally (``key = 'a'``, ``key = X'ff'``, ``key IS
NULL``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from operator import attrgetter

from aiokafka import TopicPartition

from sqlstate.processors.base import Records, Statement
from sqlstate.queries import sql

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

    def statements(self, tp: TopicPartition, records: Records) -> Sequence[Statement]:
        # Aggregate first: the database sees each distinct key once per batch. Text keys, nearly
        # always all of them, go as one JSON object, one statement; null and BLOB keys, and text
        # with NUL characters (which SQLite's JSON functions cut short), go one row each.
        counts = Counter(map(_key, records))
        document = _as_json_object(counts)
        single_rows: list[tuple[str, int, str | bytes | None, int]] = []
        if document is None:
            text_counts: dict[str, int] = {}
            for key, count in counts.items():
                stored = stored_key(key)
                if isinstance(stored, str) and "\x00" not in stored:
                    text_counts[stored] = count
                else:
                    single_rows.append((tp.topic, tp.partition, stored, count))
            document = _dumps(text_counts) if text_counts else None
        statements = []
        if document is not None:
            statements.append(
                Statement(
                    sql("upsert_partition_key_counts"),
                    [{"topic": tp.topic, "partition": tp.partition, "counts": document}],
                )
            )
        if single_rows:
            statements.append(Statement(sql("upsert_key_counts"), single_rows))
        return statements

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        return [
            Statement(sql("delete_key_counts"), [{"topic": tp.topic, "partition": tp.partition}])
        ]


def _as_json_object(counts: Mapping[bytes | None, int]) -> str | None:
    """``{"key": count}`` as JSON text, or None unless every key is UTF-8 text without NUL.

    One comprehension over the batch is the fast path; any key it cannot take (null, not
    UTF-8, NUL inside) sends the caller to the key-by-key one.
    """
    try:
        text = {key.decode("utf-8"): count for key, count in counts.items() if key is not None}
    except UnicodeDecodeError:
        return None
    if len(text) != len(counts):  # a null key
        return None
    document = _dumps(text)
    # json.dumps writes NUL as \u0000, which SQLite's json_each() would cut the key at. (A key
    # holding the six characters \u0000 also matches: it only takes the slower path.)
    return None if "\\u0000" in document else document


def _dumps(text_counts: Mapping[str, int]) -> str:
    return json.dumps(text_counts, ensure_ascii=False, check_circular=False)
