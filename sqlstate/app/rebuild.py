"""``sqlstate rebuild``: build a new version of the state with another set of processors beside
the live file, while the daemon keeps serving it, then hand it over.

1. Build: a work file beside the live one (``LIVE.rebuild``, or ``--work-file``) gets the new
   processors' schema and is filled by ``recompute.py`` (the daemon's own batch path) from each
   partition's recorded start up to the live file's positions, read without ever taking the
   live file's write lock. A work file that already holds positions continues from them (a
   rebuild run again after a kill). Round after round, until the live file is less than
   ``--hand-over-gap`` records ahead, with progress logged.
2. Hand over (``state/handover.py``): one write transaction on the live file fences its owners,
   reads its positions, waits while the work file is brought exactly up to them, and replaces the
   state. The daemon, fenced, stops with exit code 13 (``HandedOverError``); restarted with the
   new processor flags it continues from the handed-over positions.

A file made with ``--changelog`` is refused: see docs/rebuild.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from sqlstate.app.processor_checks import load_checked
from sqlstate.app.processor_errors import ProcessorErrors
from sqlstate.app.recompute import Span, recompute
from sqlstate.app.verify import log_bounds, start_reader
from sqlstate.errors import ConfigError, OutOfRangeError
from sqlstate.kafka.client import build_range_reader
from sqlstate.kafka.decoding import BadRecords, Decoding
from sqlstate.kafka.schemas import schemas_for
from sqlstate.observe.logs import LogEvent
from sqlstate.observe.stats import Stats
from sqlstate.processors.registry import Processors
from sqlstate.settings import IsolationLevel, Settings
from sqlstate.state import migrate, recorded
from sqlstate.state.database import Database
from sqlstate.state.handover import HandOver
from sqlstate.state.model import Position
from sqlstate.state.store import Store

logger = logging.getLogger(__name__)

_PROGRESS = LogEvent(
    logger,
    logging.INFO,
    "rebuild_progress",
    "rebuild: %(records)d records done, %(rate).0f records/s, %(behind)d behind the live file,"
    " about %(left_s).0f s left",
)
_HANDED_OVER = LogEvent(
    logger,
    logging.INFO,
    "rebuild_handed_over",
    "rebuild handed %(database)s over to processors %(processors)s at %(partitions)d"
    " partitions' positions (the lock was held %(held_s).3f s)",
)


@dataclass(frozen=True)
class RebuildOptions:
    #: The work file; None: the live file's path with ``.rebuild`` appended.
    work_file: Path | None = None
    #: Hand over once the live file is at most this many records ahead of the work file.
    hand_over_gap: int = 5000


@dataclass(frozen=True)
class Rebuilt:
    records: int
    partitions: int
    held_s: float


async def rebuild(settings: Settings, options: RebuildOptions) -> Rebuilt:
    """Rebuild ``settings.database`` with ``settings``' processors, then hand it over."""
    live_path = settings.database
    work_path = options.work_file or live_path.with_name(live_path.name + ".rebuild")
    live = await Database.open(
        live_path, busy_timeout_s=settings.busy_timeout_s, read_only=True, check_integrity=False
    )
    try:
        level = await _check_live(live, settings)
    finally:
        await live.close(checkpoint=False)
    settings = dataclasses.replace(settings, isolation_level=level)
    processors, _ = load_checked(settings)
    with contextlib.closing(processors):
        work = await _work_store(work_path, settings, processors)
        try:
            rebuilt = await _build_and_hand_over(settings, options, work, work_path, processors)
        finally:
            await work.database.close()
    await asyncio.to_thread(_remove, work_path)
    return rebuilt


def _remove(work_path: Path) -> None:
    """The work file, handed over: its state is the live file's now."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(work_path) + suffix).unlink(missing_ok=True)


async def _check_live(live: Database, settings: Settings) -> IsolationLevel:
    """The live file's isolation level; refuses a --changelog file and one holding topics the
    run does not name."""
    if await live.read(functools.partial(recorded.state_setting, name=recorded.CHANGELOG)) == "on":
        raise ConfigError(
            f"{settings.database} was made with --changelog: a hand-over replaces one host's"
            " file, and the other hosts' copies and the changelog topics would keep the old"
            " processors' rows. Rebuild under a new --changelog-topic prefix and move every"
            " host to it instead (see docs/rebuild.md)"
        )
    topics = sorted({p.topic for p in await Store(live).positions()})
    if sorted(settings.topics) != topics:
        raise ConfigError(
            f"{settings.database} holds positions of {', '.join(topics) or 'no topic'}: give"
            " exactly those topics to --topic (a hand-over replaces the whole state)"
        )
    level = await Store(live).isolation_level()
    return "read_uncommitted" if level == "read_uncommitted" else settings.isolation_level


async def _work_store(path: Path, settings: Settings, processors: Processors) -> Store:
    database = await Database.open(path, busy_timeout_s=settings.busy_timeout_s)
    try:
        await migrate.apply_pending(database)
        await migrate.apply_processor_migrations(database, processors.members)
        store = Store(database)
        # Refuses a work file left by a rebuild with other processors: it is no use here.
        await store.record_processors(settings.topics, processors.names)
    except BaseException:
        await database.close()
        raise
    return store


async def _build_and_hand_over(
    settings: Settings,
    options: RebuildOptions,
    work: Store,
    work_path: Path,
    processors: Processors,
) -> Rebuilt:
    decoding = Decoding(settings.key_format, settings.value_format, schemas_for(settings, Stats()))
    consumer = build_range_reader(
        settings,
        key_deserializer=decoding.key_deserializer,
        value_deserializer=decoding.value_deserializer,
    )
    try:
        await start_reader(consumer, settings)
        await _check_logs(consumer, await _live_positions(settings))
        counter = _Progress()

        starts: dict[tuple[str, int], Position] = {}

        async def catch_up(target: Mapping[TopicPartition, int]) -> None:
            spans = {
                tp: Span(_first(starts.get((tp.topic, tp.partition))), stop)
                for tp, stop in target.items()
            }
            reached = {
                TopicPartition(p.topic, p.partition): p.next_offset for p in await work.positions()
            }
            counter.behind = sum(
                stop - reached.get(tp, spans[tp].first) for tp, stop in target.items()
            )
            await recompute(
                consumer,
                work,
                processors,
                BadRecords(decoding, settings.on_bad_record),
                spans,
                isolation_level=settings.isolation_level,
                max_records=settings.max_records,
                idle_timeout_s=settings.connect_timeout_s,
                errors=ProcessorErrors(processors, settings, Stats()),
                progress=counter.add,
            )

        while True:
            starts = {(p.topic, p.partition): p for p in await _live_positions(settings)}
            target = {TopicPartition(*tp): p.next_offset for tp, p in starts.items()}
            reached = {(p.topic, p.partition): p.next_offset for p in await work.positions()}
            gap = sum(p.next_offset - reached.get(tp, _first(p)) for tp, p in starts.items())
            if gap <= options.hand_over_gap:
                break
            await catch_up(target)
        hand_over = await HandOver.open(settings.database, work_path, settings.busy_timeout_s)
        try:
            locked = time.monotonic()
            live_offsets = await hand_over.lock()
            await catch_up({TopicPartition(t, p): o for (t, p), o in live_offsets.items()})
            await hand_over.swap(live_offsets)
            await hand_over.commit()
            held_s = time.monotonic() - locked
        except BaseException:
            await hand_over.rollback()
            raise
        finally:
            await hand_over.close()
    finally:
        await consumer.stop()
    _HANDED_OVER.log(
        database=str(settings.database),
        processors=", ".join(processors.names),
        partitions=len(live_offsets),
        held_s=held_s,
    )
    return Rebuilt(counter.records, len(live_offsets), held_s)


async def _live_positions(settings: Settings) -> list[Position]:
    """The live file's positions, read as any reader does (never its write lock)."""
    live = await Database.open(
        settings.database,
        busy_timeout_s=settings.busy_timeout_s,
        read_only=True,
        check_integrity=False,
    )
    try:
        return await Store(live).positions()
    finally:
        await live.close(checkpoint=False)


async def _check_logs(consumer: AIOKafkaConsumer, live: Sequence[Position]) -> None:
    """``OutOfRangeError`` when Kafka no longer has a partition's records from its start: a
    state made of what is left would not be the live one's."""
    tps = [TopicPartition(p.topic, p.partition) for p in live]
    firsts, _ = await log_bounds(consumer, tps)
    for position, tp in zip(live, tps, strict=True):
        first = firsts.get(tp)
        if first is None or first > _first(position):
            raise OutOfRangeError(
                f"Kafka no longer has the records of {tp.topic}-{tp.partition} from offset"
                f" {_first(position)} (its log starts at {first}): a state rebuilt from what is"
                " left would differ from the live one; nothing was built or handed over"
            )


def _first(position: Position | None) -> int:
    """Where a partition's state starts: its recorded start, else offset 0 (the log's first:
    the range reader refuses one below it rather than skip records)."""
    if position is None or position.start_offset is None:
        return 0
    return position.start_offset


class _Progress:
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
