"""Named SQL statements, each package's loaded once from the ``queries.sql`` beside its code.

sqlstate's own statements (positions, claims, settings, the changelog...) live in
``sqlstate/state/queries.sql`` and are ``sql(name)``; a processor keeps its own in its package
(``sqlstate/processors/latest/queries.sql``) and reads them through ``Queries(its package)``.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
FILE = "queries.sql"


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
def named(package: str) -> dict[str, str]:
    """Every statement of ``package``'s ``queries.sql``, by name: read on first use, then kept."""
    return parse(resources.files(package).joinpath(FILE).read_text("utf-8"))


class Queries:
    """The named statements of one package: ``Queries("sqlstate.processors.latest")("x")`` is
    the statement called ``x`` in that package's ``queries.sql``."""

    def __init__(self, package: str) -> None:
        self.package = package

    def __call__(self, name: str) -> str:
        return named(self.package)[name]


#: sqlstate's own statements: ``sql("claim_partition")``.
sql = Queries("sqlstate.state")
