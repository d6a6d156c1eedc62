"""What the store's transactions need of the changelog under ``--changelog``: an interface.

The changelog sits a layer above the state, so the state names only what it asks of it, and
the changelog implements it (``changelog/side.py``); the daemon gives one to ``Store`` when it
builds it. Without ``--changelog`` there is none: no transaction captures or publishes anything.

Every call runs in the database thread, inside the open transaction of ``conn``: the captured
rows, the publish and the changelog offset it reached commit or roll back with the state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Protocol

from aiokafka import TopicPartition

from sqlstate.errors import ChangelogError
from sqlstate.state.model import Change, Row


class ChangelogSide(Protocol):
    """The changelog side of a batch's, a claim's or a reset's transaction."""

    def discard_changes(self, conn: sqlite3.Connection) -> None:
        """Forget the rows captured so far: what follows is one partition's alone."""

    def take_changes(self, conn: sqlite3.Connection) -> list[Row]:
        """The rows changed since the last take or discard, one record per row, then forget
        them."""

    def publish(
        self, changes: Mapping[TopicPartition, Change]
    ) -> Mapping[TopicPartition, int | ChangelogError]:
        """Publish each partition's rows and new position, each in its own Kafka transaction;
        each partition's next changelog offset, or why its transaction did not commit."""

    def record_offset(self, conn: sqlite3.Connection, tp: TopicPartition, next_offset: int) -> None:
        """Record that the file holds ``tp``'s changelog below ``next_offset``."""
