"""Named SQL statements, loaded once from ``queries.sql``: the one place run-time SQL lives."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split a file of ``-- name: x`` blocks into {name: statement}, comments kept."""
    parts = _NAME.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


@cache
def _all() -> dict[str, str]:
    return parse(resources.files("sqlstate.state").joinpath("queries.sql").read_text("utf-8"))


def sql(name: str) -> str:
    """The statement called ``name`` in ``queries.sql``."""
    return _all()[name]
