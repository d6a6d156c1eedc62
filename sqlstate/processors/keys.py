"""Keys as every processor keeps them: how a Kafka key is stored in SQLite, a batch's counts
per key as one JSON document, and a key as JSON for people and dead letters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlstate.processors import json_text

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


def key_json(key: str | bytes | None) -> Any:
    """A key in JSON: a string, {"hex": ".."} for bytes that are not UTF-8, or null."""
    if isinstance(key, bytes):
        return {"hex": key.hex()}
    return key
