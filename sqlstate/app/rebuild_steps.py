"""What both ways of ``sqlstate rebuild`` share (from the input, ``rebuild.py``; from a new
group's changelogs, ``rebuild_follow.py``): the live file's positions as a reader reads them,
the check that a ``--changelog`` file holds every partition, the progress line, the result."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from sqlstate.app.processor_definitions import definitions
from sqlstate.errors import ConfigError, SqlstateError
from sqlstate.kafka.client import partition_counts
from sqlstate.observe.logs import LogEvent
from sqlstate.processors.registry import Processors
from sqlstate.settings import Settings
from sqlstate.state import carry, migrate, recorded, snapshot
from sqlstate.state.database import Database
from sqlstate.state.handover import HandOver, Offsets
from sqlstate.state.model import Position
from sqlstate.state.queries import sql
from sqlstate.state.store import Store

logger = logging.getLogger(__name__)

_CARRIED = LogEvent(
    logger,
    logging.INFO,
    "rebuild_carried_over",
    "rebuild: the state of %(processors)s carried over from the live file at its positions"
    " (removed: %(removed)s); only the records after them are folded",
)
_PROGRESS = LogEvent(
    logger,
    logging.INFO,
    "rebuild_progress",
    "rebuild: %(records)d records done, %(rate).0f records/s, %(behind)d behind the live file,"
    " about %(left_s).0f s left",
)


@dataclass(frozen=True)
class Rebuilt:
    records: int
    partitions: int
    held_s: float


async def live_positions(settings: Settings) -> list[Position]:
    """The live file's positions, read as any reader does (never its write lock)."""
    async with reading_live(settings) as live:
        return await Store(live).positions()


def reading_live(settings: Settings) -> contextlib.AbstractAsyncContextManager[Database]:
    """The live file, opened as any reader opens it: read-only, never its write lock."""
    return Database.reading(settings.database, settings.busy_timeout_s)


async def check_complete(
    consumer: AIOKafkaConsumer, settings: Settings, live: Sequence[Position]
) -> None:
    """Under --changelog: ``ConfigError`` unless the live file holds every partition of its
    topics. The new group's changelogs are made from one host's file, and a partition missing
    there would start over in the new group (``--standby none`` keeps only what a host owns)."""
    held = {(p.topic, p.partition) for p in live}
    for topic, count in (await partition_counts(consumer, settings.topics)).items():
        missing = [partition for partition in range(count) if (topic, partition) not in held]
        if missing:
            raise ConfigError(
                f"{settings.database} holds no position for {topic}-{missing[0]}: under"
                " --changelog a rebuild needs a file that holds every partition, as every host"
                " with --standby all (the default) does"
            )


class Progress:
    """Records done, their rate, and the time left at that rate."""

    def __init__(self) -> None:
        self.records = 0
        self.behind = 0
        self._started = time.monotonic()
        self._logged = 0.0

    def add(self, records: int) -> None:
        self.records += records
        self.behind = max(self.behind - records, 0)
        now = time.monotonic()
        if now - self._logged < 1.0:
            return
        self._logged = now
        rate = self.records / max(now - self._started, 1e-6)
        _PROGRESS.log(
            records=self.records,
            rate=rate,
            behind=self.behind,
            left_s=self.behind / rate if rate else 0.0,
        )


async def work_store(path: Path, settings: Settings, processors: Processors) -> Store:
    """The work file, with the new processors' schema. One left by an earlier rebuild goes on
    from its positions only if it was made by exactly these processors, each under the same
    definition (a rebuild killed, then run again with another --window or an edited --sql file
    would otherwise hand over a state made by two); any other starts over."""
    wanted = definitions(processors.members, settings)
    if not await _made_by(path, settings, wanted):
        await asyncio.to_thread(remove_work_file, path)
    database = await Database.open(path, busy_timeout_s=settings.busy_timeout_s)
    try:
        await migrate.apply_pending(database)
        await migrate.apply_processor_migrations(database, processors.members)
        store = Store(database)
        await store.record_processors(settings.topics, processors.names)
        await store.record_definitions(settings.topics, wanted)
    except BaseException:
        await database.close()
        raise
    return store


async def _made_by(path: Path, settings: Settings, wanted: Mapping[str, str | None]) -> bool:
    """Whether the work file at ``path`` holds positions made by ``wanted`` (processor ->
    definition, none unknown) alone; False also for a file that cannot be read as one."""
    if not await asyncio.to_thread(path.exists):
        return True
    try:
        work = await Database.open(
            path, busy_timeout_s=settings.busy_timeout_s, read_only=True, check_integrity=False
        )
    except SqlstateError:
        return False
    try:
        found = await work.read(
            functools.partial(_definitions_if_positions, topics=settings.topics)
        )
    except SqlstateError:
        return False
    finally:
        await work.close(checkpoint=False)
    return None not in wanted.values() and all(made == wanted for made in found)


def _definitions_if_positions(
    conn: sqlite3.Connection, topics: Sequence[str]
) -> list[dict[str, str | None]]:
    """Each topic's recorded definitions; none at all for a file without positions."""
    if not conn.execute(sql("has_positions")).fetchone()[0]:
        return [{}]
    return [recorded.recorded_definitions(conn, topic) for topic in topics]


def remove_work_file(work_path: Path) -> None:
    """The work file: handed over (its state is the live file's now), or of no use. Its WAL
    first: a WAL left beside a file that takes the name later would be replayed onto it."""
    for suffix in ("-wal", "-shm", ""):
        Path(str(work_path) + suffix).unlink(missing_ok=True)


async def hand_over(
    settings: Settings, work_path: Path, finish: Callable[[HandOver, Offsets], Awaitable[None]]
) -> Rebuilt:
    """The hand-over transaction on the live file: lock it (fencing its daemon, freezing its
    positions), let ``finish`` bring the work file up to those positions and swap, commit; on
    any failure roll back, leaving the old state whole. Rebuilt's records: 0 (the caller's)."""
    handing = await HandOver.open(settings.database, work_path, settings.busy_timeout_s)
    try:
        locked = time.monotonic()
        live_offsets = await handing.lock()
        await finish(handing, live_offsets)
        await handing.commit()
        held_s = time.monotonic() - locked
    except BaseException:
        await handing.rollback()
        raise
    finally:
        await handing.close()
    return Rebuilt(0, len(live_offsets), held_s)


async def carry_over(settings: Settings, work_path: Path, processors: Processors) -> bool:
    """Start the work file as a copy of the live file where the change allows it (``carry.py``);
    whether it did. A work file already there goes on from its positions if the same processors
    made it (``work_store``), and is removed otherwise."""
    wanted = definitions(processors.members, settings)
    if not await _made_by(work_path, settings, wanted):
        await asyncio.to_thread(remove_work_file, work_path)
    if await asyncio.to_thread(work_path.exists):
        return False
    if settings.changelog:
        # The partitions this host follows were folded by other hosts, whose definitions this
        # file never compared: from the input, as ever.
        return False
    async with reading_live(settings) as live:
        removed = await live.read(
            functools.partial(carry.removed_if_carried, topics=settings.topics, wanted=wanted)
        )
    if removed is None:
        return False
    # Copied and pruned under another name, renamed once pruned (no connection is open on
    # it): a kill -9 in between leaves no work file that is a copy not yet pruned.
    copy = work_path.with_name(work_path.name + ".copy")
    await asyncio.to_thread(remove_work_file, copy)
    await snapshot.take(settings.database, copy, busy_timeout_s=settings.busy_timeout_s)
    work = await Database.open(copy, busy_timeout_s=settings.busy_timeout_s)
    try:
        # Decided again on the copy itself: the live file may have changed since it was asked.
        pruned = await work.transaction(
            functools.partial(
                carry.prune_if_carried,
                topics=settings.topics,
                wanted=wanted,
                keep=processors.members,
            )
        )
    finally:
        await work.close()
    if not pruned:
        await asyncio.to_thread(remove_work_file, copy)
        return False
    await asyncio.to_thread(remove_work_file, work_path)  # no stray WAL beside the copy
    await asyncio.to_thread(os.replace, copy, work_path)
    _CARRIED.log(processors=", ".join(processors.names), removed=", ".join(removed) or "none")
    return True


def applied_changelogs(conn: sqlite3.Connection, topics: Sequence[str]) -> dict[str, str]:
    """The changelog topic the file applies for each of ``topics`` that has one."""
    found = {}
    for topic in topics:
        row = conn.execute(sql("read_changelog_topic"), {"topic": topic}).fetchone()
        if row is not None:
            found[topic] = str(row[0])
    return found
