"""``sqlstate`` with one fault injected at a named point of its cycle, for crash and zombie tests.

    python -m tests.support.faulty_daemon --fault after_upsert --at 3 -- -v run --topic ...

Everything after ``--`` goes to ``sqlstate.cli.main`` unchanged. The fault is put in from the
outside, by wrapping one product method before the CLI starts, so the product has no test-only
branch and a run without ``--fault`` is exactly ``sqlstate``. At the ``--at``-th time the point is
reached (counting only hits that carry work, see ``POINTS``) the process either kills itself with
SIGKILL (``--action kill``, the default: nothing is flushed, no ``finally`` runs, exactly a kill -9)
or stops itself with SIGSTOP (``--action stop``: frozen, as a paused VM or a long GC would leave it,
until someone sends SIGCONT; then it carries on from that very point). ``--action raise`` makes the
point raise ``RuntimeError`` (an unexpected failure of that step), ``--action sleep`` makes it
take ``--seconds`` longer (a slow network call). Before acting it prints ``FAULT <point> <hit>``
on stderr so a test knows the point was reached.

``--max-page-count-slack N`` makes the database "full" N pages beyond its size at start, through
``PRAGMA max_page_count`` on the daemon's own connection (the pragma is per connection).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from sqlstate import cli
from sqlstate.app import claims
from sqlstate.app.batch_loop import BatchLoop
from sqlstate.app.claims import Claimer, Listener
from sqlstate.app.group_offsets import GroupOffsets
from sqlstate.changelog.owner import ChangelogOwner
from sqlstate.changelog.producers import ChangelogProducer
from sqlstate.processors.base import Statement
from sqlstate.processors.registry import Processors
from sqlstate.state import migrate
from sqlstate.state.database import Database
from sqlstate.state.store import Store

# point: (class, method, where the fault fires, which hits count)
POINTS: dict[str, tuple[Any, str, str, str]] = {
    # A batch was fetched and gated; the transaction has not begun.
    "after_fetch": (BatchLoop, "_commit", "before", "any"),
    # Inside the batch transaction: a position moved, its counts upserted, COMMIT not yet run.
    # The processors' statements run in the database thread, so the fault rides on their rows:
    # it fires when the database has pulled the last row of a partition's last statement.
    "after_upsert": (Processors, "statements", "after", "any"),
    # The batch transaction committed; the in-memory claims are not yet advanced.
    "after_commit": (Store, "commit_batch", "after", "any"),
    # Just before the batch transaction begins (the zombie's pause point).
    "before_commit": (Store, "commit_batch", "before", "any"),
    # Inside the revoke callback, with partitions to give up.
    "in_revoke": (Listener, "on_partitions_revoked", "before", "nonempty"),
    # Inside the assign callback, before the claim transaction.
    "before_claim": (Store, "claim", "before", "any"),
    # Inside the assign callback: the claim (epoch bump) committed, no partition seeked yet.
    "after_claim": (Store, "claim", "after", "any"),
    # The positions to copy to the group's offsets in Kafka passed the ownership check; the
    # commit request is not built yet (a zombie's pause point for Kafka's offsets).
    "before_kafka_commit": (GroupOffsets, "_commit", "before", "any"),
    # In the middle of a migration's transaction, after one of its statements ran.
    "in_migration": (migrate, "statements", "after", "any"),
    # The log's bounds of an assignment, asked of Kafka before its claim (in the assign callback,
    # or in the batch loop for partitions held since a rebalance).
    "claim_bounds": (claims, "read_bounds", "before", "any"),
    # Inside the assign callback, as it begins (each assignment is a hit, an empty one too).
    "in_assign": (Claimer, "assign", "before", "any"),
    # A partition the fetcher found out of range while running, before its log's bounds are
    # asked of Kafka for its claim again.
    "out_of_range_bounds": (BatchLoop, "_out_of_range", "before", "any"),
    # --changelog, in the database thread inside the batch's SQLite transaction: its rows are
    # captured and the Kafka transactions not begun yet ("before"), or committed ("after",
    # with the SQLite transaction not committed: the file is behind its changelog).
    "before_changelog_publish": (ChangelogOwner, "publish_from_thread", "before", "any"),
    "after_changelog_publish": (ChangelogOwner, "publish_from_thread", "after", "any"),
    # --changelog, a claim: its partitions' standby is paused, their producers not started yet.
    "changelog_producer_start": (ChangelogProducer, "start", "before", "any"),
}
# Points that are not awaited (they run in the database thread or a generator): no sleep there.
_NOT_AWAITED = {"after_upsert", "in_migration"}
# Points on a plain function that runs in the database thread.
_IN_THREAD = {"before_changelog_publish", "after_changelog_publish"}


def _counts(point: str, args: Sequence[Any]) -> bool:
    """Whether this call is a hit: revokes count only when there is something to revoke."""
    if POINTS[point][3] == "nonempty":
        return bool(args[1]) if len(args) > 1 else True
    return True


class _FiringRows(list[Any]):
    """A statement's rows that call ``fire`` once the database has run them all."""

    def __init__(self, rows: Sequence[Any], fire: Callable[[], None]) -> None:
        super().__init__(rows)
        self._fire = fire

    def __iter__(self) -> Iterator[Any]:
        # executemany pulls one row, runs it, pulls the next: asked for a row after the last,
        # every row has run, inside the transaction, and COMMIT has not.
        yield from super().__iter__()
        self._fire()


def install(point: str, at: int, action: str, seconds: float = 8.0) -> None:
    """Wrap the method behind ``point`` so that its ``at``-th hit kills or stops this process,
    raises, or sleeps ``seconds``."""
    owner, name, where, _ = POINTS[point]
    original: Callable[..., Any] = getattr(owner, name)
    hits = 0
    if action == "sleep" and (point in _NOT_AWAITED or point in _IN_THREAD):
        raise SystemExit(f"--action sleep needs a point that is awaited, not {point}")

    def fire() -> None:
        sys.stderr.write(f"FAULT {point} {hits}\n")
        sys.stderr.flush()
        if action == "raise":
            raise RuntimeError(f"fault injected at {point}")
        if action in ("kill", "stop"):
            os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGSTOP)

    if point == "after_upsert":

        def statements(self: Processors, tp: Any, records: Any) -> list[Statement]:
            nonlocal hits
            result: list[Statement] = original(self, tp, records)
            if result:
                hits += 1
                if hits == at:
                    last = result[-1]
                    result = [*result[:-1], replace(last, rows=_FiringRows(last.rows, fire))]
            return result

        setattr(owner, name, statements)
        return

    if point == "in_migration":

        def split(script: str) -> Iterator[str]:
            nonlocal hits
            for statement in original(script):
                yield statement
                # Asked for the next statement: the one before it has run, inside the
                # migration's transaction.
                hits += 1
                if hits == at:
                    fire()

        setattr(owner, name, split)
        return

    if point in _IN_THREAD:

        @functools.wraps(original)
        def in_thread(*args: Any, **kwargs: Any) -> Any:
            nonlocal hits
            hits += 1
            hit = hits == at
            if hit and where == "before":
                fire()
            result = original(*args, **kwargs)
            if hit and where == "after":
                fire()
            return result

        setattr(owner, name, in_thread)
        return

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal hits
        hit = False
        if _counts(point, args):
            hits += 1
            hit = hits == at
        if hit and where == "before":
            fire()
            if action == "sleep":
                await asyncio.sleep(seconds)
        result = await original(*args, **kwargs)
        if hit and where == "after":
            fire()
        return result

    setattr(owner, name, wrapper)


def limit_pages(slack: int) -> None:
    """Let the daemon's connection grow the file by only ``slack`` pages: a full disk."""
    original = Database.open.__func__  # type: ignore[attr-defined]

    async def open_limited(cls: type[Database], *args: Any, **kwargs: Any) -> Database:
        database: Database = await original(cls, *args, **kwargs)
        # Migrate first so that the limit leaves room for batches, not for the schema.
        await migrate.apply_pending(database)

        def limit(conn: sqlite3.Connection) -> None:
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            conn.execute(f"PRAGMA max_page_count = {int(pages) + slack}")

        await database.setting(limit)
        return database

    Database.open = classmethod(open_limited)  # type: ignore[method-assign, assignment]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--fault", choices=sorted(POINTS))
    parser.add_argument("--at", type=int, default=1, help="fire at this hit (1 = the first)")
    parser.add_argument("--action", choices=["kill", "stop", "raise", "sleep"], default="kill")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long --action sleep is")
    parser.add_argument("--max-page-count-slack", type=int)
    parser.add_argument("sqlstate_args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    rest = list(options.sqlstate_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if options.fault:
        install(options.fault, options.at, options.action, options.seconds)
    if options.max_page_count_slack is not None:
        limit_pages(options.max_page_count_slack)
    cli.main(rest, prog_name="sqlstate")


if __name__ == "__main__":
    main()
