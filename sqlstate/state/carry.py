"""``sqlstate rebuild`` without folding every record again, where the change allows it: the work
file starts as a copy of the live file (``snapshot.py``), at its positions, and keeps the state
of the processors the new set keeps; only the records after those positions are folded.

Allowed when every processor of the new set keeps a topic's state in the live file under the
same recorded definition (``processor_definitions``: the same SQL or built-in, parameters,
record formats and sqlstate version), so that its rows are the ones folding every record again
would make; that is, when processors were only removed (or nothing changed). Not when a removed
processor set a record apart (``rejected_records``): folded again, that record would reach the
processors that remain. An added or changed processor needs every record: the rebuild then
starts from each partition's recorded start, as ever.

``prune`` then leaves in the copy only what the new set has: the state objects its migrations
and sqlstate's create, and the removed processors' records; and nothing of the changelog (the
hand-over keeps the live file's).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from sqlstate.state import migrate, recorded
from sqlstate.state.queries import sql
from sqlstate.state.table_rows import BOOKKEEPING, quoted

# Dropped in this order, so that nothing is dropped while another object still names it.
_DROP_ORDER = ("trigger", "view", "index", "table")


def removed_if_carried(
    conn: sqlite3.Connection, topics: Sequence[str], wanted: Mapping[str, str | None]
) -> list[str] | None:
    """The processors the live file keeps and ``wanted`` (name -> recorded definition) does
    not, if the file's state may be carried over (module docstring); None if it may not."""
    removed: set[str] = set()
    for topic in topics:
        kept = [row[0] for row in conn.execute(sql("recorded_processors"), {"topic": topic})]
        known = recorded.recorded_definitions(conn, topic)
        for name, definition in wanted.items():
            if name not in kept or definition is None or known.get(name) != definition:
                return None
        removed.update(set(kept) - set(wanted))
    for name in removed:
        if conn.execute(sql("rejected_by_processor"), {"processor": name}).fetchone()[0]:
            return None
    return sorted(removed)


def prune_if_carried(
    conn: sqlite3.Connection,
    topics: Sequence[str],
    wanted: Mapping[str, str | None],
    keep: Sequence[migrate.ProcessorSchema],
) -> bool:
    """In the copy, one transaction: ``removed_if_carried`` decided on the copy itself, then
    ``prune``; whether it was carried."""
    removed = removed_if_carried(conn, topics, wanted)
    if removed is None:
        return False
    prune(conn, keep, removed)
    return True


def prune(
    conn: sqlite3.Connection, keep: Sequence[migrate.ProcessorSchema], removed: Sequence[str]
) -> None:
    """In the copy, one transaction: drop what the processors ``removed`` made and forget them,
    and forget the changelog."""
    wanted = _object_names(keep)
    objects = conn.execute(sql("schema_objects")).fetchall()
    for kind in _DROP_ORDER:
        for found, name, table in objects:
            if found == kind and name not in wanted and table not in BOOKKEEPING:
                conn.execute(f"DROP {kind.upper()} IF EXISTS main.{quoted(name)}")
    for name in removed:
        conn.execute(sql("forget_processor"), {"processor": name})
        conn.execute(sql("forget_processor_definition"), {"processor": name})
        conn.execute(sql("forget_processor_migrations"), {"prefix": migrate.namespaced(name, "")})
    conn.execute(sql("forget_changelog_offsets"))
    conn.execute(sql("forget_changelog_topics"))
    conn.execute(sql("forget_state_setting"), {"name": recorded.CHANGELOG})


def _object_names(keep: Sequence[migrate.ProcessorSchema]) -> set[str]:
    """The names of what sqlstate's migrations and ``keep``'s create, on an empty schema."""
    scratch = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for migration in migrate.available():
            scratch.executescript(migration.script)
        for processor in keep:
            for migration in sorted(processor.migrations, key=lambda m: m.name):
                scratch.executescript(migration.script)
        return {row[1] for row in scratch.execute(sql("schema_objects"))}
    finally:
        scratch.close()
