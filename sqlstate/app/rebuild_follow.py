"""``sqlstate rebuild`` of a ``--changelog`` file into a group that another host handed over to
first: the new group's changelogs hold its state already, so the work file is built from them,
as a standby of that group builds its file, never from the input (a state made from the input
here would not be a prefix of those changelogs, and the claims and standbys of the new group
apply them onto it).

1. The work file follows every partition's changelog in the new group (``ChangelogOwner.restore``:
   the same checks, the same bounded transactions) until it stands at or past the live file's
   positions, partition for partition.
2. Hand-over, one write transaction on the live file (``state/handover.py``): it fences the live
   daemon and freezes the live positions; the work file follows on until it has passed them,
   which the new group's owners on other hosts bring about; then the live file takes the work
   file's state, its positions and the changelog offsets it reached. The live file's positions
   may move forward there, never back: the new group got further than this host's old one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from sqlstate.app.rebuild_steps import (
    Progress,
    Rebuilt,
    applied_changelogs,
    check_complete,
    hand_over,
    live_positions,
    remove_work_file,
    work_store,
)
from sqlstate.changelog.owner import ChangelogOwner
from sqlstate.changelog.tables import state_tables
from sqlstate.changelog.topics import changelog_topic
from sqlstate.errors import DatabaseError
from sqlstate.kafka.client import topic_ids
from sqlstate.observe.stats import Stats
from sqlstate.processors.registry import Processors
from sqlstate.settings import Settings
from sqlstate.state.handover import HandOver, Offsets
from sqlstate.state.store import Store

# How long the hand-over, holding the live file's write lock, waits for the new group to pass
# the live positions: its owners run elsewhere, and are usually past them already.
_PASS_UNDER_LOCK_S = 30.0
# Between two reads of the changelogs' ends while the new group is behind the live file.
_WAIT_S = 0.5


async def follow_group(
    settings: Settings, consumer: AIOKafkaConsumer, work_path: Path, processors: Processors
) -> Rebuilt:
    """Build the work file from ``settings.group_id``'s changelogs, then hand it over."""
    positions = await live_positions(settings)
    await check_complete(consumer, settings, positions)
    work = await _followed_work_store(work_path, settings, processors)
    tps = sorted(TopicPartition(p.topic, p.partition) for p in positions)
    names = {changelog_topic(settings.group_id, tp.topic) for tp in tps}
    ids = await topic_ids(consumer, names | {tp.topic for tp in tps})
    owner = ChangelogOwner(
        settings,
        work.database,
        state_tables(processors.members),
        Stats(),
        None,
        processor_names=processors.names,
    )
    try:
        await owner.start()
        try:
            return await _follow_and_hand_over(settings, owner, work, work_path, tps, ids)
        finally:
            await owner.stop()
    finally:
        await work.database.close()


async def _followed_work_store(
    work_path: Path, settings: Settings, processors: Processors
) -> Store:
    """The work file; one a rebuild from the input left (before another host handed over to
    the group) is no prefix of the group's changelogs, and starts over."""
    work = await work_store(work_path, settings, processors)
    if not await work.positions():
        return work
    applied = await work.database.read(
        functools.partial(applied_changelogs, topics=settings.topics)
    )
    if applied == {t: changelog_topic(settings.group_id, t) for t in settings.topics}:
        return work
    await work.database.close()
    await asyncio.to_thread(remove_work_file, work_path)
    return await work_store(work_path, settings, processors)


async def _follow_and_hand_over(
    settings: Settings,
    owner: ChangelogOwner,
    work: Store,
    work_path: Path,
    tps: Sequence[TopicPartition],
    ids: Mapping[str, str | None],
) -> Rebuilt:
    counter = Progress()

    async def behind(target: Offsets) -> int:
        """Restore every partition to its changelog's end; records the work file is short of
        ``target``."""
        for tp in tps:
            counter.add(await owner.restore(tp, ids))
        reached = {(p.topic, p.partition): p.next_offset for p in await work.positions()}
        short = sum(max(offset - reached.get(tp, 0), 0) for tp, offset in target.items())
        counter.behind = short
        counter.add(0)
        return short

    while True:
        live = {(p.topic, p.partition): p.next_offset for p in await live_positions(settings)}
        if not await behind(live):
            break
        await asyncio.sleep(_WAIT_S)

    async def finish(handing: HandOver, live_offsets: Offsets) -> None:
        locked = time.monotonic()
        while await behind(live_offsets):
            if time.monotonic() - locked > _PASS_UNDER_LOCK_S:
                raise DatabaseError(
                    f"group {settings.group_id} did not reach the live file's positions within"
                    f" {_PASS_UNDER_LOCK_S:g} s of the hand-over's lock: nothing was handed over."
                    " Is a daemon of that group running? Run sqlstate rebuild again"
                )
            await asyncio.sleep(_WAIT_S / 5)
        await handing.swap_followed(live_offsets)

    handed = await hand_over(settings, work_path, finish)
    return dataclasses.replace(handed, records=counter.records)
