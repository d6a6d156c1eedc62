"""Standbys (``--standby all``, or ``N``): this file also follows partitions other hosts own.

One changelog consumer, outside the group, follows every partition of every input topic's
changelog from the offset this file has applied, and applies what it reads: a poll's chunks
together, in transactions of up to ``_TRANSACTION_RECORDS`` records. The partitions this process
owns are paused there: their owner writes them itself. So every file converges to the complete
state, any SQLite client on any host reads all of it, and a partition that moves to this host is
restored from almost where it is.

Under ``--standby N`` it follows only the partitions the group's leader gave this member to
follow (``assignor.FollowPlan``), and stops following the others: their rows in ``positions``
then say ``unfollowed`` (``progress.role``), so that a reader knows this file no longer keeps
them, though they keep the state of the position they show.

Applying is monotonic (``apply_changes`` skips records below the file's changelog offset), so a
chunk fetched just before its partition was claimed here changes nothing when it lands after.

What the standby follows is checked against the tombstone horizon (``horizon.py``) when its
following begins, and again before a poll's records are applied whenever the last check of
their partition is older than the check lasts (``_young_enough``): a process frozen or cut off
from Kafka for longer than the changelog keeps its tombstones restores the partition whole rather
than apply a tail that may lack a deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from sqlstate.changelog.apply import (
    Applied,
    Quarantined,
    apply_changes,
    capture_quieted,
    forget_for_restore,
)
from sqlstate.changelog.horizon import TombstoneHorizon, WholeRestore
from sqlstate.changelog.identity import changelog_replaced, check_identity, same_id
from sqlstate.changelog.offsets import changelog_offset, changelog_offsets
from sqlstate.changelog.reader import ChangelogChunk, ChangelogFollower, InputEnds
from sqlstate.changelog.records import highest_position
from sqlstate.changelog.seed import own_seed, seed_applied
from sqlstate.changelog.state_table import StateTable
from sqlstate.changelog.topics import changelog_topic
from sqlstate.errors import ChangelogError, ChangelogLostError
from sqlstate.kafka.assignor import FollowPlan
from sqlstate.kafka.client import topic_ids
from sqlstate.observe.logs import LogEvent, partition_fields
from sqlstate.observe.stats import Stats
from sqlstate.settings import Settings, owner_gone
from sqlstate.state.database import Database, utc_now
from sqlstate.state.queries import sql

logger = logging.getLogger(__name__)
_FOLLOWING = LogEvent(
    logger,
    logging.INFO,
    "standby_following",
    "following the changelogs of %(partitions)d partitions",
)
_UNFOLLOWED = LogEvent(
    logger,
    logging.INFO,
    "standby_unfollowed",
    "no longer following %(count)d partitions (--standby %(standby)d): %(partitions)s",
)
_IDS_UNAVAILABLE = LogEvent(
    logger,
    logging.DEBUG,
    "topic_ids_unavailable",
    "could not ask Kafka for the changelogs' IDs: %(reason)s",
)
_DEFERRED = LogEvent(
    logger,
    logging.WARNING,
    "standby_follow_deferred",
    "standby: %(partitions)d new partitions not followed yet: %(reason)s; asked again in"
    " %(retry_s)g s",
)
_RETRYING = LogEvent(
    logger,
    logging.WARNING,
    "standby_retrying",
    "standby: %(error)s; reading %(topic)s-%(partition)d again shortly",
)
_RECHECK_FAILED = LogEvent(
    logger,
    logging.WARNING,
    "standby_recheck_failed",
    "standby: %(partitions)d partitions not applied: %(reason)s; read again from this file's"
    " offsets, checked again shortly",
)
_QUARANTINED = LogEvent(
    logger,
    logging.WARNING,
    "changelog_record_quarantined",
    "changelog record of %(topic)s-%(partition)d at offset %(changelog_offset)d set aside, not"
    " applied: %(reason)s; key %(key)r",
    # The sentence shows the key's bytes; the JSON line, as text.
    data={"key": lambda key: key.decode(errors="replace")},
)

_POLL_MS = 500
_MAX_RECORDS = 30_000
# A poll's chunks are applied together, in transactions of about this many records: each
# transaction waits once for the write lock, and for the owner's batches queued before it in the
# database thread, and its capture triggers are off when that pays (``capture_quieted``); and
# none is so large that the owner's next batch waits long behind it. Measured in docs/performance.md
# (standby lag): one transaction per partition's chunk, or one for the whole poll (30,000
# records), did worse, the first in lag and the second in the owner's throughput.
_TRANSACTION_RECORDS = 5_000
# How long to wait before asking Kafka for the changelogs' IDs again, when it did not answer.
_RETRY_S = 1.0
# How long new partitions' following waits for Kafka to say how old their records are
# (``horizon.py``) before the standby goes back to what it follows; the longest pause before
# asking again.
_HORIZON_WAIT_S = 5.0
_DEFERRED_MAX_S = 60.0


class Standby:
    """Follows the changelogs of the partitions this process does not own."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        tables: Sequence[StateTable],
        stats: Stats,
        *,
        processor_names: Sequence[str] = (),
        plan: FollowPlan | None = None,
    ) -> None:
        self._settings = settings
        self._plan = plan  # --standby N; None: follow every partition
        # Released or no longer followed here, not yet said so in the file (``_mark_unfollowed``).
        self._unfollowed: set[TopicPartition] = set()
        self._reconciled: frozenset[TopicPartition] | None = None  # the plan's last follows
        # Recorded for a topic whose changelog is followed before it is claimed here.
        self._processor_names = processor_names
        self._database = database
        self._tables = tables
        self._stats = stats
        self._follower = ChangelogFollower(settings)
        # Shared with the claims' restores (``ChangelogOwner``): R is asked once per process.
        self.horizon = TombstoneHorizon(settings)
        self._paused: set[TopicPartition] = set()  # input partitions this process owns
        # Followed from the file's offset unchecked, since claimed here first (``_starts``).
        self._unchecked: set[TopicPartition] = set()
        # New partitions that wait for Kafka to say how old their records are (``_starts``),
        # until when, and the pause before asking again.
        self._deferred: set[TopicPartition] = set()
        self._deferred_until = 0.0
        self._deferred_for = 0.0
        # Each followed partition: when its offset was last known young enough to be caught up
        # from its tail (``horizon.py``), by the wall clock and by the monotonic one. One
        # without is checked before its next records are applied.
        self._young_at: dict[TopicPartition, tuple[float, float]] = {}
        # Each followed changelog topic's ID, as this file recorded it (None: Kafka gave none).
        self._changelog_ids: dict[str, str | None] = {}
        # Each followed changelog topic's input topic: --topic's, or every topic that
        # --topic-pattern has matched so far (one deleted since is still followed).
        self._inputs = {changelog_topic(settings.group_id, t): t for t in settings.topics}

    def _source(self, tp: TopicPartition) -> TopicPartition:
        return TopicPartition(changelog_topic(self._settings.group_id, tp.topic), tp.partition)

    async def start(self) -> None:
        if self._plan is not None:
            rows = await self._database.read(followed_partitions)
            self._plan.following |= frozenset(rows)
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    async def follow_new(self, consumer: AIOKafkaConsumer) -> None:
        """Follow every partition of the input topics not followed yet (at start, and when a
        topic gains partitions), from where this file stands."""
        for topic in consumer.subscription():
            self._inputs.setdefault(changelog_topic(self._settings.group_id, topic), topic)
        wanted = {
            TopicPartition(topic, partition)
            for topic in self._inputs.values()
            for partition in consumer.partitions_for_topic(topic) or ()
        }
        plan = self._plan
        if plan is not None and not plan.everything:
            follows = plan.follows or frozenset()
            if plan.follows is not None and plan.follows is not self._reconciled:
                # Once per assignment: every partition this file is not to keep says so, those
                # it kept before this process too (a restart) and those it never had (no row).
                # Those assigned here are about to be claimed (paused, then written here).
                self._reconciled = plan.follows
                self._unfollowed.update(wanted - follows - plan.owns)
            wanted &= follows
            # What this member is assigned is followed until its claim pauses it.
            self._unfollow(self.followed - wanted - self._paused - plan.owns)
            if plan.follows is not None:  # before, it says what the file followed (``start``)
                plan.following = frozenset(wanted & self.followed)
        followed = set(self._follower.followed)
        new = [tp for tp in sorted(wanted) if self._source(tp) not in followed]
        if time.monotonic() < self._deferred_until:
            new = [tp for tp in new if tp not in self._deferred]
        if not new:
            return
        # Before anything of them is read: each changelog must be the one this file applied.
        changelogs = {changelog_topic(self._settings.group_id, tp.topic): tp.topic for tp in new}
        ids = await topic_ids(consumer, [*changelogs.values(), *changelogs])
        # A topic --topic-pattern found since the start has no changelog until its first claim,
        # on whichever host, creates it: it is followed from then on.
        unborn = {
            changelog
            for changelog, topic in changelogs.items()
            if changelog not in ids and topic not in self._settings.topics
        }
        if unborn:
            new = [tp for tp in new if self._source(tp).topic not in unborn]
            changelogs = {c: t for c, t in changelogs.items() if c not in unborn}
            if not new:
                return
        now = utc_now()
        for changelog, topic in sorted(changelogs.items()):
            await self._database.transaction(
                functools.partial(
                    check_identity,
                    topic=topic,
                    changelog=changelog,
                    changelog_id=ids.get(changelog),
                    input_id=ids.get(topic),
                    now=now,
                    processors=self._processor_names,
                )
            )
            self._changelog_ids[changelog] = ids.get(changelog)
        # How long a check lasts (R), asked once here rather than at the first poll that brings
        # records, which would wait for it. Best effort, and briefly: what is followed already
        # waits meanwhile; ``_young_enough`` asks again if it is not known.
        with contextlib.suppress(ChangelogError, TimeoutError):
            await asyncio.wait_for(self.horizon.proof_lasts_s(set(changelogs)), _RETRY_S)
        checked_at = _clocks()
        starts, unchecked, deferred = await self._starts(new)
        if plan is not None:
            # A partition this file said it no longer keeps is kept again from now on, even if
            # its changelog brings nothing for a while.
            await self._database.transaction(functools.partial(mark_followed, tps=new))
        # No await from here to the follow. A partition left unchecked for its claim and let go
        # since: the next round checks it.
        new = [
            tp for tp in new if tp not in deferred and (tp not in unchecked or tp in self._paused)
        ]
        if not new:
            return
        self._unchecked.update(tp for tp in unchecked if tp in self._paused)
        self._young_at.update(dict.fromkeys(new, checked_at))
        self._follower.follow({self._source(tp): starts[tp] for tp in new})
        paused = [self._source(tp) for tp in new if tp in self._paused]
        if paused:
            self._follower.pause(paused)
        self._unfollowed.difference_update(new)
        if plan is not None:
            plan.following = frozenset(self.followed)
        _FOLLOWING.log(partitions=len(new))

    async def _starts(
        self, new: Sequence[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], set[TopicPartition], set[TopicPartition]]:
        """Where to follow each of ``new`` from: the file's changelog offset, or, where that is
        older than its tombstones are kept, the changelog's first offset, the partition
        forgotten first (``horizon.py``). Also those left unchecked, claimed here meanwhile
        (their claim's restore checks them; should one be let go before that, ``resume`` has it
        followed anew, checked then), and those deferred: Kafka did not say within
        ``_HORIZON_WAIT_S`` how old their records are, so they wait, asked again after a pause
        that grows while it does not answer. The others are followed meanwhile."""
        offsets = await self._database.read(changelog_offsets)
        starts = {tp: offsets.get(tp, 0) for tp in new}
        unchecked = {tp for tp in new if tp in self._paused}
        asked = {tp: start for tp, start in starts.items() if tp not in unchecked and start > 0}
        try:
            whole = await asyncio.wait_for(
                self.horizon.stale(self._follower.offsets_at, asked), _HORIZON_WAIT_S
            )
        except (ChangelogError, TimeoutError) as error:
            self._deferred = set(asked)
            self._deferred_for = min(2 * self._deferred_for, _DEFERRED_MAX_S) or _HORIZON_WAIT_S
            self._deferred_until = time.monotonic() + self._deferred_for
            reason = str(error) or f"no answer within {_HORIZON_WAIT_S:g} s"
            _DEFERRED.log(partitions=len(asked), reason=reason, retry_s=self._deferred_for)
            return starts, unchecked, set(asked)
        self._deferred, self._deferred_for = set(), 0.0
        for tp, restore in sorted(whole.items()):
            begin = await forget_whole(
                self._database,
                self.horizon,
                tp,
                self._tables,
                starts[tp],
                restore,
                claimed=self._paused.__contains__,
            )
            if begin is None:
                unchecked.add(tp)
            else:
                starts[tp] = begin
        return starts, unchecked, set()

    def checked(self, tp: TopicPartition) -> None:
        """A claim's restore checked ``tp`` against the tombstone horizon: once let go, it is
        followed from the file's offset again."""
        self._unchecked.discard(tp)

    def _unfollow(self, tps: Iterable[TopicPartition]) -> None:
        """Stop following ``tps``; the file says so at the next ``_mark_unfollowed``."""
        tps = sorted(tps)
        if not tps:
            return
        self._follower.unfollow([self._source(tp) for tp in tps])
        self._unfollowed.update(tps)
        _UNFOLLOWED.log(
            count=len(tps),
            standby=self._plan.count if self._plan is not None else 0,
            partitions=", ".join(f"{tp.topic}-{tp.partition}" for tp in tps),
        )

    async def _mark_unfollowed(self) -> None:
        """Say in the file which partitions it no longer keeps (``progress.role``
        ``unfollowed``). Which ones is decided in the transaction itself (``kept`` runs in the
        database thread, at each try of it): a claim pauses its partitions before it queues its
        own transaction, so a partition claimed meanwhile is either skipped here or claimed
        after this transaction, never marked after its claim."""
        tps = sorted(self._unfollowed)
        self._unfollowed.clear()
        if tps:
            await self._database.transaction(
                functools.partial(mark_unfollowed, tps=tps, kept=self._kept)
            )

    def _kept(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` is claimed, being claimed or followed here (from any thread: set
        lookups only)."""
        plan = self._plan
        return (
            tp in self._paused
            or self._source(tp) in self._follower.followed_now
            or (plan is not None and tp in plan.owns)  # claimed next
        )

    @property
    def paused(self) -> frozenset[TopicPartition]:
        """The input partitions this process claims, or is claiming: not applied here."""
        return frozenset(self._paused)

    @property
    def to_follow(self) -> frozenset[TopicPartition]:
        """Under ``--standby N``, what the group gave this process to follow; else nothing."""
        plan = self._plan
        if plan is None or plan.everything:
            return frozenset()
        return plan.follows or frozenset()

    @property
    def followed(self) -> frozenset[TopicPartition]:
        """The input partitions whose changelogs are followed, the paused ones included."""
        inputs = self._inputs
        return frozenset(
            TopicPartition(inputs[source.topic], source.partition)
            for source in self._follower.followed
            if source.topic in inputs
        )

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        """This process owns ``tps`` now: stop applying their changelogs."""
        tps = list(tps)
        self._paused.update(tps)
        self._follower.pause([self._source(tp) for tp in tps])

    def resume(self, offsets: Mapping[TopicPartition, int]) -> None:
        """``tps`` are no longer this process's: follow them again from these offsets (under
        ``--standby N``, those it follows; the others are no longer kept here). One whose
        offset was never checked against the tombstone horizon (claimed before its following
        began, and let go before its restore) is followed anew instead: ``follow_new`` checks
        it."""
        self._paused.difference_update(offsets)
        # Checked again before its next records are applied: another host may have owned it
        # for long already (this process frozen past its session, then told it lost it).
        for tp in offsets:
            self._young_at.pop(tp, None)
        unchecked = {tp for tp in offsets if tp in self._unchecked}
        self._unchecked.difference_update(unchecked)
        self._follower.unfollow([self._source(tp) for tp in unchecked])
        self._follower.resume(
            {self._source(tp): offset for tp, offset in offsets.items() if tp not in unchecked}
        )
        if self._plan is not None and not self._plan.everything:
            followed = self.followed
            self._unfollowed.update(tp for tp in offsets if tp not in followed)

    async def run(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """Apply what the changelogs bring until ``stop``."""
        inputs = self._inputs  # grown by follow_new
        while not stop.is_set():
            try:
                await self.follow_new(consumer)
            except KafkaError as error:
                # Kafka did not answer for the new partitions' topic IDs (a broker away, this
                # host cut off): they are followed once it does; what is followed goes on.
                _IDS_UNAVAILABLE.log(reason=repr(error))
                await asyncio.sleep(_RETRY_S)
                continue
            await self._mark_unfollowed()
            chunks = await self._follower.poll(_POLL_MS, _MAX_RECORDS)
            fetched = {source.topic for source, chunk in chunks.items() if chunk.records}
            if fetched and not await self._same_changelogs(consumer, fetched, stop):
                return  # stopping before Kafka answered: the records are not applied
            young = await self._young_enough(chunks, consumer, stop)
            if young is None:
                return  # stopping before Kafka answered: nothing forgotten, nothing applied
            chunks = young
            lags = self._follower.lag()
            self._stats.standby_lag = {
                TopicPartition(inputs[source.topic], source.partition): behind
                for source, behind in lags.items()
                if behind is not None and source.topic in inputs
            }
            ready: list[PollChunk] = []
            for source, chunk in sorted(chunks.items()):
                behind = lags.get(source)
                tp = TopicPartition(inputs[source.topic], source.partition)
                if tp in self._paused:
                    continue  # claimed here since it was fetched: its owner writes it
                if tp not in self._young_at:
                    continue  # claimed and let go since: checked at the next poll
                if source not in self._follower.followed_now:
                    continue  # no longer followed here since it was fetched
                end = None if behind is None else chunk.next_offset + behind
                try:
                    input_end = await input_end_for(self._follower.input_ends, tp, chunk)
                except ChangelogError as error:
                    await self._read_again(tp, error)
                    continue
                ready.append(PollChunk(tp, chunk, end, input_end))
            for group in transactions(ready, _TRANSACTION_RECORDS):
                # Claimed here while this poll waited (for a lookup, or an earlier group's
                # transaction): not applied. It would change nothing (records below the file's
                # changelog offset are skipped), but the owner's batches need not wait for it.
                # Claimed and let go meanwhile: checked against the horizon at the next poll.
                group = [
                    item
                    for item in group
                    if item.tp not in self._paused and item.tp in self._young_at
                ]
                if not group:
                    continue
                done = await apply_together(self._database, group, self._tables, self._stats)
                self._stats.changelog_applied += sum(applied.records for applied in done)
                for item, applied in zip(group, done, strict=True):
                    source = self._source(item.tp)
                    if (
                        applied.behind
                        and item.tp not in self._paused
                        and source in self._follower.followed_now
                    ):
                        _RETRYING.log(**partition_fields(item.tp, error=went_back(applied)))
                        self._follower.follow({source: applied.next_offset})

    async def _young_enough(
        self,
        chunks: dict[TopicPartition, ChangelogChunk],
        consumer: AIOKafkaConsumer,
        stop: asyncio.Event,
    ) -> dict[TopicPartition, ChangelogChunk] | None:
        """``chunks`` (by changelog partition), less those that must not be applied: the
        partitions whose last check against the tombstone horizon is older than it lasts are
        checked again first, and those found too old are forgotten and followed from their
        changelog's start (as at the start of their following), their chunks dropped; their
        changelogs' IDs are checked before (a chunk without records had none checked). Should
        Kafka not answer, the chunks of the partitions due are dropped and read again, from the
        file's offsets, after a pause. None: ``stop`` came before Kafka answered."""
        tps: dict[TopicPartition, TopicPartition] = {}  # input partition -> its changelog's
        for source in chunks:
            topic = self._inputs.get(source.topic)
            tp = None if topic is None else TopicPartition(topic, source.partition)
            if tp is not None and tp not in self._paused:
                tps[tp] = source
        if not tps:
            return chunks
        now = _clocks()
        due = set(tps)  # until Kafka says how long a check lasts
        changelogs = {source.topic for source in tps.values()}
        try:
            # Known after the first time: no await, so a poll's records wait for nothing here.
            lasts = self.horizon.known_proof_lasts_s(changelogs)
            if lasts is None:
                lasts = await asyncio.wait_for(
                    self.horizon.proof_lasts_s(changelogs), _HORIZON_WAIT_S
                )
            due = {
                tp
                for tp, source in tps.items()
                if (since := self._young_at.get(tp)) is None
                or _elapsed(since, now) >= lasts[source.topic]
            }
            if not due:
                return chunks
            offsets = await self._database.read(changelog_offsets)
            applied = {tp: offsets.get(tp, 0) for tp in due}
            whole = await asyncio.wait_for(
                self.horizon.stale(self._follower.offsets_at, applied), _HORIZON_WAIT_S
            )
        except (ChangelogError, TimeoutError) as error:
            offsets = await self._database.read(changelog_offsets)
            again = {tps[tp]: offsets.get(tp, 0) for tp in due if tp not in self._paused}
            for tp in due:
                chunks.pop(tps[tp])
            if again:
                self._follower.follow(again)
            reason = str(error) or f"no answer within {_HORIZON_WAIT_S:g} s"
            _RECHECK_FAILED.log(partitions=len(due), reason=reason)
            await asyncio.sleep(_POLL_MS / 1000)
            return chunks
        self._young_at.update(dict.fromkeys(due, now))
        forgotten = {tps[tp].topic for tp in whole}
        if forgotten and not await self._same_changelogs(consumer, forgotten, stop):
            return None
        for tp, restore in sorted(whole.items()):
            source = tps[tp]
            chunks.pop(source)
            begin = await forget_whole(
                self._database,
                self.horizon,
                tp,
                self._tables,
                applied[tp],
                restore,
                claimed=self._paused.__contains__,
            )
            if begin is not None and source in self._follower.followed_now:
                self._follower.follow({source: begin})
        return chunks

    async def _read_again(self, tp: TopicPartition, error: ChangelogError) -> None:
        """A chunk that could not be checked now (Kafka did not answer): read the partition
        again from what the file has applied, after a pause."""
        _RETRYING.log(**partition_fields(tp, error=str(error)))
        offset = await self._database.read(functools.partial(changelog_offset, tp=tp))
        if tp not in self._paused:
            self._follower.follow({self._source(tp): offset})
        await asyncio.sleep(_POLL_MS / 1000)

    async def _same_changelogs(
        self, consumer: AIOKafkaConsumer, changelogs: set[str], stop: asyncio.Event
    ) -> bool:
        """Records were just fetched from ``changelogs``: they are of the changelogs this file
        applied only if those still have the recorded IDs now, after the fetch. The fetcher
        reads a topic by name, so a changelog deleted and created again while followed is read
        from the old offsets on, and nothing fails when the new log has grown past them.
        ``ChangelogLostError`` before anything of them is applied; False if ``stop`` came
        before Kafka answered. One Metadata request per fetch that brought records; a broker
        away is waited for (nothing can be fetched meanwhile anyway)."""
        while True:
            try:
                ids = await topic_ids(consumer, changelogs)
                break
            except KafkaError as error:
                if stop.is_set():
                    return False
                _IDS_UNAVAILABLE.log(reason=repr(error))
                await asyncio.sleep(_RETRY_S)
        for changelog, now_id in sorted(ids.items()):
            recorded = self._changelog_ids.get(changelog)
            if not same_id(recorded, now_id):
                raise changelog_replaced(
                    self._inputs[changelog], changelog, changelog, recorded, now_id
                )
        return True


def mark_unfollowed(
    conn: sqlite3.Connection,
    tps: Sequence[TopicPartition],
    kept: Callable[[TopicPartition], bool],
) -> None:
    """The file no longer keeps those of ``tps`` that are not ``kept`` (a transaction
    function)."""
    conn.executemany(
        sql("mark_unfollowed"),
        [{"topic": tp.topic, "partition": tp.partition} for tp in tps if not kept(tp)],
    )


def mark_released(
    conn: sqlite3.Connection,
    tps: Sequence[TopicPartition],
    owner: str,
    claiming: Set[TopicPartition],
) -> None:
    """--standby none: the file no longer keeps those of ``tps`` (let go by ``owner``) that
    are not being claimed again (``claiming``, read here, inside the transaction: a claim
    that began meanwhile writes the row after this one, and must find it unmarked or its
    own). A transaction function."""
    conn.executemany(
        sql("mark_released"),
        [
            {"topic": tp.topic, "partition": tp.partition, "owner": owner}
            for tp in tps
            if tp not in claiming
        ],
    )


def mark_departed(
    conn: sqlite3.Connection, owner: str, claiming: Set[TopicPartition]
) -> list[TopicPartition]:
    """--standby none, at start: the partitions nothing applies in this file are no longer
    kept there: those an exited process of this host owned, or this process's own name had
    (a container started again under the same host name and pid), or a restore cut short
    left as followed. A process that shares the file and still runs keeps its own; one being
    claimed here already (``claiming``, read inside the transaction) is left to its claim.
    The partitions marked; a transaction function."""
    gone = [
        (tp, row_owner)
        for t, p, row_owner in conn.execute(sql("kept_rows"))
        if (tp := TopicPartition(t, p)) not in claiming
        and (row_owner in (owner, "standby") or owner_gone(row_owner))
    ]
    conn.executemany(
        sql("mark_released"),
        [{"topic": tp.topic, "partition": tp.partition, "owner": o} for tp, o in gone],
    )
    return [tp for tp, _ in gone]


def followed_partitions(conn: sqlite3.Connection) -> list[TopicPartition]:
    """The partitions this file follows as its rows say (a read function)."""
    return [TopicPartition(t, p) for t, p in conn.execute(sql("followed_partitions"))]


def mark_followed(conn: sqlite3.Connection, tps: Sequence[TopicPartition]) -> None:
    """``tps``, marked ``unfollowed``, are followed again (a transaction function)."""
    conn.executemany(
        sql("mark_followed"), [{"topic": tp.topic, "partition": tp.partition} for tp in tps]
    )


def changelog_lost(tp: TopicPartition, applied: int, end: int | None = None) -> ChangelogLostError:
    """The error of a changelog that no longer holds what this file applied from it."""
    where = "" if end is None else f", and it now ends at offset {end}"
    return ChangelogLostError(
        f"this file has applied the changelog of {tp.topic}-{tp.partition} up to offset"
        f" {applied}, which that changelog no longer holds{where}: the changelog topic was"
        " deleted, created again or had records deleted, so it lacks rows of the partition's"
        " state and restoring or following it would lose them. Nothing was written. Changelog"
        " topics must never be deleted; to start over, run a new group (new changelogs) on new"
        " database files, which rebuild the state from the input topics"
    )


def went_back(applied: Applied) -> str:
    """Why a chunk was not applied (``Applied.behind``)."""
    return (
        f"this file's changelog offset ({applied.next_offset}) lies below where these records'"
        " reading began: another process on the file moved it back (to restore the partition"
        " whole); read again from there"
    )


class PollChunk(NamedTuple):
    """A chunk of a standby's poll, checked against the input's end, to apply."""

    tp: TopicPartition
    chunk: ChangelogChunk
    log_end_offset: int | None
    input_end: int | None


def _clocks() -> tuple[float, float]:
    """Now, by the wall clock and by the monotonic one: a process suspended with its machine
    misses time on the monotonic clock, and the wall clock can be set back."""
    return time.time(), time.monotonic()


def _elapsed(since: tuple[float, float], now: tuple[float, float]) -> float:
    """The longer of the two clocks' times from ``since`` to ``now``."""
    return max(now[0] - since[0], now[1] - since[1])


async def input_end_for(
    input_ends: InputEnds, tp: TopicPartition, chunk: ChangelogChunk
) -> int | None:
    """The input's end that ``chunk``'s positions must stay within (None: it carries none).
    ``ChangelogError`` (retriable) when Kafka cannot say where the input ends."""
    wanted = highest_position(chunk.records)
    return None if wanted is None else await input_ends.at_least(tp, wanted)


async def forget_whole(
    database: Database,
    horizon: TombstoneHorizon,
    tp: TopicPartition,
    tables: Sequence[StateTable],
    applied: int,
    restore: WholeRestore,
    claimed: Callable[[TopicPartition], bool] | None = None,
) -> int | None:
    """Forget ``tp`` in a transaction of its own, to restore it whole from ``restore``'s log
    start (``apply.forget_for_restore``), and say so if it was forgotten here; where to read
    the partition from, or None if ``claimed`` says a claim of this process took it."""
    forgotten = await database.transaction(
        functools.partial(
            forget_for_restore,
            tp=tp,
            tables=tables,
            applied=applied,
            log_start=restore.log_start,
            claimed=claimed,
        )
    )
    if forgotten is None:
        return None
    begin, here = forgotten
    if here:
        horizon.began(tp, restore)
    return begin


async def apply_in(
    database: Database,
    tp: TopicPartition,
    chunk: ChangelogChunk,
    tables: Sequence[StateTable],
    log_end_offset: int | None,
    input_ends: InputEnds,
    stats: Stats,
) -> Applied:
    """``apply_chunk`` in a transaction of its own, with the input's end that its positions
    must stay within; the records it set aside are counted and logged.
    ``ChangelogError`` (retriable) when Kafka cannot say where the input ends."""
    input_end = await input_end_for(input_ends, tp, chunk)
    ready = [PollChunk(tp, chunk, log_end_offset, input_end)]
    (applied,) = await apply_together(database, ready, tables, stats)
    return applied


async def apply_together(
    database: Database, ready: Sequence[PollChunk], tables: Sequence[StateTable], stats: Stats
) -> list[Applied]:
    """``apply_chunks`` in a transaction of its own; the records set aside are counted and
    logged."""
    done = await database.transaction(
        functools.partial(apply_chunks, ready=ready, tables=tables, now=utc_now())
    )
    for item, applied in zip(ready, done, strict=True):
        for record in applied.quarantined:
            report_quarantined(item.tp, record, stats)
    return done


def transactions(ready: Sequence[PollChunk], records: int) -> list[list[PollChunk]]:
    """``ready`` in order, grouped into transactions of at most ``records`` records each; a
    chunk larger than that alone in its own."""
    groups: list[list[PollChunk]] = []
    size = 0
    for item in ready:
        if not groups or size + len(item.chunk.records) > records:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += len(item.chunk.records)
    return groups


def apply_chunks(
    conn: sqlite3.Connection, ready: Sequence[PollChunk], tables: Sequence[StateTable], now: str
) -> list[Applied]:
    """Apply chunks of a standby's poll, in one transaction (a transaction function), with the
    capture triggers off for all of them if together they are enough records for it to pay."""
    with capture_quieted(conn, tables, sum(len(item.chunk.records) for item in ready)):
        return [
            apply_chunk(
                conn,
                item.tp,
                item.chunk,
                tables,
                now,
                log_end_offset=item.log_end_offset,
                input_end=item.input_end,
            )
            for item in ready
        ]


def report_quarantined(tp: TopicPartition, record: Quarantined, stats: Stats) -> None:
    """A changelog record set aside: counted (metric, ``/healthz``) and logged with what it was."""
    stats.changelog_quarantined += 1
    stats.changelog_quarantine_last = (
        f"{tp.topic}-{tp.partition} changelog offset {record.offset}: {record.reason}"
    )
    _QUARANTINED.log(
        **partition_fields(
            tp, changelog_offset=record.offset, reason=record.reason, key=record.key[:200]
        )
    )


def apply_chunk(
    conn: sqlite3.Connection,
    tp: TopicPartition,
    chunk: ChangelogChunk,
    tables: Sequence[StateTable],
    now: str,
    log_end_offset: int | None = None,
    input_end: int | None = None,
) -> Applied:
    """Apply one chunk of input partition ``tp``'s changelog (a transaction function)."""
    if chunk.rewound:
        raise changelog_lost(tp, changelog_offset(conn, tp))
    if chunk.start is not None:
        at = changelog_offset(conn, tp)
        if chunk.start > at:
            # Another process on this file forgot the partition to restore it whole
            # (``forget_for_restore``): applied from here, the chunk would skip what lies between.
            return Applied(0, len(chunk.records), 0, 0, None, at, behind=True)
    seeded = own_seed(conn, tp, chunk.records)
    applied = apply_changes(
        conn,
        tp.topic,
        tp.partition,
        chunk.records,
        tables,
        now=now,
        next_offset=chunk.next_offset,
        log_end_offset=log_end_offset,
        input_end=input_end,
    )
    if seeded:
        seed_applied(conn, tp)
    return applied
