"""The settings a state was made with, recorded in the file, and the refusals of a run that differs.

A state is a function of its input *and* of how it was read: the isolation level, the
processors that keep each topic, whether a changelog holds it, and which incarnation of each
topic (its ID) the positions count in. Each is recorded at the first claim (``state_settings``,
``topic_processors``, ``topic_ids``); a later run that differs is refused with an error that
says why and what to do, before it writes anything. The daemon checks them before joining the
group; the claim checks them again inside its transaction (``transactions.py``).

Each function runs in the database thread, on the connection of a transaction or a read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from sqlstate.errors import ChangelogModeError, IsolationLevelError, ProcessorError
from sqlstate.settings import DEFAULT_PROCESSORS, OutOfRangePolicy
from sqlstate.state.model import TopicReset
from sqlstate.state.out_of_range import recreated_refusal
from sqlstate.state.queries import sql

ISOLATION_LEVEL = "isolation_level"  # its name in the state_settings table
# Whether the state was made with --changelog ("on") or without ("off"), in state_settings.
CHANGELOG = "changelog"


def state_setting(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute(sql("read_state_setting"), {"name": name}).fetchone()
    return None if row is None else str(row["value"])


def check_isolation_level(conn: sqlite3.Connection, level: str, now: str) -> None:
    """Record the isolation level at the first claim; refuse any other one after it."""
    recorded = state_setting(conn, ISOLATION_LEVEL)
    if recorded is None:
        conn.execute(
            sql("record_state_setting"), {"name": ISOLATION_LEVEL, "value": level, "now": now}
        )
    elif recorded != level:
        raise isolation_refusal(_file_name(conn), recorded, level)


def isolation_refusal(database: object, recorded: str, wanted: str) -> IsolationLevelError:
    """The error of a run with another isolation level than the counts were made with."""
    return IsolationLevelError(
        f"the counts in {database} were made with --isolation-level {recorded}, and this run"
        f" asks for {wanted}: read_uncommitted counts the records of aborted transactions and"
        f" read_committed does not, so the two cannot be mixed; the database was left"
        f" unchanged. Run with --isolation-level {recorded}, or move {database} away (with its"
        f" -wal) to rebuild the counts from Kafka with {wanted}"
    )


def changelog_refusal(conn: sqlite3.Connection, on: bool) -> None:
    """Raise ``ChangelogModeError`` if the state was made in the other mode; a file without
    positions takes either."""
    recorded = state_setting(conn, CHANGELOG)
    wanted = "on" if on else "off"
    if recorded == wanted or not conn.execute(sql("has_positions")).fetchone()[0]:
        return
    if recorded is None and not on:
        return  # counted before the changelog existed: without it, as ever
    file = _file_name(conn)
    if on:
        raise ChangelogModeError(
            f"the state in {file} was made without --changelog: no changelog holds it, so no"
            " other host could restore or follow it, and a partition moving away would lose"
            " it. Start --changelog on a new, empty database file (it restores whatever the"
            " changelogs hold and consumes the rest from the input), or run without --changelog"
        )
    raise ChangelogModeError(
        f"the state in {file} was made with --changelog: running without it would change the"
        " state without its changelog, and every other host's copy would silently diverge."
        " Run with --changelog, or move the file away to start over without it"
    )


def check_changelog(conn: sqlite3.Connection, on: bool, now: str) -> None:
    """Record the mode at the first claim; refuse the other one after it."""
    changelog_refusal(conn, on)
    if state_setting(conn, CHANGELOG) is None:
        conn.execute(
            sql("record_state_setting"),
            {"name": CHANGELOG, "value": "on" if on else "off", "now": now},
        )


def check_topic_id(
    conn: sqlite3.Connection, topic: str, topic_id: str, policy: OutOfRangePolicy, now: str
) -> TopicReset | None:
    """Record a topic's ID at its first claim; None while it is the recorded one. A different
    one means the topic was deleted and created again: under ``fail`` raise; under ``reset``
    the reset to make, with each partition's stored position. The caller forgets those
    partitions, then records the new ID (``record_topic_id``)."""
    row = conn.execute(sql("read_topic_id"), {"topic": topic}).fetchone()
    old_id = None if row is None else row["topic_id"]
    if old_id == topic_id:
        return None
    if old_id is None:  # the first claim, or a database made before topic IDs were recorded
        record_topic_id(conn, topic, topic_id, now)
        return None
    stored = {
        partition: next_offset
        for partition, next_offset in conn.execute(sql("topic_positions"), {"topic": topic})
    }
    if policy == "fail":
        raise recreated_refusal(topic, old_id, topic_id, stored)
    return TopicReset(topic, old_id, topic_id, stored)


def record_topic_id(conn: sqlite3.Connection, topic: str, topic_id: str, now: str) -> None:
    """Record the ID the topic's positions count in: at its first claim, after a recreated
    topic's reset, or by a restore before the first claim (which then checks Kafka's against
    it)."""
    conn.execute(sql("record_topic_id"), {"topic": topic, "topic_id": topic_id, "now": now})


def record_processors(
    conn: sqlite3.Connection, topics: Sequence[str], processors: Sequence[str], now: str
) -> None:
    """Record which processors keep each topic's state, or refuse as ``processor_changes``."""
    for topic, recorded in processor_changes(conn, topics, processors).items():
        conn.execute(sql("forget_recorded_processors"), {"topic": topic})
        for processor in recorded:
            conn.execute(
                sql("record_processor"), {"topic": topic, "processor": processor, "now": now}
            )


def processor_changes(
    conn: sqlite3.Connection, topics: Sequence[str], processors: Sequence[str]
) -> dict[str, list[str]]:
    """The processors to record for each topic whose record is not the one wanted, or
    ``ProcessorError`` for a topic with positions and another set."""
    wanted = sorted(processors)
    changes: dict[str, list[str]] = {}
    for topic in topics:
        recorded = [row[0] for row in conn.execute(sql("recorded_processors"), {"topic": topic})]
        if recorded == wanted:
            continue
        if not conn.execute(sql("topic_has_positions"), {"topic": topic}).fetchone()[0]:
            changes[topic] = wanted
            continue
        if not recorded:
            # Counted before sqlstate recorded its processors: the counts are all there is.
            recorded = changes[topic] = list(DEFAULT_PROCESSORS)
            if recorded == wanted:
                continue
        raise ProcessorError(
            f"the state of topic {topic} in this database is kept by processors"
            f" {', '.join(recorded)}, and this run has {', '.join(wanted) or 'none'}: a"
            " processor added to a topic that already has positions would miss the records"
            " below them, and one left out would fall behind unseen. Run with the same"
            " processors, or start the new set on a new database file"
        )
    return changes


def _file_name(conn: sqlite3.Connection) -> str:
    """The file of the connection's main database, for messages."""
    return str(conn.execute(sql("database_file")).fetchone()["file"])


def record_definitions(
    conn: sqlite3.Connection,
    topics: Sequence[str],
    definitions: Mapping[str, str | None],
    now: str,
) -> None:
    """Record what each processor's state of each topic is made with (``definitions``: by
    processor name; None: not known). A topic that has positions and no record yet was counted
    before definitions were recorded: not known either. One recorded and another run since:
    not known any more, for good."""
    for topic in topics:
        counted = conn.execute(sql("topic_has_positions"), {"topic": topic}).fetchone()[0]
        for processor, definition in definitions.items():
            known = conn.execute(
                sql("read_processor_definition"), {"topic": topic, "processor": processor}
            ).fetchone()
            if known is None and counted:
                definition = None
            conn.execute(
                sql("record_processor_definition"),
                {"topic": topic, "processor": processor, "definition": definition, "now": now},
            )


def recorded_definitions(conn: sqlite3.Connection, topic: str) -> dict[str, str | None]:
    """Each processor's recorded definition for ``topic``."""
    return {
        row[0]: row[1] for row in conn.execute(sql("read_processor_definitions"), {"topic": topic})
    }
