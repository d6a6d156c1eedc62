"""The first processor, ``counts``: how many messages each key has, per partition.

Keys are raw bytes and are never deserialized. In the database a key is TEXT when its bytes are
valid UTF-8, a BLOB when they are not, and NULL for a record without a key, so every distinct
key stays distinct and each can be queried naturally (``key = 'a'``, ``key = X'ff'``, ``key IS
NULL``). With ``--key-format text`` or ``json`` the keys arrive as text and are stored as such.

Its table, ``key_counts``, and the ``counts`` view are sqlstate's own schema (migration 0001), so
it has no migrations of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Any

from aiokafka import TopicPartition

from sqlstate.processors import json_text
from sqlstate.processors.base import Migration, Records, Statement
from sqlstate.queries import sql

_key = attrgetter("key")
StoredKey = str | bytes | None


def stored_key(key: bytes | str | None) -> StoredKey:
    """How a Kafka key is kept in SQLite: TEXT if valid UTF-8, else BLOB; None stays NULL.

    (Text, from ``--key-format text`` or ``json``, is already what it is stored as.)"""
    if key is None or isinstance(key, str):
        return key
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key


def split_keys(
    counts: Mapping[bytes | str | None, int],
) -> tuple[str | None, list[tuple[StoredKey, int]]]:
    """A batch's counts per key as ``({"key": count} as JSON text, the other (key, count) rows)``.

    Text keys, nearly always all of them, go as one JSON object, which one statement reads with
    ``json_each()``; null and BLOB keys, and text with NUL characters (which SQLite's JSON
    functions cut short), go one row each. The JSON is None when there is no text key.
    """
    document = _as_json_object(counts)
    if document is not None:
        return document, []
    text_counts: dict[str, int] = {}
    single_rows: list[tuple[StoredKey, int]] = []
    for key, count in counts.items():
        stored = stored_key(key)
        if isinstance(stored, str) and "\x00" not in stored:
            text_counts[stored] = count
        else:
            single_rows.append((stored, count))
    return (json_text.encode(text_counts) if text_counts else None), single_rows


class KeyCounter:
    """Counts messages per key; one upsert row per distinct key and partition in the batch."""

    name = "counts"
    migrations: Sequence[Migration] = ()
    # --changelog: what identifies a row, and how to find it through the table's unique index.
    changelog_tables: Mapping[str, Sequence[str]] = {"key_counts": ("topic", "partition", "key")}

    @property
    def changelog_matches(self) -> Mapping[str, str]:
        return {"key_counts": sql("changelog_match_key_counts")}

    def statements(self, tp: TopicPartition, records: Records) -> Sequence[Statement]:
        # Aggregate first: the database sees each distinct key once per batch.
        document, single_rows = split_keys(Counter(map(_key, records)))
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


def _as_json_object(counts: Mapping[Any, int]) -> str | None:
    """``{"key": count}`` as JSON text, or None unless every key is UTF-8 text without NUL.

    One comprehension over the batch is the fast path; any key it cannot take (null, not
    UTF-8, NUL inside) sends the caller to the key-by-key one.
    """
    try:
        text = {
            key if type(key) is str else key.decode("utf-8"): count
            for key, count in counts.items()
            if key is not None
        }
    except UnicodeDecodeError:
        return None
    if len(text) != len(counts):  # a null key
        return None
    return json_text.document(text)
