"""A batch as one JSON text for SQLite's JSON functions, instead of one row per record.

Processors hand SQLite a whole partition's batch as one JSON document that a single statement
reads back with ``json_each()``: one bind and one step, which SQLite runs without Python's GIL
(see ``keys.py``, ``latest/``, ``batched.py``). The text is compact (no ASCII escaping,
no circular check: the documents are plain lists, tuples and dicts), from one encoder kept for
every batch, since ``json.dumps`` with an option builds a new one per call.
"""

from __future__ import annotations

import json

#: Compact JSON text of a batch's document. Raises TypeError for bytes (a BLOB), ValueError for
#: a NaN or an infinity, neither of which JSON can carry.
encode = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False).encode


def document(value: object) -> str | None:
    """``value`` as JSON text that SQLite's JSON functions read back exactly, or None when it
    cannot be: it holds bytes, a NaN or an infinity, or text with a NUL character, which JSON
    writes as ``\\u0000`` and SQLite's JSON functions cut a string at. (Text holding the six
    characters ``\\u0000`` also gives None: it only takes the caller's row-by-row path.)"""
    try:
        text = encode(value)
    except (TypeError, ValueError):
        return None
    return None if "\\u0000" in text else text
