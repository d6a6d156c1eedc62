"""The daemon's life: open the database, migrate, join the group, run the loop, stop cleanly.

SIGTERM or SIGINT: stop fetching, finish and commit the batch in flight, leave the group (bounded
by a timeout), close the database, exit 0. A second signal exits at once with code 130; the
database is consistent either way, since every batch is one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import aiokafka
import aiosqlite
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from sqlstate import __version__
from sqlstate.app import collector
from sqlstate.app.batch_loop import BatchLoop
from sqlstate.app.claims import Claimer, Listener
from sqlstate.app.group_offsets import GroupOffsets
from sqlstate.app.matched_topics import MatchedTopics
from sqlstate.app.monitor import Monitor
from sqlstate.app.ownership import Ownership
from sqlstate.app.processor_checks import load_checked
from sqlstate.app.processor_definitions import definitions
from sqlstate.app.topic_watch import TopicWatch
from sqlstate.changelog import mode as changelog_mode
from sqlstate.changelog.owner import ChangelogOwner
from sqlstate.changelog.state_table import StateTable
from sqlstate.errors import (
    AuthenticationError,
    BrokerError,
    SqlstateError,
    TopicNotFoundError,
)
from sqlstate.kafka.client import (
    build_consumer,
    c_parser_loaded,
    reads_bare_records,
    refusal,
    worth_asking_why,
)
from sqlstate.kafka.decoding import BadRecords, Decoding
from sqlstate.kafka.schemas import schemas_for
from sqlstate.kafka.topic_pattern import matches, subscription_pattern
from sqlstate.observe.logs import LogEvent
from sqlstate.observe.stats import Stats
from sqlstate.processors.registry import Processors
from sqlstate.settings import Settings
from sqlstate.state import migrate
from sqlstate.state.database import Database
from sqlstate.state.recorded import isolation_refusal
from sqlstate.state.store import Store

logger = logging.getLogger("sqlstate.daemon")  # its documented name


def _started_words(fields: Mapping[str, Any]) -> dict[str, str]:
    pattern = fields.get("topic_pattern")
    return {
        "topics_listed": f"matching {pattern}" if pattern else ", ".join(fields["topics"]),
        "processors_listed": ", ".join(fields["processors"]),
        "parser": "C extension"
        if fields["record_parser"] == "c"
        else "pure Python (about 20x slower)",
        "records_kept": "as parsed" if fields["records"] == "bare" else "copied as ConsumerRecords",
    }


_STARTED = LogEvent(
    logger,
    logging.INFO,
    "started",
    "sqlstate %(version)s (aiokafka %(aiokafka_version)s, aiosqlite %(aiosqlite_version)s,"
    " SQLite %(sqlite_version)s) database %(database)s schema %(schema)s; topics"
    " %(topics_listed)s; group %(group_id)s; processors %(processors_listed)s; record parser:"
    " %(parser)s, records %(records_kept)s",
    words=_started_words,
)
_FORCED_EXIT = LogEvent(logger, logging.WARNING, "forced_exit", "second %(signal)s: exiting now")
_STOP_REQUESTED = LogEvent(
    logger,
    logging.INFO,
    "stop_requested",
    "%(signal)s: finishing the batch in flight, then stopping",
)
_KAFKA_UNREACHABLE = LogEvent(
    logger,
    logging.WARNING,
    "kafka_unreachable",
    "cannot reach Kafka at %(bootstrap_servers)s yet (%(reason)s); retrying",
)
_STOPPED_WHILE_CONNECTING = LogEvent(
    logger, logging.INFO, "stopped_while_connecting", "stopped while connecting to Kafka"
)
_STOP_TIMED_OUT = LogEvent(
    logger,
    logging.WARNING,
    "consumer_stop_timed_out",
    "the Kafka consumer did not stop within %(timeout_s)gs; exiting anyway",
)
_STOP_FAILED = LogEvent(
    logger,
    logging.WARNING,
    "consumer_stop_failed",
    "stopping the Kafka consumer failed: %(reason)s",
)
_STOP_FAILED_FETCHING = LogEvent(
    logger,
    logging.WARNING,
    "consumer_stop_failed",
    "stopping the Kafka consumer failed: %(reason)s (a fetch was retrying)",
)
_FATAL = LogEvent(logger, logging.ERROR, "fatal_error", "stopping: %(reason)s")
_STOPPED = LogEvent(logger, logging.INFO, "stopped", "stopped")

_CONNECT_RETRY_PAUSE_S = 1.0

EXIT_FORCED = 130


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[list[Callable[[], None]]]:
    """First SIGTERM/SIGINT: set ``stop`` and call the callbacks the caller adds to the yielded
    list. Second: exit at once. The old handlers are restored on leaving.

    A signal is second only after a first signal: a fatal error also sets ``stop``, and the
    operator's SIGTERM after it must still leave the group and exit with the error's code.
    """
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    on_stop: list[Callable[[], None]] = []
    received: list[str] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if received:
            _FORCED_EXIT.log(signal=name)
            os._exit(EXIT_FORCED)
        received.append(name)
        _STOP_REQUESTED.log(signal=name)
        stop.set()
        for callback in on_stop:
            callback()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield on_stop
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def _start_consumer(
    consumer: AIOKafkaConsumer, settings: Settings, stop: asyncio.Event
) -> bool:
    """Connect, retrying until ``--connect-timeout``: whether it connected (not when ``stop``)."""
    # A broker that is restarting refuses connections at once, and aiokafka gives up on the first
    # refusal: keep trying until the connect timeout, so that a daemon restarted during a broker
    # restart comes up with it. A failed start() can be repeated: it fails in bootstrap(),
    # before it creates anything.
    deadline = time.monotonic() + settings.connect_timeout_s
    started = False
    while True:
        try:
            if not started:
                await asyncio.wait_for(consumer.start(), deadline - time.monotonic())
                started = True
            existing = await asyncio.wait_for(consumer.topics(), deadline - time.monotonic())
            break
        except (TimeoutError, KafkaError, OSError) as error:
            # The signal's cancellation can be lost: Python 3.11's wait_for returns the inner
            # result when the inner task is already done as it is cancelled. Look at ``stop`` too.
            if stop.is_set():
                return False
            # aiokafka reports a refused login or handshake like an unreachable broker; ask why.
            refused = None
            if worth_asking_why(error, settings.security):
                refused = await refusal(
                    settings.bootstrap_servers,
                    settings.security,
                    max(1.0, deadline - time.monotonic()),
                )
            if refused:
                raise AuthenticationError(refused) from error
            if time.monotonic() + _CONNECT_RETRY_PAUSE_S >= deadline:
                raise BrokerError(
                    f"cannot reach Kafka at {settings.bootstrap_servers} within"
                    f" {settings.connect_timeout_s:g}s: {error!r}"
                ) from error
            _KAFKA_UNREACHABLE.log(bootstrap_servers=settings.bootstrap_servers, reason=repr(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _CONNECT_RETRY_PAUSE_S)
            if stop.is_set():
                return False
    # A pattern takes the topics that exist, and those that come later: none is missing.
    missing = sorted(set(settings.topics) - set(existing))
    if missing:
        raise TopicNotFoundError(
            f"topic {', '.join(missing)} does not exist at {settings.bootstrap_servers};"
            " create it first (sqlstate never creates topics)"
        )
    return True


async def _start_unless_stopped(
    consumer: AIOKafkaConsumer,
    settings: Settings,
    stop: asyncio.Event,
    on_stop: list[Callable[[], None]],
) -> bool:
    """``_start_consumer``, given up at the first signal: whether it started.

    The connect retries can last ``--connect-timeout``; a SIGTERM meanwhile is an operator's
    clean stop (exit 0), not a reason to wait that long and then fail. Cancelling the start is
    safe: it only touches the network, never the database.
    """
    if stop.is_set():
        return False
    starting = asyncio.create_task(_start_consumer(consumer, settings, stop))

    def cancel_start() -> None:
        starting.cancel()

    on_stop.append(cancel_start)
    try:
        started = await starting
    except asyncio.CancelledError:
        # Our own cancellation goes on; the signal's ends the start quietly.
        if not stop.is_set() or _cancelling():
            raise
        started = False
    finally:
        on_stop.remove(cancel_start)
    if not started:
        _STOPPED_WHILE_CONNECTING.log()
    return started


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _stop_consumer(consumer: AIOKafkaConsumer, timeout_s: float) -> None:
    # stop() leaves the group; it has been seen to hang (aio-libs/aiokafka#773), so bound it.
    try:
        await asyncio.wait_for(consumer.stop(), timeout_s)
    except TimeoutError:
        _STOP_TIMED_OUT.log(timeout_s=timeout_s)
    except KafkaError as error:
        _STOP_FAILED.log(reason=repr(error))
    except asyncio.CancelledError as error:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        # Not ours: aiokafka's fetcher, closing, cancels a fetch that is pausing after a failed
        # request (the broker is down) and lets that cancellation out of stop().
        _STOP_FAILED_FETCHING.log(reason=repr(error))


async def run(settings: Settings) -> None:
    """Run until a signal (returns) or a fatal error (raises a SqlstateError)."""
    stop = asyncio.Event()
    # Every processor is loaded and checked before the database is opened, and under
    # --changelog every table it must ship: what `sqlstate check` runs.
    processors, tables = load_checked(settings)
    # Signals are taken from the very start: a SIGTERM while connecting still stops cleanly.
    with stop_on_signals(stop) as on_stop, contextlib.closing(processors):
        stats = Stats()
        fatal: list[BaseException] = []

        def on_fatal(error: BaseException) -> None:
            _FATAL.log(reason=str(error))
            fatal.append(error)
            stop.set()
            # As a signal does: a transaction waiting for a locked database gives up at its
            # next busy timeout, so that the daemon exits with the error's code promptly.
            for callback in on_stop:
                callback()

        database = await Database.open(
            settings.database,
            busy_timeout_s=settings.busy_timeout_s,
            check_integrity=settings.check_integrity,
            stats=stats,
            on_corrupt=on_fatal,
        )
        on_stop.append(database.stop_retrying)
        try:
            await _run_on(database, processors, tables, settings, stats, stop, on_stop, on_fatal)
        except SqlstateError:
            # A fatal error (a corrupt file found beside start-up, say) explains whatever
            # failed after it.
            if fatal:
                raise fatal[0] from None
            raise
        finally:
            failure = fatal[0] if fatal else sys.exc_info()[1]
            # An error that promises the file unchanged (exit 5, a refused isolation level):
            # closing must not checkpoint the WAL into the main file either.
            await database.close(
                checkpoint=not getattr(failure, "leaves_database_unchanged", False)
            )
        if fatal:
            raise fatal[0]
    _STOPPED.log()


def _log_started(
    settings: Settings, database: Database, schema: str, processors: Processors, bare: bool
) -> None:
    _STARTED.log(
        version=__version__,
        aiokafka_version=aiokafka.__version__,
        aiosqlite_version=aiosqlite.__version__,
        sqlite_version=sqlite3.sqlite_version,
        database=str(database.path),
        schema=schema,
        topics=list(settings.topics),
        topic_pattern=settings.topic_pattern,
        group_id=settings.group_id,
        processors=processors.names,
        record_parser="c" if c_parser_loaded() else "python",
        records="bare" if bare else "copied",
    )


async def _run_on(
    database: Database,
    processors: Processors,
    tables: Sequence[StateTable],
    settings: Settings,
    stats: Stats,
    stop: asyncio.Event,
    on_stop: list[Callable[[], None]],
    on_fatal: Callable[[BaseException], None],
) -> None:
    """Migrate, join the group and consume until ``stop``."""
    await migrate.apply_pending(database)
    # From here on, a hand-over of sqlstate rebuild stops this daemon at its next write.
    await database.note_hand_over()
    store = Store(database)
    # Refused before joining the group; the claim checks it again, in its transaction.
    recorded = await store.isolation_level()
    if recorded is not None and recorded != settings.isolation_level:
        raise isolation_refusal(database.path, recorded, settings.isolation_level)
    # Refused before Kafka is asked anything; recorded only once it answered, below.
    # A pattern's topics are known only as they are claimed (each claim records its topics'
    # processors); the ones the file already holds are checked here.
    await store.check_processors(await _input_topics(store, settings), processors.names)
    await store.check_changelog(settings.changelog)
    schema = await migrate.schema_version(database)
    decoding = Decoding(settings.key_format, settings.value_format, schemas_for(settings, stats))
    plan = changelog_mode.follow_plan(settings)
    consumer = build_consumer(
        settings,
        key_deserializer=decoding.key_deserializer,
        value_deserializer=decoding.value_deserializer,
        plan=plan,
        bare_records=decoding.leaves_bytes and processors.read_bare_records,
    )
    try:
        # Not started only when a signal came first: then stop is set.
        if await _start_unless_stopped(consumer, settings, stop, on_stop):
            # Only once Kafka answered: a stop while connecting leaves the file as it was. The
            # set first: a refused one leaves the processors' tables out of the file.
            await store.record_processors(settings.topics, processors.names)
            await store.record_definitions(
                settings.topics, definitions(processors.members, settings)
            )
            await store.record_changelog(settings.changelog)
            await migrate.apply_processor_migrations(database, processors.members)
            if settings.changelog:
                await changelog_mode.prepare(settings, database, consumer, tables)
            _log_started(settings, database, schema, processors, reads_bare_records(consumer))
        if not stop.is_set():
            bad_records = BadRecords(decoding, settings.on_bad_record)
            changelog = changelog_mode.owner_of(
                settings, database, tables, stats, processors.names, plan
            )
            await _consume(
                consumer,
                # The store of the claims and batches: under --changelog, they publish.
                Store(database, changelog_mode.side_of(changelog)),
                processors,
                bad_records,
                settings,
                stats,
                stop,
                on_fatal,
                changelog,
            )
    finally:
        await _stop_consumer(consumer, settings.shutdown_timeout_s)


async def _input_topics(store: Store, settings: Settings) -> Sequence[str]:
    """The topics whose processors are checked at start: ``--topic``'s, or the topics of the
    file that ``--topic-pattern`` matches."""
    if settings.topic_pattern is None:
        return settings.topics
    subscription = subscription_pattern(settings.topic_pattern, settings.group_id)
    held = {position.topic for position in await store.positions()}
    return sorted(topic for topic in held if matches(subscription, topic))


async def _consume(
    consumer: AIOKafkaConsumer,
    store: Store,
    processors: Processors,
    bad_records: BadRecords,
    settings: Settings,
    stats: Stats,
    stop: asyncio.Event,
    on_fatal: Callable[[BaseException], None],
    changelog: ChangelogOwner | None,
) -> None:
    ownership = Ownership(consumer)
    offsets = GroupOffsets(consumer, ownership, stats, enabled=settings.commit_offsets_to_kafka)
    claimer = Claimer(
        consumer,
        store,
        ownership,
        settings,
        stats,
        processors.forget,
        offsets.publish,
        changelog,
        processor_names=processors.names,
    )
    listener = Listener(claimer, ownership, settings.rebalance_budget_s, on_fatal)
    if settings.topic_pattern is None:
        consumer.subscribe(topics=list(settings.topics), listener=listener)
    else:
        consumer.subscribe(
            pattern=subscription_pattern(settings.topic_pattern, settings.group_id),
            listener=listener,
        )
    watch = TopicWatch(consumer, ownership)
    matched = MatchedTopics(consumer, stats) if settings.topic_pattern is not None else None
    loop = BatchLoop(
        consumer,
        store,
        ownership,
        processors,
        settings,
        stats,
        claimer,
        watch,
        offsets,
        bad_records,
        stop,
    )
    monitor = Monitor(consumer, ownership, stats, settings, changelog)
    try:
        async with (
            monitor.running(),
            watch.running(),
            matched.running() if matched is not None else contextlib.nullcontext(),
            changelog_mode.running(changelog, consumer, stop, on_fatal),
        ):
            with collector.tuned(settings.max_records):
                await loop.run()
    finally:
        # Before leaving the group: the last batch's positions, so that Kafka's tools show
        # where the daemon stopped. Bounded; a failure is only counted.
        await offsets.close(settings.shutdown_timeout_s)
