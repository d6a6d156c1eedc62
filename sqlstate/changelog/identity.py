"""Which incarnation of its topics a file holds, under ``--changelog``: a file never applies
another incarnation's log.

A topic deleted and created again under the same name (or a mirror of it on another cluster) is
a new log whose offsets start over; only its topic ID tells it from the old one. Two IDs matter:

- the changelog topic's: ``changelog_offsets`` counts offsets of one changelog topic. Its ID is
  recorded beside them (table ``changelog_topics``) when the file first restores or follows it,
  and checked at every restore and standby start, and by a standby after each fetch;
- the input topic's: an offset of the input means nothing in another incarnation of it. Every
  position record carries the input topic's ID (``records.position_record``); applying one whose
  ID differs from the one the file counts the topic under (table ``topics``, recorded at the
  first claim) stops. A file that has no ID recorded yet takes the input topic's current one
  first, so that a new host never restores positions of an input that was recreated since.

Each check is a transaction function: a mismatch raises ``ChangelogLostError`` (exit code 5)
and rolls back, so nothing of what was read is written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sqlstate.errors import ChangelogLostError
from sqlstate.state.queries import sql
from sqlstate.state.recorded import record_processors, record_topic_id

_START_OVER = (
    " Nothing was written. To start over, run a new group (new changelogs) on new database"
    " files, which rebuild the state from the input topics"
)


def check_identity(
    conn: sqlite3.Connection,
    topic: str,
    changelog: str,
    changelog_id: str | None,
    input_id: str | None,
    now: str,
    processors: Sequence[str] = (),
) -> None:
    """At a restore or standby start, before anything of ``changelog`` (the changelog of input
    ``topic``) is read: the changelog must be the one this file applied, with its ID now
    (``changelog_id``), and the input topic's ID (``input_id``, now) is recorded if the file has
    none yet. Either ID is None where Kafka gives none: not checked. ``processors``: recorded
    for the topic if the file has none for it yet, before the changelog brings it positions (a
    topic --topic-pattern found since the start), or ``ProcessorError`` as at a claim."""
    row = conn.execute(sql("read_changelog_topic"), {"topic": topic}).fetchone()
    if row is not None:
        recorded, recorded_id = row[0], row[1]
        if recorded != changelog or not same_id(recorded_id, changelog_id):
            raise changelog_replaced(topic, changelog, recorded, recorded_id, changelog_id)
    if row is None or (row[1] is None and changelog_id is not None):
        conn.execute(
            sql("record_changelog_topic"),
            {"topic": topic, "changelog": changelog, "topic_id": changelog_id, "now": now},
        )
    if input_id is not None and _input_topic_id(conn, topic) is None:
        record_topic_id(conn, topic, input_id, now)
    if processors:
        record_processors(conn, [topic], processors, now)


def check_position_topic(
    conn: sqlite3.Connection, topic: str, partition: int, topic_id: str | None, now: str
) -> None:
    """Before a position record of input partition (``topic``, ``partition``) is applied: it
    must count offsets of the input topic the file counts (``topic_id``: the record's; None for
    a record written before positions carried it, which is applied as before)."""
    if topic_id is None:
        return
    recorded = _input_topic_id(conn, topic)
    if recorded is None:
        record_topic_id(conn, topic, topic_id, now)
    elif recorded != topic_id:
        raise ChangelogLostError(
            f"the changelog of {topic}-{partition} carries positions of input topic {topic}"
            f" with ID {topic_id}, but this file counts {topic} with ID {recorded}: the input"
            " topic was deleted and created again since that changelog was written (or the"
            " changelog belongs to another cluster), and its offsets are not the same log's."
            + _START_OVER
        )


def same_id(recorded: str | None, now: str | None) -> bool:
    """Whether a topic ID recorded and Kafka's now name one topic; None on either side (Kafka
    gave no ID) cannot tell them apart."""
    return recorded is None or now is None or recorded == now


def changelog_replaced(
    topic: str, changelog: str, recorded: str, recorded_id: str | None, now_id: str | None
) -> ChangelogLostError:
    """The error of a changelog that is not the incarnation this file applied."""
    if recorded != changelog:
        what = (
            f"this file applied changelog topic {recorded} for input topic {topic}, and this run"
            f" would read {changelog}: another group's changelog, whose offsets are not the ones"
            " this file counts. Run with the --group-id this file was made with."
        )
        return ChangelogLostError(what + _START_OVER)
    return ChangelogLostError(
        f"changelog topic {changelog} (of input topic {topic}) has ID {now_id}, but this file"
        f" applied the one with ID {recorded_id}: the changelog topic was deleted and created"
        " again (or is a copy), so its offsets are not the ones this file counts, and it lacks"
        " rows of the state. Changelog topics must never be deleted." + _START_OVER
    )


def _input_topic_id(conn: sqlite3.Connection, topic: str) -> str | None:
    row = conn.execute(sql("read_topic_id"), {"topic": topic}).fetchone()
    return None if row is None else row[0]
