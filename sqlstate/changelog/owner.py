"""The partitions this process claims under ``--changelog``: their producers, their restore, and
the publish of each batch before its SQLite transaction commits.

The order that makes it exact on every host (docs/scaling.md):

1. a claim starts the partition's transactional producer first. Its ``transactional_id`` is the
   same on every host, so starting it fences every earlier owner, anywhere, and aborts the
   transaction that owner had open; from then on nobody but this producer can add to the
   partition's changelog. A producer kept through a rebalance (the same member, the group's
   next generation) fenced them when it started; its claim instead waits until the
   changelog's end shows its own last transaction, whose commit markers Kafka writes an
   instant after the commit returned (a new producer's start waits for them itself);
2. then the file is brought up to the changelog's end (``restore``), from the changelog offset it
   has applied: only what it lacks is read, so a standby that followed the partition is ready at
   once, and a file that never saw it reads the partition's state (compacted), not its history;
3. only then is the partition claimed in the file and consumed from the restored position;
4. each batch: the partition's changed rows and its new position go to the changelog in one Kafka
   transaction, which commits *before* the SQLite transaction holding the same changes, and the
   SQLite transaction records the changelog offset it reached. A crash between the two leaves the
   file behind the changelog, which the next claim's restore repairs; a fenced producer's
   transaction never commits, and its SQLite transaction rolls back: a zombie changes nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from typing import NamedTuple, NoReturn, cast

from aiokafka import TopicPartition

from sqlstate.changelog.horizon import TombstoneHorizon
from sqlstate.changelog.identity import check_identity
from sqlstate.changelog.offsets import changelog_offset, changelog_offsets
from sqlstate.changelog.producers import ChangelogProducer, publish_all
from sqlstate.changelog.reader import END_WAIT_S, ChangelogChunk, ChangelogReader
from sqlstate.changelog.seed import seed
from sqlstate.changelog.standby import (
    Standby,
    apply_in,
    changelog_lost,
    forget_whole,
    mark_departed,
    mark_released,
    went_back,
)
from sqlstate.changelog.state_table import StateTable
from sqlstate.changelog.topics import changelog_topic, ensure_changelogs
from sqlstate.errors import ChangelogError, ChangelogFenced, DatabaseBusyError
from sqlstate.observe.logs import LogEvent, describe, partition_fields, rounded
from sqlstate.observe.stats import Stats
from sqlstate.settings import Settings
from sqlstate.state.database import Database, utc_now
from sqlstate.state.model import Change

logger = logging.getLogger(__name__)
_RESTORE_STARTED = LogEvent(
    logger,
    logging.INFO,
    "changelog_restore_started",
    "restoring %(topic)s-%(partition)d from its changelog,"
    " offsets %(changelog_offset)d to %(changelog_end)d",
)
_RESTORE_PROGRESS = LogEvent(
    logger,
    logging.INFO,
    "changelog_restore_progress",
    "restoring %(topic)s-%(partition)d: at changelog offset %(changelog_offset)d of"
    " %(changelog_end)d, %(applied)d records applied",
)
_RESTORED = LogEvent(
    logger,
    logging.INFO,
    "changelog_restored",
    "restored %(topic)s-%(partition)d from its changelog: %(records)d records in %(restore_s).2f s",
    data={"restore_s": rounded(3)},
)
_KEPT = LogEvent(
    logger,
    logging.INFO,
    "changelog_producers_kept",
    "claiming %(partitions)d partitions: %(kept)d changelog producers kept, %(started)d started",
)
_PUBLISHED = LogEvent(
    logger,
    logging.DEBUG,
    "changelog_published",
    "published %(records)d changelog records of %(partitions)d partitions in %(publish_ms).3f ms",
    data={"publish_s": rounded(6)},
    words=lambda fields: {"publish_ms": fields["publish_s"] * 1000},
)
_DEPARTED = LogEvent(
    logger,
    logging.INFO,
    "changelog_departed_unfollowed",
    "%(count)d partitions an earlier process on this host kept in this file are no longer kept"
    " (--standby none; each is claimed again if assigned here): %(partitions)s",
)
_UNMARKED = LogEvent(
    logger,
    logging.WARNING,
    "changelog_release_unmarked",
    "%(_partitions)s, let go, still show as owned in this file (progress.role): %(reason)s",
)

# How long marking released partitions waits for another connection's write lock: a mark is
# worth a moment, not a rebalance.
_MARK_WAIT_S = 1.0

# How long the database thread waits for a batch's changelog transactions. The producers bound
# each publish themselves; this only keeps the thread from waiting on a loop that has stopped.
_PUBLISH_WAIT_S = 60.0


class _Producer(NamedTuple):
    """A claimed partition's producer and the claim it serves: the epoch its claim transaction
    gave the partition in this file, or None until that transaction has committed."""

    producer: ChangelogProducer
    epoch: int | None


class ChangelogOwner:
    """The changelog side of this process's claims. ``start()`` once, ``stop()`` at the end."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        tables: Sequence[StateTable],
        stats: Stats,
        standby: Standby | None,
        *,
        processor_names: Sequence[str] = (),
    ) -> None:
        self._settings = settings
        # Recorded for a topic restored before its first claim here.
        self._processor_names = processor_names
        self._database = database
        self._tables = tables
        self._stats = stats
        self._standby = standby
        self._reader = ChangelogReader(settings)
        self._horizon = TombstoneHorizon(settings) if standby is None else standby.horizon
        # Replaced whole, never changed in place: the database thread reads an entry with one
        # dict lookup, and gets a producer and its claim together.
        self._producers: dict[TopicPartition, _Producer] = {}
        # Partitions being claimed here or claimed: their changelogs are not followed (the
        # standby pauses them), until ``release``.
        self._claiming: set[TopicPartition] = set()
        # Why the last claim of a partition failed, until it is claimed or released.
        self._failures: dict[TopicPartition, str] = {}
        # Releases under way: each runs to its end, whoever stopped waiting for it.
        self._letting_go: set[asyncio.Future[None]] = set()
        # Partitions each changelog is known to have, at least.
        self._changelog_partitions: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._reader.start()

    async def mark_departed(self) -> None:
        """--standby none, at the daemon's start: the partitions an earlier process here kept
        show as no longer kept (``mark_departed``); each is claimed again only if this process
        is assigned it."""
        departed = await self._database.transaction(
            functools.partial(mark_departed, owner=self._settings.owner, claiming=self._claiming)
        )
        if departed:
            _DEPARTED.log(count=len(departed), partitions=describe(departed))

    async def stop(self) -> None:
        await self.release(list(self._claiming | set(self._producers)), follow=False)
        # Releases a rebalance callback stopped waiting for: their producers close too.
        await asyncio.gather(*self._letting_go)
        await self._reader.stop()

    @property
    def standby(self) -> Standby | None:
        return self._standby

    @property
    def owned(self) -> frozenset[TopicPartition]:
        """The input partitions whose producer is started."""
        return frozenset(self._producers)

    @property
    def claiming(self) -> frozenset[TopicPartition]:
        """The input partitions being claimed or claimed here: not followed, until released."""
        return frozenset(self._claiming)

    @property
    def failures(self) -> dict[TopicPartition, str]:
        """Why the last claim of each partition failed, for those not claimed since."""
        return dict(self._failures)

    def keepable(self, tps: Iterable[TopicPartition]) -> set[TopicPartition]:
        """Those of ``tps`` whose next claim keeps the producer they have (``prepare``)."""
        return {
            tp
            for tp in tps
            if (entry := self._producers.get(tp)) is not None and entry.producer.reusable
        }

    def bind(self, claims: Mapping[TopicPartition, int]) -> None:
        """The claim transaction committed with these epochs: from now on a partition's batches
        of that epoch, and only those, publish through the producer its ``prepare`` started."""
        for tp, epoch in claims.items():
            entry = self._producers.get(tp)
            if entry is not None:
                self._producers[tp] = _Producer(entry.producer, epoch)
            self._failures.pop(tp, None)

    def serve_next_claim(self, tps: Iterable[TopicPartition]) -> None:
        """The producers of ``tps`` serve the claim made next, as after ``prepare``, no longer
        the claim they were bound to: a partition claimed again while running (its position
        out of range) publishes its claim's tombstones through the producer it has. Should a
        newer owner's producer have fenced it, that publish fails as fenced and the claim
        rolls back: only Kafka can tell a zombie, since another host's claim never reaches
        this file. A batch of the earlier claim is refused from now on; its claim is released
        before anyway."""
        for tp in tps:
            entry = self._producers.get(tp)
            if entry is not None:
                self._producers[tp] = _Producer(entry.producer, None)

    async def prepare(
        self, tps: Iterable[TopicPartition], stop: asyncio.Event | None = None
    ) -> bool:
        """Before claiming ``tps`` in the file: fence their earlier owners, then restore the
        file from their changelogs; whether the restore is complete (not when ``stop`` was set
        during it: what was restored stays, and the next claim goes on from there). Raises
        ChangelogError (the claim waits and tries again)."""
        tps = sorted(tps)
        try:
            return await self._prepare(tps, stop)
        except Exception as error:
            for tp in tps:
                self._failures[tp] = str(error) or repr(error)
            raise

    async def _prepare(self, tps: Sequence[TopicPartition], stop: asyncio.Event | None) -> bool:
        # Before the first await: a rebalance that revokes them meanwhile must find them being
        # claimed here, so that it releases them (follows them again, stops their producers).
        self._claiming.update(tps)
        if self._standby is not None:
            # The restore is now the partitions' only writer here; what the standby applied
            # is where it starts.
            self._standby.pause(tps)
        await self._changelogs_for(tps)
        # Which incarnation of each input topic and its changelog the claim reads and writes, in
        # one Metadata request: the restores check them, the position records carry the input's.
        ids = await self._reader.topic_ids(
            {tp.topic for tp in tps}
            | {changelog_topic(self._settings.group_id, tp.topic) for tp in tps}
        )
        # A partition kept through a rebalance keeps its producer, unless a publish failed
        # (``producers.py`` says why that is safe), or the input or its changelog is not the
        # topic it started for (a changelog created again meets the restore's identity check
        # at a new producer's claim). Starting one costs a round trip to the transaction
        # coordinator.
        kept = sorted(
            tp
            for tp in self.keepable(tps)
            if self._producers[tp].producer.topic_ids
            == (ids.get(tp.topic), ids.get(self._source(tp).topic))
        )
        # Where each kept producer's last transaction ends: the changelog's end read below may
        # not show it yet (``ChangelogProducer.committed_end``).
        committed: dict[TopicPartition, tuple[ChangelogProducer, int]] = {}
        for tp in kept:
            producer = self._producers[tp].producer
            producer.keep()
            self._producers[tp] = _Producer(producer, None)
            if producer.committed_end is not None:
                committed[tp] = (producer, producer.committed_end)
        await _stop_all(self._take_producers(tp for tp in tps if tp not in kept))
        producers = {
            tp: ChangelogProducer(
                self._settings,
                tp.topic,
                tp.partition,
                input_topic_id=ids.get(tp.topic),
                changelog_topic_id=ids.get(self._source(tp).topic),
            )
            for tp in tps
            if tp not in kept
        }
        started = await asyncio.gather(
            *(producer.start() for producer in producers.values()), return_exceptions=True
        )
        failed: BaseException | None = None
        released: list[ChangelogProducer] = []
        for (tp, producer), outcome in zip(producers.items(), started, strict=True):
            if isinstance(outcome, BaseException):
                failed = failed or outcome
            elif tp not in self._claiming:
                released.append(producer)  # revoked while it started: nobody would stop it
            else:
                self._producers[tp] = _Producer(producer, None)
        await _stop_all(released)
        if failed is not None:
            raise failed
        _KEPT.log(partitions=len(tps), kept=len(kept), started=len(producers))
        # Every partition's end in one request: a partition the file already holds whole (one
        # kept through a rebalance, or followed by the standby) then costs no round trip of its
        # own.
        sources = {tp: self._source(tp) for tp in tps}
        ends = await self._reader.end_offsets(list(sources.values()))
        short = {tp: least for tp, (_, least) in committed.items() if ends[sources[tp]] < least}
        reached = await asyncio.gather(
            *(
                self._reader.end_offset_reaching(sources[tp], least, stop)
                for tp, least in short.items()
            )
        )
        ends.update({sources[tp]: end for tp, end in zip(short, reached, strict=True)})
        if stop is not None and stop.is_set():
            return False
        still = [tp for tp, least in short.items() if ends[sources[tp]] < least]
        for tp in still:
            # Its next claim starts a new producer, and then meets the restore's checks.
            committed[tp][0].replace_at_next_claim()
        if still:
            raise ChangelogError(
                "the changelog's last stable offset did not reach the last transaction this"
                f" host committed within {END_WAIT_S:g} s, for "
                + ", ".join(
                    f"{sources[tp].topic}-{tp.partition} (at {ends[sources[tp]]}, committed up"
                    f" to {short[tp]})"
                    for tp in still
                )
            )
        for tp in tps:
            if tp not in self._claiming:
                continue  # revoked meanwhile: the standby follows it again, not this restore
            await self.restore(tp, ids, stop, end=ends[sources[tp]])
            if stop is not None and stop.is_set():
                return False
        return True

    def _source(self, tp: TopicPartition) -> TopicPartition:
        """The changelog partition of input partition ``tp``."""
        return TopicPartition(changelog_topic(self._settings.group_id, tp.topic), tp.partition)

    async def _changelogs_for(self, tps: Sequence[TopicPartition]) -> None:
        """Grow a changelog whose input gained partitions while running (the start made the
        changelogs for the partitions there were then). Asked of Kafka once per topic and
        whenever a higher partition turns up."""
        wanted: dict[str, int] = {}
        for tp in tps:
            if tp.partition >= self._changelog_partitions.get(tp.topic, 0):
                wanted[tp.topic] = max(wanted.get(tp.topic, 0), tp.partition + 1)
        if wanted:
            await ensure_changelogs(
                self._settings, wanted, self._settings.changelog_replication_factor
            )
            self._changelog_partitions.update(wanted)

    async def release(self, tps: Iterable[TopicPartition], *, follow: bool = True) -> None:
        """Stop the producers of ``tps`` (revoked, fenced, or their claim failed) and, with a
        standby, follow their changelogs again from where the file stands.

        The standby follows them again before the producers stop, and both run to their end
        even if the caller is cancelled meanwhile (a rebalance callback's time budget): a
        partition is never left neither claimed nor followed, nor a producer half closed.
        """
        tps = set(tps)
        released = sorted(tps & self._claiming)
        self._claiming.difference_update(tps)
        for tp in tps:
            self._failures.pop(tp, None)
        letting_go = asyncio.ensure_future(
            self._let_go(released if follow else [], self._take_producers(tps))
        )
        self._letting_go.add(letting_go)
        letting_go.add_done_callback(self._letting_go.discard)
        await asyncio.shield(letting_go)

    def _take_producers(self, tps: Iterable[TopicPartition]) -> list[ChangelogProducer]:
        """Remove the producers of ``tps``: no batch publishes through them any more, also one
        that looked its producer up already."""
        producers = [
            self._producers.pop(tp).producer for tp in sorted(tps) if tp in self._producers
        ]
        for producer in producers:
            producer.retire()
        return producers

    async def _let_go(
        self, released: Sequence[TopicPartition], producers: Sequence[ChangelogProducer]
    ) -> None:
        """Follow ``released`` again, then stop ``producers``; without a standby, stop them,
        then mark ``released`` no longer kept."""
        try:
            if released and self._standby is not None:
                offsets = await self._database.read(changelog_offsets)
                # A partition claimed again while the offsets were read stays paused: its
                # claim has it.
                self._standby.resume(
                    {tp: offsets.get(tp, 0) for tp in released if tp not in self._claiming}
                )
        finally:
            await _stop_all(producers)
        if released and self._standby is None:
            await self._mark_released(released)

    async def _mark_released(self, tps: Sequence[TopicPartition]) -> None:
        """--standby none: nothing applies ``tps`` here any more, and their rows say so
        (``progress.role`` ``unfollowed``) rather than showing them owned. A file too busy
        to say it leaves them as they were: a warning, never a failed rebalance."""
        try:
            await self._database.transaction(
                functools.partial(
                    mark_released, tps=tps, owner=self._settings.owner, claiming=self._claiming
                ),
                lock_wait_s=_MARK_WAIT_S,
            )
        except DatabaseBusyError as error:
            _UNMARKED.log(partitions=len(tps), _partitions=describe(tps), reason=str(error))

    async def restore(
        self,
        tp: TopicPartition,
        topic_ids: Mapping[str, str | None],
        stop: asyncio.Event | None = None,
        *,
        end: int | None = None,
    ) -> int:
        """Apply the changelog of input partition ``tp`` from the file's changelog offset to
        the changelog's end, in bounded transactions; how many records were applied.
        ``topic_ids``: the IDs Kafka gave the input topic and its changelog before the
        producer started; ``ChangelogLostError`` if the changelog is not the one the file
        applied, before anything is read. Once ``stop`` is set, no further transaction begins:
        each one commits whole, so the next restore goes on from the last. ``end``: the
        changelog's last stable offset, read once the producer started (a kept one: once it
        showed the producer's last transaction); None: read it here."""
        began = time.monotonic()
        source = self._source(tp)
        await self._database.transaction(
            functools.partial(
                check_identity,
                topic=tp.topic,
                changelog=source.topic,
                changelog_id=topic_ids.get(source.topic),
                input_id=topic_ids.get(tp.topic),
                now=utc_now(),
                processors=self._processor_names,
            )
        )
        start = await self._database.read(functools.partial(changelog_offset, tp=tp))
        if end is None:
            end = await self._reader.end_offset(source)
        if start > end:
            # The end given may have been read before a transaction the file applied showed in
            # it: a batch of this producer's previous claim, committed meanwhile, whose commit
            # markers Kafka writes an instant after the commit returned.
            end = await self._reader.end_offset_reaching(source, start, stop)
            if stop is not None and stop.is_set():
                return 0
        if start > end:
            await self._raise_past_end(tp, source, start, end)
        # One offset short of the end is the commit marker of the file's last transaction:
        # every transaction holds at least one record and its marker, so nothing to apply.
        applied = 0
        behind = end - start > 1
        if behind:
            start = await self._whole_if_stale(tp, start)
        if self._standby is not None:
            self._standby.checked(tp)  # a file at its changelog's end is young enough
        if behind:
            applied = await self._restore_from(tp, source, start, end, stop)
            if stop is not None and stop.is_set():
                return applied  # what was restored stays; the next claim goes on from there
            _RESTORED.log(
                **partition_fields(tp, records=applied, restore_s=time.monotonic() - began)
            )
        entry = self._producers.get(tp)
        if entry is not None:
            # A file handed over to a new group from the input publishes the partition's state
            # first, unless it did (``seed.py``).
            await seed(self._database, tp, self._tables, entry.producer)
        return applied

    async def _whole_if_stale(self, tp: TopicPartition, start: int) -> int:
        """Where ``tp``'s restore starts: at the file's changelog offset ``start``, or, if that
        is older than its tombstones are kept, at the changelog's first offset, the partition
        forgotten first (``horizon.py``); at the file's offset as it now is if another process
        on the file moved it meanwhile."""
        whole = (await self._horizon.stale(self._reader.offsets_at, {tp: start})).get(tp)
        if whole is None:
            return start
        begin = await forget_whole(self._database, self._horizon, tp, self._tables, start, whole)
        assert begin is not None  # nothing asked whether it was claimed: it is, here
        return begin

    async def _raise_past_end(
        self, tp: TopicPartition, source: TopicPartition, start: int, end: int
    ) -> NoReturn:
        """The file stands at changelog offset ``start``, past the changelog's last stable
        offset ``end``, after waiting for it. ``ChangelogLostError`` if the log itself ends
        before ``start``; a ``ChangelogError`` (the claim is tried again) if it reaches it, but
        a transaction left open below holds the stable offset back."""
        log_end = await self._reader.high_watermark(source)
        if log_end < start:
            raise changelog_lost(tp, start, end)
        raise ChangelogError(
            f"changelog partition {source.topic}-{source.partition} is stable only up to offset"
            f" {end}, below this file's {start}, while its log reaches {log_end}: a transaction"
            f" left open on it holds the stable offset back (not closed within"
            f" {END_WAIT_S:g} s); the claim is tried again"
        )

    async def _restore_from(
        self,
        tp: TopicPartition,
        source: TopicPartition,
        start: int,
        end: int,
        stop: asyncio.Event | None,
    ) -> int:
        """``restore``'s reading and applying, from ``start`` to ``end``, until ``stop`` is set
        between two transactions; the records applied."""
        _RESTORE_STARTED.log(**partition_fields(tp, changelog_offset=start, changelog_end=end))
        applied = 0
        # An async generator: closed at a stop, it lets the reader go at once.
        chunks = cast(
            "AsyncGenerator[ChangelogChunk, None]",
            self._reader.read_to_end(source, start),
        )
        async for chunk in chunks:
            if stop is not None and stop.is_set():
                await chunks.aclose()  # now, not when collected: it holds the reader
                return applied
            done = await apply_in(
                self._database,
                tp,
                chunk,
                self._tables,
                end,
                self._reader.input_ends,
                self._stats,
            )
            if done.behind:
                await chunks.aclose()
                raise ChangelogError(f"{went_back(done)}; the claim is tried again")
            applied += done.records
            self._stats.changelog_restored += done.records
            _RESTORE_PROGRESS.log(
                **partition_fields(
                    tp, changelog_offset=done.next_offset, changelog_end=end, applied=applied
                )
            )
        return applied

    def publish_from_thread(
        self, work: Mapping[TopicPartition, Change]
    ) -> dict[TopicPartition, int | ChangelogError]:
        """Publish each partition's changed rows and new position in its own Kafka transaction,
        all at once; each partition's next changelog offset or its failure.

        Each goes through the producer of the claim whose compare-and-set it passed (its
        ``epoch``), or nowhere: a batch of an older claim, or of a partition released since,
        is refused as fenced. A wait longer than the producers' own bound is a failure of
        every partition (the outcome unknown), never an exception out of the transaction.

        Called from the database thread, inside the batch's open SQLite transaction: the
        transaction must wait for Kafka's commit, and this is the one wait in it.
        """
        assert self._loop is not None, "start() first"
        producers: dict[TopicPartition, ChangelogProducer] = {}
        refused: dict[TopicPartition, int | ChangelogError] = {}
        for tp, change in work.items():
            entry = self._producers.get(tp)  # one lookup: the producer and its claim together
            if entry is None:
                refused[tp] = ChangelogFenced(
                    f"no changelog producer for {tp.topic}-{tp.partition}: released"
                )
            elif entry.epoch != change.epoch:
                refused[tp] = ChangelogFenced(
                    f"a batch of {tp.topic}-{tp.partition} made under claim epoch"
                    f" {change.epoch}, and its producer serves epoch {entry.epoch}: an older"
                    " claim's batch publishes nowhere"
                )
            else:
                producers[tp] = entry.producer
        if refused:
            return refused
        jobs = [(tp, work[tp]) for tp in producers]
        began = time.perf_counter()
        future = asyncio.run_coroutine_threadsafe(
            publish_all(
                [
                    (producers[tp], change.rows, change.next_offset, change.start)
                    for tp, change in jobs
                ]
            ),
            self._loop,
        )
        try:
            outcomes = future.result(_PUBLISH_WAIT_S)
        except TimeoutError:
            # Cancelled, each producer closes itself (its transaction's outcome is unknown):
            # the partitions are restored and claimed again.
            future.cancel()
            late = ChangelogError(
                f"the changelog transactions did not complete within {_PUBLISH_WAIT_S:g} s;"
                " their outcome is unknown"
            )
            return {tp: late for tp in producers}
        # The part of the batch's commit_s spent waiting for Kafka (the rest is SQLite's, the
        # capture included): what the bench splits a commit into.
        publish_s = time.perf_counter() - began
        records = sum(len(change.rows) for _, change in jobs)
        _PUBLISHED.log(partitions=len(jobs), records=records, publish_s=publish_s)
        return {tp: outcome for (tp, _), outcome in zip(jobs, outcomes, strict=True)}


async def _stop_all(producers: Sequence[ChangelogProducer]) -> None:
    if producers:
        await asyncio.gather(*(producer.stop() for producer in producers))
