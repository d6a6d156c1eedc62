"""``--changelog`` in the daemon's life: what is checked before Kafka is asked anything, what is
set up once the database is migrated, and what runs beside the batch loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from aiokafka import AIOKafkaConsumer

from sqlstate.changelog.capture import install_capture
from sqlstate.changelog.owner import ChangelogOwner
from sqlstate.changelog.side import CapturedChangelog
from sqlstate.changelog.standby import Standby
from sqlstate.changelog.state_table import StateTable
from sqlstate.changelog.tables import state_tables
from sqlstate.changelog.topics import ensure_changelogs
from sqlstate.errors import BrokerError
from sqlstate.kafka.assignor import FollowPlan
from sqlstate.kafka.client import partition_counts
from sqlstate.kafka.topic_pattern import matches, subscription_pattern
from sqlstate.observe.logs import LogEvent
from sqlstate.observe.stats import Stats
from sqlstate.processors.registry import Processors
from sqlstate.settings import Settings
from sqlstate.state.changelog_side import ChangelogSide
from sqlstate.state.database import Database

logger = logging.getLogger(__name__)
_READY = LogEvent(
    logger,
    logging.INFO,
    "changelog_ready",
    "changelog topics ready: %(names)s; standbys: %(standby)s",
    words=lambda fields: {"names": ", ".join(fields["changelogs"])},
)


def checked_tables(settings: Settings, processors: Processors) -> list[StateTable]:
    """The state tables whose rows go to the changelog; ``ProcessorError`` for a processor whose
    rows cannot be keyed. Empty without --changelog. Before Kafka is asked anything."""
    return state_tables(processors.members) if settings.changelog else []


async def prepare(
    settings: Settings,
    database: Database,
    consumer: AIOKafkaConsumer,
    tables: Sequence[StateTable],
) -> None:
    """Once the database is migrated and Kafka answered: the capture triggers on this
    connection, and the changelog topics, created or grown as the inputs need."""
    await database.setting(functools.partial(install_capture, tables=tables))
    topics: Sequence[str] = settings.topics
    if settings.topic_pattern is not None:
        # The topics that match now; one that appears later gets its changelog at its first
        # claim (``ChangelogOwner.prepare``).
        subscription = subscription_pattern(settings.topic_pattern, settings.group_id)
        topics = sorted(topic for topic in await consumer.topics() if matches(subscription, topic))
    partitions = await partition_counts(consumer, topics)
    for topic, count in partitions.items():
        if count == 0:
            raise BrokerError(f"Kafka gave no partitions for topic {topic}")
    names = await ensure_changelogs(settings, partitions, settings.changelog_replication_factor)
    _READY.log(changelogs=sorted(names.values()), standby=settings.standby or "all")


def follow_plan(settings: Settings) -> FollowPlan | None:
    """Under --standby N, the plan the consumer's assignor fills and the standby follows."""
    count = settings.standby_count
    return None if count is None else FollowPlan(count)


def owner_of(
    settings: Settings,
    database: Database,
    tables: Sequence[StateTable],
    stats: Stats,
    processor_names: Sequence[str] = (),
    plan: FollowPlan | None = None,
) -> ChangelogOwner | None:
    """The changelog side of the claims; None without --changelog. ``processor_names`` are
    recorded for a topic restored or followed before its first claim here; ``plan``
    (``follow_plan``) is what the group gives this member to follow under --standby N."""
    if not settings.changelog:
        return None
    standby = (
        Standby(settings, database, tables, stats, processor_names=processor_names, plan=plan)
        if settings.standbys or plan is not None
        else None
    )
    return ChangelogOwner(
        settings, database, tables, stats, standby, processor_names=processor_names
    )


def side_of(owner: ChangelogOwner | None) -> ChangelogSide | None:
    """The changelog side of the store's transactions, publishing through ``owner``'s
    producers; None without --changelog."""
    return None if owner is None else CapturedChangelog(owner.publish_from_thread)


@contextlib.asynccontextmanager
async def running(
    owner: ChangelogOwner | None,
    consumer: AIOKafkaConsumer,
    stop: asyncio.Event,
    on_fatal: Callable[[BaseException], None],
) -> AsyncIterator[None]:
    """The changelog reader and the standby, beside the batch loop; all stopped at the end,
    with every producer (the partitions' last transactions are committed already)."""
    if owner is None:
        yield
        return
    await owner.start()
    standby = owner.standby
    following: asyncio.Task[None] | None = None
    try:
        if standby is None:
            await owner.mark_departed()
        if standby is not None:
            await standby.start()
            following = asyncio.create_task(standby.run(consumer, stop))
            following.add_done_callback(functools.partial(_failed, on_fatal=on_fatal))
        yield
    finally:
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        if standby is not None:
            await standby.stop()
        await owner.stop()


def _failed(task: asyncio.Task[None], on_fatal: Callable[[BaseException], None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        assert error is not None
        on_fatal(error)
