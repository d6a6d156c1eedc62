"""How the commands print: an aligned table for people, JSON for programs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlstate.processors.keys import key_json
from sqlstate.state.model import Position

__all__ = ["as_json", "key_json", "key_text", "positions_json", "size", "table"]


def key_text(key: str | bytes | None) -> str:
    """A key as a person reads it: text as is, bytes as x'..' hex, a missing key as (null)."""
    if key is None:
        return "(null)"
    if isinstance(key, bytes):
        return f"x'{key.hex()}'"
    return key if key.isprintable() else repr(key)


def size(size_bytes: int) -> str:
    """A file size as a person reads it: ``812 KiB``, ``95.7 MiB``, ``8.1 GiB``."""
    if size_bytes < 2**20:
        return f"{size_bytes / 2**10:.0f} KiB"
    if size_bytes < 2**30:
        return f"{size_bytes / 2**20:.1f} MiB"
    return f"{size_bytes / 2**30:.1f} GiB"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def as_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), indent=2, ensure_ascii=False)


def positions_json(positions: Sequence[Position], topic: str | None = None) -> list[dict[str, Any]]:
    """Positions as every ``--json`` output gives them (those of ``topic`` only, when given):
    what an answer was read at."""
    return [
        {"topic": p.topic, "partition": p.partition, "next_offset": p.next_offset}
        for p in positions
        if topic is None or p.topic == topic
    ]
