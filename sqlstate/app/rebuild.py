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

Under ``--changelog`` the file moves to a new group (``--group-id``), whose changelogs the old
group's hosts never read (docs/rebuild.md). The first host handed over builds from the input as
above, and its daemon's claims publish that state to the new group's empty changelogs
(``changelog/seed.py``); each host after it builds its work file from those changelogs instead
(``rebuild_follow.py``), as a standby of the new group would, and takes the new group's
positions with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from sqlstate.app.processor_checks import load_checked
from sqlstate.app.rebuild_follow import follow_group
from sqlstate.app.rebuild_steps import (
    Progress,
    Rebuilt,
    applied_changelogs,
    carry_over,
    check_complete,
    hand_over,
    live_positions,
    reading_live,
    remove_work_file,
    work_store,
)
from sqlstate.app.recompute import Span, recompute
from sqlstate.app.verify import log_bounds, start_reader
from sqlstate.changelog.topics import changelog_topic
from sqlstate.errors import ConfigError, OutOfRangeError
from sqlstate.kafka.client import build_range_reader, partition_counts
from sqlstate.kafka.decoding import Decoding
from sqlstate.kafka.schemas import schemas_for
from sqlstate.observe.logs import LogEvent
from sqlstate.observe.stats import Stats
from sqlstate.processors.registry import Processors
from sqlstate.settings import IsolationLevel, Settings
from sqlstate.state import recorded
from sqlstate.state.database import Database
from sqlstate.state.handover import HandOver, Offsets
from sqlstate.state.model import Position
from sqlstate.state.store import Store

logger = logging.getLogger(__name__)

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
    #: Under --changelog: the group the file moves to (required there; without, not used).
    group_id: str | None = None


async def rebuild(settings: Settings, options: RebuildOptions) -> Rebuilt:
    """Rebuild ``settings.database`` with ``settings``' processors, then hand it over."""
    live_path = settings.database
    work_path = options.work_file or live_path.with_name(live_path.name + ".rebuild")
    async with reading_live(settings) as live:
        level = await _check_live(live, settings)
        changelog = await _check_group(live, settings, options.group_id)
    settings = dataclasses.replace(settings, isolation_level=level)
    if changelog:
        assert options.group_id is not None
        settings = dataclasses.replace(settings, group_id=options.group_id, changelog=True)
    processors, _ = load_checked(settings)
    with contextlib.closing(processors):
        decoding = Decoding(
            settings.key_format, settings.value_format, schemas_for(settings, Stats())
        )
        consumer = build_range_reader(
            settings,
            key_deserializer=decoding.key_deserializer,
            value_deserializer=decoding.value_deserializer,
        )
        try:
            await start_reader(consumer, settings)
            following = changelog and await _group_started(consumer, settings)
            if following:
                rebuilt = await follow_group(settings, consumer, work_path, processors)
            else:
                await carry_over(settings, work_path, processors)
                work = await work_store(work_path, settings, processors)
                try:
                    rebuilt = await _build_and_hand_over(
                        settings, options, consumer, decoding, work, work_path, processors
                    )
                finally:
                    await work.database.close()
        finally:
            await consumer.stop()
    await asyncio.to_thread(remove_work_file, work_path)
    _HANDED_OVER.log(
        database=str(settings.database),
        processors=", ".join(processors.names),
        partitions=rebuilt.partitions,
        held_s=rebuilt.held_s,
    )
    return rebuilt


async def _check_live(live: Database, settings: Settings) -> IsolationLevel:
    """The live file's isolation level; refuses a file holding topics the run does not name."""
    topics = sorted({p.topic for p in await Store(live).positions()})
    if sorted(settings.topics) != topics:
        raise ConfigError(
            f"{settings.database} holds positions of {', '.join(topics) or 'no topic'}: give"
            " exactly those topics to --topic (a hand-over replaces the whole state)"
        )
    # The file's own, where it recorded one: records folded under another level would differ.
    level = await Store(live).isolation_level()
    if level == "read_uncommitted":
        return "read_uncommitted"
    return "read_committed" if level == "read_committed" else settings.isolation_level


async def _check_group(live: Database, settings: Settings, group_id: str | None) -> bool:
    """Whether the live file was made with --changelog; then ``group_id`` must name a group
    whose changelogs the file never read."""
    on = await live.read(functools.partial(recorded.state_setting, name=recorded.CHANGELOG))
    if on != "on":
        return False  # the group plays no part: the file's state is in no changelog
    if group_id is None:
        raise ConfigError(
            f"{settings.database} was made with --changelog: a rebuild there moves the file to"
            " a new consumer group, whose changelogs hold the new processors' rows while the"
            " old group's hosts go on with theirs. Give --group-id a name the group has never"
            " had (say orders-v2), the same on every host (see docs/rebuild.md)"
        )
    applied = await live.read(functools.partial(applied_changelogs, topics=settings.topics))
    for topic, changelog in sorted(applied.items()):
        if changelog == changelog_topic(group_id, topic):
            raise ConfigError(
                f"{settings.database} already applies changelog {changelog} of group {group_id}:"
                " a rebuild moves the file to a new group; give --group-id a name the group"
                " has never had"
            )
    return True


async def _group_started(consumer: AIOKafkaConsumer, settings: Settings) -> bool:
    """Whether the new group's changelogs hold anything: another host handed over to it
    already, and its state is there to follow. Every partition must then be in the file
    (``--standby all``): the new group's changelogs make each partition's state complete."""
    partitions = await partition_counts(consumer, settings.topics)
    names = {topic: changelog_topic(settings.group_id, topic) for topic in settings.topics}
    existing = await consumer.topics()
    tps = [
        TopicPartition(names[topic], partition)
        for topic, count in partitions.items()
        if names[topic] in existing
        for partition in range(count)
    ]
    if not tps:
        return False
    ends = await consumer.end_offsets(tps)
    return any(end > 0 for end in ends.values())


async def _build_and_hand_over(
    settings: Settings,
    options: RebuildOptions,
    consumer: AIOKafkaConsumer,
    decoding: Decoding,
    work: Store,
    work_path: Path,
    processors: Processors,
) -> Rebuilt:
    positions = await live_positions(settings)
    await _check_logs(consumer, positions, await work.positions())
    if settings.changelog:
        await check_complete(consumer, settings, positions)
    counter = Progress()
    starts: dict[tuple[str, int], Position] = {}

    async def catch_up(target: Mapping[TopicPartition, int]) -> None:
        spans = {
            tp: Span(_first(starts.get((tp.topic, tp.partition))), stop)
            for tp, stop in target.items()
        }
        reached = {
            TopicPartition(p.topic, p.partition): p.next_offset for p in await work.positions()
        }
        counter.behind = sum(stop - reached.get(tp, spans[tp].first) for tp, stop in target.items())
        await recompute(consumer, work, processors, decoding, spans, settings, progress=counter.add)

    while True:
        starts = {(p.topic, p.partition): p for p in await live_positions(settings)}
        target = {TopicPartition(*tp): p.next_offset for tp, p in starts.items()}
        reached = {(p.topic, p.partition): p.next_offset for p in await work.positions()}
        gap = sum(p.next_offset - reached.get(tp, _first(p)) for tp, p in starts.items())
        if gap <= options.hand_over_gap:
            break
        await catch_up(target)
    if settings.changelog and await _group_started(consumer, settings):
        # Another host handed over to the group meanwhile: its state is the group's now.
        raise ConfigError(
            f"another host handed over to group {settings.group_id} while this rebuild built"
            " from the input: nothing was handed over; run sqlstate rebuild again, and it"
            " follows that group's changelogs"
        )

    async def finish(handing: HandOver, live_offsets: Offsets) -> None:
        await catch_up({TopicPartition(t, p): o for (t, p), o in live_offsets.items()})
        changelogs = {topic: changelog_topic(settings.group_id, topic) for topic in settings.topics}
        await handing.swap(live_offsets, changelogs=changelogs if settings.changelog else None)

    handed = await hand_over(settings, work_path, finish)
    return dataclasses.replace(handed, records=counter.records)


async def _check_logs(
    consumer: AIOKafkaConsumer, live: Sequence[Position], work: Sequence[Position]
) -> None:
    """``OutOfRangeError`` when Kafka no longer has a partition's records from where the work
    file needs them (its position, else the partition's start): a state made of what is left
    would not be the live one's."""
    reached = {(p.topic, p.partition): p.next_offset for p in work}
    tps = [TopicPartition(p.topic, p.partition) for p in live]
    firsts, _ = await log_bounds(consumer, tps)
    for position, tp in zip(live, tps, strict=True):
        first = firsts.get(tp)
        needed = reached.get((tp.topic, tp.partition), _first(position))
        if first is None or first > needed:
            raise OutOfRangeError(
                f"Kafka no longer has the records of {tp.topic}-{tp.partition} from offset"
                f" {needed} (its log starts at {first}): a state rebuilt from what is"
                " left would differ from the live one; nothing was built or handed over"
            )


def _first(position: Position | None) -> int:
    """Where a partition's state starts: its recorded start, else offset 0 (the log's first:
    the range reader refuses one below it rather than skip records)."""
    if position is None or position.start_offset is None:
        return 0
    return position.start_offset
