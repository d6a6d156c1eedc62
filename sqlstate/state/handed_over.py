"""Which hand-over of ``sqlstate rebuild`` a daemon started under, and the refusal of its writes
once another happened.

Every hand-over writes a new random value in ``state_settings`` (``hand_over``, in the
hand-over's own transaction: ``handover.py``). A daemon notes the value its file holds right
after migrating it, on its one connection (a TEMP table: no other connection sees it), and
``Database`` checks it at the start of each of that connection's write transactions: one that
finds another value raises ``HandedOverError`` (exit code 13) before it writes anything, be it
a batch, a claim, a changelog's rows or a record of settings, whatever the daemon's processors
(another ``--window`` under the same names included). A connection that noted nothing (a
tool's, a test's) is not checked.
"""

from __future__ import annotations

import sqlite3

from sqlstate.errors import HandedOverError
from sqlstate.state.queries import sql

#: The state setting naming the file's last hand-over (a new random value each time).
HAND_OVER = "hand_over"


def note_hand_over(conn: sqlite3.Connection) -> None:
    """Remember the hand-over the file has had so far; outside a transaction."""
    conn.execute(sql("create_hand_over_seen"))
    conn.execute(sql("forget_hand_over_seen"))
    conn.execute(sql("note_hand_over_seen"), {"name": HAND_OVER})


def refuse_if_handed_over(conn: sqlite3.Connection) -> None:
    """In a transaction of a connection that noted one: ``HandedOverError`` if the file was
    handed over since."""
    if conn.execute(sql("handed_over_since"), {"name": HAND_OVER}).fetchone()[0]:
        raise HandedOverError(
            "sqlstate rebuild handed this database over to a new set of processors after this"
            " daemon started, which wrote nothing more. Restart it with the new processor flags"
            " (under --changelog, and the new --group-id): the restart continues from the"
            " handed-over positions"
        )
