"""One table whose changed rows go to the changelog: its name and the columns that key its rows.

Which tables these are, and how their keys are found: ``tables.py``; the SQL built from one:
``table_sql.py``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StateTable:
    """A table whose changed rows go to the changelog.

    ``match``: a SQL condition over ``?1 .. ?n`` (``key``'s values in order) that finds one row
    by its key through the table's unique index; None: ``"column" IS ?i`` per key column.
    """

    name: str
    key: tuple[str, ...]
    match: str | None = None
