"""The async face of sqlstate's state: each call one transaction or one read on an open database.

``Store`` is what the daemon, the CLI and the snapshot call; the work is done in the database
thread by plain functions of a ``sqlite3`` connection, each in the module that owns its concern:

- ``transactions.py``: a batch, and a claim with its out-of-range reset, each one transaction;
- ``recorded.py``: the settings the state was made with, recorded at the first claim, and the
  refusals of a run that differs;
- ``reads.py``: the read-only queries (positions, the highest counts);
- ``model.py``: the values that go in and come out.

Its dependencies come at construction: the database, and under ``--changelog`` the changelog
side of the transactions (``changelog_side.py``), which the changelog layer implements.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from aiokafka import TopicPartition

from sqlstate.settings import OutOfRangePolicy
from sqlstate.state import reads, recorded, transactions
from sqlstate.state.changelog_side import ChangelogSide
from sqlstate.state.database import Database, utc_now
from sqlstate.state.model import (
    Claimed,
    Forget,
    Outcome,
    PartitionBatch,
    Position,
    RejectionLimit,
)
from sqlstate.state.out_of_range import LogBounds


class Store:
    """sqlstate's transactions on an open database; ``changelog``: the changelog side of each
    batch and claim under --changelog, None without it."""

    def __init__(self, database: Database, changelog: ChangelogSide | None = None) -> None:
        self.database = database
        self._changelog = changelog

    async def commit_batch(
        self, batch: Sequence[PartitionBatch], rejections: RejectionLimit | None = None
    ) -> list[Outcome]:
        """Commit one batch; each partition's outcome comes from the same transaction. Under
        --changelog, ``ChangelogPublishFailed`` when it rolled back for the changelog. With
        ``rejections`` (--on-processor-error dead-letter), ``StatementFailed`` when it rolled
        back for a statement that failed on a record, ``RejectionLimitError`` past the limit."""
        return await self.database.transaction(
            functools.partial(
                transactions.commit_batch,
                batch=batch,
                now=utc_now(),
                changelog=self._changelog,
                rejections=rejections,
            )
        )

    async def claim(
        self,
        bounds: Mapping[TopicPartition, LogBounds],
        owner: str,
        policy: OutOfRangePolicy,
        forget: Forget,
        *,
        topic_ids: Mapping[str, str | None],
        isolation_level: str,
        lock_wait_s: float | None = None,
        held_at: Mapping[TopicPartition, int] | None = None,
        processors: Sequence[str] | None = None,
    ) -> Claimed:
        """Claim an assignment in one transaction: bump each partition's epoch and record the
        owner, read where it stands, and apply the out-of-range policy against ``bounds`` and
        ``topic_ids`` (read from Kafka just before; an ID of None is not checked). Under
        ``fail`` a position outside its log or a topic whose ID changed raises
        ``OutOfRangeError``, and another isolation level than the recorded one
        ``IsolationLevelError``; nothing at all is written then. With ``lock_wait_s``, a
        database locked longer than that raises ``DatabaseBusyError`` and nothing is written.
        With ``held_at`` (a partition's epoch, when this consumer claims it again while
        running), a partition whose row holds another epoch is not claimed (``taken``). With
        ``processors``, they are recorded for each claimed topic, or ``ProcessorError`` (as
        ``record_processors``)."""
        return await self.database.transaction(
            functools.partial(
                transactions.claim_assignment,
                bounds=bounds,
                topic_ids=topic_ids,
                owner=owner,
                policy=policy,
                isolation_level=isolation_level,
                forget=forget,
                now=utc_now(),
                changelog=self._changelog,
                held_at=held_at,
                processors=processors,
            ),
            lock_wait_s,
        )

    async def check_changelog(self, on: bool) -> None:
        """Refuse (``ChangelogModeError``) a run whose --changelog differs from the state's."""
        await self.database.read(functools.partial(recorded.changelog_refusal, on=on))

    async def record_changelog(self, on: bool) -> None:
        """Refuse as ``check_changelog``, or record the mode if none is: before anything is
        restored into the file (a restore writes positions)."""
        await self.database.transaction(
            functools.partial(recorded.check_changelog, on=on, now=utc_now())
        )

    async def isolation_level(self) -> str | None:
        """The isolation level the counts were made with; None before the first claim."""
        return await self.database.read(
            functools.partial(recorded.state_setting, name=recorded.ISOLATION_LEVEL)
        )

    async def check_processors(self, topics: Sequence[str], processors: Sequence[str]) -> None:
        """Refuse (``ProcessorError``) what ``record_processors`` would refuse, writing nothing."""
        await self.database.read(
            functools.partial(recorded.processor_changes, topics=topics, processors=processors)
        )

    async def record_processors(self, topics: Sequence[str], processors: Sequence[str]) -> None:
        """Record which processors keep each topic's state, or refuse (``ProcessorError``) a
        set that differs from the one recorded for a topic that already has positions: a
        processor added there would miss the records below them, one removed would fall
        behind them unseen."""
        await self.database.transaction(
            functools.partial(
                recorded.record_processors, topics=topics, processors=processors, now=utc_now()
            )
        )

    async def record_definitions(
        self, topics: Sequence[str], definitions: Mapping[str, str | None]
    ) -> None:
        """Record what each processor's state is made with (``recorded.record_definitions``)."""
        await self.database.transaction(
            functools.partial(
                recorded.record_definitions,
                topics=topics,
                definitions=definitions,
                now=utc_now(),
            )
        )

    async def positions(self) -> list[Position]:
        return await self.database.read(reads.positions)

    async def position(self, tp: TopicPartition) -> Position | None:
        return await self.database.read(functools.partial(reads.position, tp=tp))

    async def top_counts(
        self, topic: str | None, limit: int
    ) -> tuple[list[tuple[str, str | bytes | None, int]], list[Position]]:
        """The highest totals of the ``counts`` view, (topic, key, count), and the positions
        they were read at, in one read transaction."""
        return await self.database.read(
            functools.partial(reads.top_counts_and_positions, topic=topic, limit=limit)
        )
