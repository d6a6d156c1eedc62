"""The changelog side of the store's transactions under ``--changelog``, as
``state/changelog_side.py`` asks for it.

In a batch's, a claim's or a reset's transaction: the rows the capture triggers caught
(``capture.py``), published through the producers of the claims (``owner.py``: any callable of
that shape, for the tests), and the changelog offset each partition reached, recorded beside the
state (``offsets.py``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping

from aiokafka import TopicPartition

from sqlstate.changelog.capture import discard_changes, take_changes
from sqlstate.changelog.offsets import record_changelog_offset
from sqlstate.errors import ChangelogError
from sqlstate.state.model import Change, Row

#: Publish each partition's rows and new position, each in its own Kafka transaction; each
#: partition's next changelog offset, or why its transaction did not commit
#: (``ChangelogOwner.publish_from_thread``). Called in the database thread, inside the
#: transaction.
Publish = Callable[
    [Mapping[TopicPartition, Change]],
    Mapping[TopicPartition, int | ChangelogError],
]


class CapturedChangelog:
    """Captured rows out, published through ``publish``, the offsets reached recorded."""

    def __init__(self, publish: Publish) -> None:
        self._publish = publish

    def discard_changes(self, conn: sqlite3.Connection) -> None:
        discard_changes(conn)

    def take_changes(self, conn: sqlite3.Connection) -> list[Row]:
        return take_changes(conn)

    def publish(
        self, changes: Mapping[TopicPartition, Change]
    ) -> Mapping[TopicPartition, int | ChangelogError]:
        return self._publish(changes)

    def record_offset(self, conn: sqlite3.Connection, tp: TopicPartition, next_offset: int) -> None:
        # The owner's batch leaves the file at the changelog's end: nothing past it to apply.
        record_changelog_offset(conn, tp, next_offset, next_offset)
