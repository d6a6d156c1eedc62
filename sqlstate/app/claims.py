"""The rebalance listener and the claims: how partitions become this consumer's to write.

aiokafka runs the listener in its coordinator task, concurrently with the batch loop: the revoke
is awaited before JoinGroup, the assign after the new assignment is installed, when the fetcher
may already be starting, and a batch that ``getmany()`` already returned may still be in flight
during either. Both change the claims only through ``Ownership`` (``ownership.py``), under its
lock; each release moves its generation, so a batch fetched before is dropped, since the claim
re-seeked its partitions from the database.

``Claimer`` claims partitions, always through the one claim transaction (``Store.claim``):
every assigned one at each assignment (the listener); the partitions an assignment could not
claim in time (the batch loop, ``claim_held``); and, while running, the assigned partitions of a
topic found deleted and created again (the batch loop, told by ``TopicWatch``), and a partition
whose position the fetcher found gone from its log (the batch loop, ``recover``). The claim
transaction applies ``--out-of-range`` in each case: one path, as Kafka Streams re-runs a
task's normal start-up when its offsets are invalid.

Both callbacks are bounded by ``Settings.rebalance_budget_s``. aiokafka sends no heartbeat from
JoinGroup until ``on_partitions_assigned`` returns, and the group waits for a member's revoke
only up to the rebalance timeout: a callback that waits longer gets the member expelled, and its
rejoin starts the same wait again. So:

- a revoke that cannot take the lock in time (the batch in flight waits for a database another
  process holds locked) releases the partitions without it. That batch's outcome is then not
  applied (the generation moved), and its commit is fenced by the next claim of its partitions,
  or read by that claim, whichever takes the database's lock first;
- an assignment that cannot be claimed in time (the lock, Kafka's ListOffsets or Metadata, the
  database's write lock) is *held*: each partition paused at a placeholder position, never
  counted, and claimed from the batch loop (``claim_held``) as soon as it can be.

Under ``--changelog`` every assignment is held: its claim starts with the partitions'
changelog producers and a restore from their changelogs (``changelog/owner.py``), which can last
longer than a callback may, so it is done from the batch loop, before the claim transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from sqlstate.app.ownership import Ownership
from sqlstate.changelog.owner import ChangelogOwner
from sqlstate.errors import (
    ChangelogError,
    DatabaseBusyError,
    RebalanceError,
    SqlstateError,
)
from sqlstate.kafka.bounds import read_bounds
from sqlstate.kafka.client import group_generation, joined, topic_ids
from sqlstate.kafka.errors import permanent
from sqlstate.observe.logs import LogEvent, describe, partition_fields, rounded
from sqlstate.observe.stats import Stats
from sqlstate.settings import Settings, StartPoint, start_point
from sqlstate.state.model import ChangelogPublishFailed, Claim, Claimed, Forget
from sqlstate.state.out_of_range import LogBounds, log_reset, log_topic_reset, refusal
from sqlstate.state.store import Store

logger = logging.getLogger("sqlstate.rebalance")  # its documented name


def _listed(partitions: Sequence[Mapping[str, Any]]) -> str:
    """``t-0, t-1`` of ``partition_fields``, sorted (as ``describe`` says partitions)."""
    return ", ".join(f"{p['topic']}-{p['partition']}" for p in partitions) or "none"


def _claims_text(claims: Sequence[Mapping[str, Any]]) -> str:
    """``t-0@12 (epoch 3), ...`` of ``_claim_fields``."""
    return ", ".join(
        f"{c['topic']}-{c['partition']}@{c['next_offset']} (epoch {c['epoch']})" for c in claims
    )


def _claims_made(fields: Mapping[str, Any]) -> dict[str, str]:
    return {"claims": _claims_text(fields["assigned"]) or "none"}


_RELEASE_SLOW = LogEvent(
    logger,
    logging.WARNING,
    "changelog_release_slow",
    "the changelog producers of %(_partitions)s did not stop within %(_budget_s)gs; going on",
)
_HELD = LogEvent(
    logger,
    logging.INFO,
    "partitions_assigned",
    "assigned partitions: %(listed)s; %(reason)s; generation %(generation)s",
    words=lambda fields: {"listed": _listed(fields["assigned"])},
)
_KEPT_HELD = LogEvent(
    logger,
    logging.INFO,
    "kept_partitions_held",
    "%(partitions)d partitions kept through the rebalance were not claimed at once (%(reason)s):"
    " they are claimed with the others",
)
_DEFERRED = LogEvent(
    logger,
    logging.WARNING,
    "claim_deferred",
    "assigned partitions: %(listed)s; not claimed within %(_budget_s)gs: %(reason)s. They wait,"
    " paused, and are claimed as soon as possible; generation %(generation)s",
    words=lambda fields: {"listed": _listed(fields["assigned"])},
)
_CLAIMED = LogEvent(
    logger,
    logging.INFO,
    "partitions_claimed",
    "claimed partitions held since the rebalance %(held_s).1fs ago: %(claims)s",
    data={"held_s": rounded(3)},
    words=lambda fields: {"claims": _claims_text(fields["assigned"])},
)
# The claims made, with the group generation they were made in (a member expelled and rejoined
# shows as a generation further on).
_ASSIGNED = LogEvent(
    logger,
    logging.INFO,
    "partitions_assigned",
    "assigned partitions: %(claims)s; generation %(generation)s",
    words=_claims_made,
)
_ASSIGNED_NONE = LogEvent(
    logger,
    logging.INFO,
    "partitions_assigned",
    "assigned no partitions: none; generation %(generation)s",
)
_RECLAIMED = LogEvent(
    logger,
    logging.INFO,
    "partitions_reclaimed",
    "claimed again the partitions of %(_topics)s: %(claims)s; generation %(generation)s",
    words=_claims_made,
)
_REVOKE_UNWAITED = LogEvent(
    logger,
    logging.WARNING,
    "revoke_unwaited",
    "revoking without waiting for the batch in flight: it is still committing after"
    " %(wait_s)gs (the database is locked?); its commit is fenced or read by the next claim of"
    " its partitions",
)
# Partitions the file had no position for, and where --start-from started them.
_STARTED = LogEvent(
    logger,
    logging.INFO,
    "partitions_started",
    "first claim of %(listed)s",
    words=lambda fields: {
        "listed": ", ".join(
            f"{p['topic']}-{p['partition']}@{p['start_offset']} ({p['start_from']})"
            for p in fields["started"]
        )
    },
)
_REVOKED = LogEvent(
    logger,
    logging.INFO,
    "partitions_revoked",
    "revoked partitions: %(listed)s",
    words=lambda fields: {"listed": _listed(fields["revoked"])},
)


async def acquire_within(lock: asyncio.Lock, seconds: float) -> bool:
    """Take ``lock`` if it comes free within ``seconds``; whether it was taken.

    A free lock is taken even when no time is left. (An acquire that completes as the timeout
    fires is returned as taken, never left held.)
    """
    try:
        await asyncio.wait_for(lock.acquire(), max(seconds, 0.001))
    except TimeoutError:
        return False
    return True


class Claimer:
    """Claims partitions from the database and seeks the consumer to their positions.

    ``on_claimed`` gets the claims once their transaction has committed and they are sought
    (the daemon copies them to the group's offsets in Kafka); it must not wait.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        store: Store,
        ownership: Ownership,
        settings: Settings,
        stats: Stats,
        forget: Forget,
        on_claimed: Callable[[Mapping[TopicPartition, Claim]], None],
        changelog: ChangelogOwner | None = None,
        *,
        processor_names: Sequence[str] | None = None,
    ) -> None:
        self._consumer = consumer
        # Recorded for each claimed topic in its claim: a topic --topic-pattern found while
        # running has its processors recorded at its first claim.
        self._processor_names = processor_names
        self._changelog = changelog
        self._store = store
        self._ownership = ownership
        self._settings = settings
        self._budget_s = settings.rebalance_budget_s
        self._stats = stats
        self._forget = forget
        self._on_claimed = on_claimed
        self._held_since = 0.0
        # claim_held waits until then (a changelog producer was fenced: see hold_again).
        self._not_before = 0.0
        # Where a partition the file has never seen starts: checked valid by Settings.
        self._start_from = start_point(settings.start_from)
        # Under --topic-pattern, the topics of the subscription at the first assignment: a
        # topic that comes to match later was created while this process ran, so each of its
        # records was written after it started, and it starts at its earliest offset whatever
        # --start-from says (the consumer sees it only at a metadata refresh: ``latest`` would
        # skip what was written meanwhile).
        self._matched_at_start: frozenset[str] | None = None
        # One claim_held at a time (the assignment's callback and the batch loop).
        self._claims_lock = asyncio.Lock()
        # The group generation and member id of this member's last assignment.
        self._joined: tuple[int | None, str | None] = (None, None)

    async def assign(self, assigned: set[TopicPartition]) -> None:
        """A new assignment: forget every earlier claim and claim ``assigned``, within the
        rebalance budget; what cannot be claimed in time is held for ``claim_held``."""
        deadline = time.monotonic() + self._budget_s
        self._stats.rebalances += 1
        self._ownership.assignment_received()
        if self._settings.topic_pattern is not None and self._matched_at_start is None:
            self._matched_at_start = frozenset(self._consumer.subscription())
        (generation, member), self._joined = self._joined, joined(self._consumer)
        if self._changelog is not None:
            # Every partition claimed or being claimed here: one whose claim failed has no
            # producer, and must be followed again as well; one whose producer outlived its
            # claim must have it stopped. Those still assigned keep their producers, when this
            # is the group's next generation for this member: otherwise (it was expelled and
            # joined again) another member may have been given one of them meanwhile, and
            # started a producer whose transactions ours would not fence (producers.py).
            mine = self._changelog.claiming | self._changelog.owned
            next_generation = generation is not None and self._joined == (generation + 1, member)
            await self._release_producers(mine if not next_generation else mine - assigned)
        if not assigned:
            self._ownership.release_all()
            _log_claims(_ASSIGNED_NONE, {}, self._consumer)
            return
        if self._changelog is not None:
            self._not_before = 0.0
            self._hold(assigned, "restoring from the changelogs first", deferred=False)
            await self._claim_kept(assigned, deadline)
            return
        unclaimed = await self._claim_within(assigned, time.monotonic() + self._budget_s)
        if unclaimed is not None:
            self._hold(assigned, unclaimed)

    async def _claim_within(self, assigned: set[TopicPartition], deadline: float) -> str | None:
        """Claim ``assigned`` by ``deadline``; None once claimed, else why it could not be."""
        # What Kafka says of the logs comes first, before the lock: a network call must never
        # hold up the batch loop's commit.
        try:
            bounds, ids = await asyncio.wait_for(
                self.read_logs(assigned), deadline - time.monotonic()
            )
        except (KafkaError, TimeoutError) as error:
            stop = permanent(error)
            if stop is not None:
                raise stop from error
            return f"Kafka did not give the log's bounds in time ({error!r})"
        if not await acquire_within(self._ownership.lock, deadline - time.monotonic()):
            return "the batch in flight is still committing"
        try:
            self._ownership.release_all()
            try:
                claims = await self._claim(bounds, ids, deadline - time.monotonic())
            except DatabaseBusyError:
                return "the database is locked by another connection"
        finally:
            self._ownership.lock.release()
        _log_claims(_ASSIGNED, claims, self._consumer)
        return None

    async def _claim_kept(self, assigned: set[TopicPartition], deadline: float) -> None:
        """Under --changelog, claim at once, within the callback's budget, the partitions kept
        through the rebalance with their producers: nothing to fence, and their file stands at
        their changelog's end, so they go on without waiting for the batch loop's next round
        (up to a poll timeout away), by ``deadline``, what is left of the callback's budget.
        Any failure leaves them held, for ``claim_held``."""
        assert self._changelog is not None
        kept = self._changelog.keepable(assigned)
        if not kept or time.monotonic() >= deadline:
            return
        try:
            await asyncio.wait_for(self.claim_held(only=kept), deadline - time.monotonic())
        except (DatabaseBusyError, ChangelogError, KafkaError, TimeoutError) as error:
            _KEPT_HELD.log(partitions=len(kept), reason=repr(error))

    async def _release_producers(self, tps: Iterable[TopicPartition]) -> None:
        """Stop the changelog producers of partitions no longer assigned, within the budget."""
        assert self._changelog is not None
        tps = set(tps)
        if not tps:
            return
        try:
            await asyncio.wait_for(self._changelog.release(tps), self._budget_s)
        except TimeoutError:
            _RELEASE_SLOW.log(
                partitions=len(tps), _partitions=describe(tps), _budget_s=self._budget_s
            )

    def _hold(self, assigned: set[TopicPartition], reason: str, *, deferred: bool = True) -> None:
        """Keep ``assigned`` unclaimed, paused, for the batch loop to claim."""
        self._ownership.release_all()
        self._ownership.hold(assigned)
        self._held_since = time.monotonic()
        (_DEFERRED if deferred else _HELD).log(
            partitions=len(assigned),
            assigned=[partition_fields(tp) for tp in sorted(assigned)],
            reason=reason,
            generation=group_generation(self._consumer),
            _budget_s=self._budget_s,
        )

    async def claim_held(
        self, stop: asyncio.Event | None = None, *, only: set[TopicPartition] | None = None
    ) -> None:
        """Claim the held partitions that are still assigned (called by the batch loop).
        Under --changelog a restore that ``stop`` interrupts claims nothing.

        Raises ``DatabaseBusyError`` when the database stays locked, and Kafka's errors or
        ``TimeoutError`` when the logs' bounds do not come: the partitions stay held, to be
        claimed again later. Its waits are bounded as a callback's, so that a revoke coming
        meanwhile still takes the lock in time. ``only``: claim none but those.

        One call at a time: the assignment's callback (``_claim_kept``) and the batch loop
        may both call it, and a partition must be claimed once.
        """
        async with self._claims_lock:
            held = self._ownership.held & self._consumer.assignment()
            if only is not None:
                held &= only
            if not held or time.monotonic() < self._not_before:
                return
            if self._changelog is not None:
                # The partitions kept through the rebalance first, on their own: their
                # producers and their file are ready, so they go on while the others' new
                # producers fence their earlier owners and restore.
                kept = self._changelog.keepable(held)
                if kept and kept != held:
                    if not await self._claim_some(kept, stop):
                        return
                    held &= self._ownership.held
            await self._claim_some(held, stop)

    async def _claim_some(self, held: set[TopicPartition], stop: asyncio.Event | None) -> bool:
        """``claim_held``'s claim of ``held``; whether it was made (not cut short by ``stop``,
        a rebalance, or the batch in flight)."""
        if not held:
            return True
        generation = self._ownership.generation
        if self._changelog is not None:
            # Fence the partitions' earlier owners and restore the file from the changelogs:
            # as long as that takes. A revoke meanwhile moves the generation: then nothing is
            # claimed below, and the next assignment stops the producers it no longer needs.
            restored = await self._changelog.prepare(held, stop)
            if not restored or self._ownership.is_stale(generation):
                return False
        bounds, ids = await asyncio.wait_for(self.read_logs(held), self._budget_s)
        # Bounded, so that the bounds are fresh when the claim checks positions against them.
        if not await acquire_within(self._ownership.lock, self._budget_s / 2):
            return False  # a batch is still committing: next round
        try:
            if self._ownership.is_stale(generation):
                return False  # a rebalance came: it decided anew what this consumer holds
            claims = await self._claim(bounds, ids, self._budget_s / 2)
        finally:
            self._ownership.lock.release()
        _CLAIMED.log(
            partitions=len(claims),
            assigned=_claim_fields(claims),
            held_s=time.monotonic() - self._held_since,
        )
        return bool(claims)

    async def hold_again(
        self, tps: Iterable[TopicPartition], fenced: Iterable[TopicPartition]
    ) -> None:
        """Under --changelog, claim ``tps`` again from the batch loop, restored first: a
        batch's changelog transactions failed, and its SQLite transaction rolled back (their
        Kafka transaction may have committed), or a position was found out of range.

        ``fenced``: another owner's producer fenced ours, so the group gave them to another
        member: they are paused until the rebalance that says so reaches this consumer, and
        their changelogs followed meanwhile. The others are held, to be restored and claimed
        again (``claim_held``). Under the ownership lock.
        """
        assert self._changelog is not None
        fenced = set(fenced)
        self._ownership.hold(tps)
        self._held_since = time.monotonic()
        if fenced:
            # Should no rebalance come (this member was the one out of date, and is the owner
            # again), they are taken back after a session timeout: then the group has had
            # every chance to say otherwise.
            self._not_before = time.monotonic() + self._settings.session_timeout_ms / 1000
            await self._release_producers(fenced)

    async def reclaim(self, topics: set[str]) -> None:
        """Topics found deleted and created again while running: claim their assigned
        partitions again, as at an assignment, so that the claim transaction applies the
        ``--out-of-range`` policy to the topic's new ID.

        Every assigned partition of the topics, including ones this consumer stopped fetching
        because another consumer's reset of the topic fenced it. A rebalance that comes
        meanwhile claims everything again itself, with the topics' IDs: then nothing is done.
        """
        generation = self._ownership.generation
        # A topic deleted and not yet created again is left out: the rebalance that follows
        # takes it away.
        ids = await topic_ids(self._consumer, topics)
        assigned = {tp for tp in self._consumer.assignment() if tp.topic in ids}
        bounds = await read_bounds(self._consumer, assigned, self._settings.isolation_level)
        async with self._ownership.lock:
            if self._ownership.is_stale(generation) or not bounds:
                return
            claimed = await self._claim_again(bounds, ids)
        claims = {} if claimed is None else claimed.claims
        _log_claims(_RECLAIMED, claims, self._consumer, _topics=", ".join(sorted(ids)))

    async def recover(
        self,
        tp: TopicPartition,
        claim: Claim,
        generation: int,
        bounds: dict[TopicPartition, LogBounds],
        ids: dict[str, str | None],
    ) -> bool:
        """The fetcher found ``tp``'s position gone from its log while running: claim it again,
        as at an assignment, so that the claim transaction applies ``--out-of-range`` (with its
        tombstones under --changelog) to the position it reads. ``claim`` and ``generation``:
        what the error was found under; ``bounds`` and ``ids``: read since (``read_logs``),
        without the lock, which a revoke must never wait for behind a network call.

        Nothing is done if the claim changed meanwhile (a rebalance came first: its seek stands).
        A position the log still holds is sought again: only the fetch was out of range (a
        lagging follower answered it, or the log was cut above the position). Under
        ``--out-of-range fail``, ``OutOfRangeError`` before anything is written. False, and the
        partition left paused, if another consumer claimed it since: this one is a zombie for it
        until the rebalance that says so, and its claim would fence the owner. That is checked
        in the claim's own transaction (the file's epoch), and under --changelog, where another
        host's claim never reaches this file, by Kafka: the claim's changelog transaction,
        through this host's producer, fails as fenced.
        """
        async with self._ownership.lock:
            if self._ownership.is_stale(generation) or self._ownership.claim_of(tp) != claim:
                return True
            if bounds[tp].holds(claim.next_offset):
                self._ownership.rewind([tp])
                return True
            if self._settings.out_of_range == "fail":
                # Stop before anything is claimed or written, as the claim would (exit code 5).
                raise refusal(tp, claim.next_offset, bounds[tp])
            if self._changelog is not None:
                # The claim's tombstones go out through the producer this host has (a new one
                # would fence the owner, were this host a zombie).
                self._changelog.serve_next_claim([tp])
            try:
                claimed = await self._claim_again(bounds, ids, held={tp: claim})
            except ChangelogPublishFailed as failed:
                # Rolled back. Fenced: another host owns the partition; it waits for the
                # rebalance, as a fenced batch's does. Otherwise it is restored and claimed
                # again, its position checked against the log once more then.
                fenced = failed.fenced
                await self.hold_again([tp], fenced)
                return not fenced
            return claimed is None or tp not in claimed.taken

    async def _claim_again(
        self,
        bounds: dict[TopicPartition, LogBounds],
        ids: dict[str, str | None],
        held: Mapping[TopicPartition, Claim] | None = None,
    ) -> Claimed | None:
        """Under the ownership lock: claim partitions this consumer claimed already, while
        running. Their claims are released first: a batch fetched under them is dropped. With
        ``held``, each is claimed only if the file still holds it at that claim's epoch, in the
        claim's own transaction; one another consumer claimed since is left paused where it
        was (``Claimed.taken``). None if a revoke came first."""
        self._ownership.release(bounds)
        return await self._claimed(bounds, ids, None, held)

    async def read_logs(
        self, tps: set[TopicPartition]
    ) -> tuple[dict[TopicPartition, LogBounds], dict[str, str | None]]:
        """The logs' bounds, then the topics' IDs, for a claim: a topic recreated between the
        two reads shows as recreated. The topics are assigned: each must exist."""
        level = self._settings.isolation_level
        at_start = self._matched_at_start
        later = set() if at_start is None else {tp for tp in tps if tp.topic not in at_start}
        bounds, later_bounds = await asyncio.gather(
            read_bounds(self._consumer, tps - later, level, self._start_from),
            read_bounds(self._consumer, later, level, StartPoint("earliest")),
        )
        ids = await topic_ids(self._consumer, {tp.topic for tp in tps}, all_exist=True)
        return bounds | later_bounds, ids

    async def _claim(
        self,
        bounds: dict[TopicPartition, LogBounds],
        ids: dict[str, str | None],
        lock_wait_s: float | None,
    ) -> dict[TopicPartition, Claim]:
        """``_claimed``'s claims; none if a revoke came first."""
        claimed = await self._claimed(bounds, ids, lock_wait_s)
        return {} if claimed is None else claimed.claims

    async def _claimed(
        self,
        bounds: dict[TopicPartition, LogBounds],
        ids: dict[str, str | None],
        lock_wait_s: float | None,
        held: Mapping[TopicPartition, Claim] | None = None,
    ) -> Claimed | None:
        """Under the ownership lock: one transaction for every claim, every position, every
        reset; under --out-of-range fail, nothing at all. Then seek. With ``lock_wait_s``, its
        wait for the database's write lock is bounded too (``DatabaseBusyError``).

        Nothing is sought or recorded (None) if a revoke stopped waiting for the transaction
        meanwhile: the partitions are no longer this consumer's, and the epochs it took fence
        nobody but itself.
        """
        generation = self._ownership.generation
        claimed = await self._store.claim(
            bounds,
            self._settings.owner,
            self._settings.out_of_range,
            self._forget,
            topic_ids=ids,
            isolation_level=self._settings.isolation_level,
            lock_wait_s=None if lock_wait_s is None else max(lock_wait_s, 0.001),
            held_at=None if held is None else {tp: claim.epoch for tp, claim in held.items()},
            processors=self._processor_names,
        )
        for recreated in claimed.recreated:
            self._stats.out_of_range_resets += len(recreated.stored)
            log_topic_reset(recreated.topic, recreated.old_id, recreated.new_id, recreated.stored)
        for reset in claimed.resets:
            self._stats.out_of_range_resets += 1
            log_reset(reset.tp, reset.stored_offset, reset.bounds)
        if claimed.started:
            _STARTED.log(
                partitions=len(claimed.started),
                started=[
                    partition_fields(tp, start_from=start.policy, start_offset=start.offset)
                    for tp, start in sorted(claimed.started.items())
                ],
            )
        if self._ownership.is_stale(generation):
            return None
        for tp in claimed.taken:
            assert held is not None
            self._ownership.drop_and_hold(tp, held[tp].next_offset)
        # Recorded and sought at once, with nothing awaited since the transaction committed.
        self._ownership.claim(claimed.claims, ids)
        if self._changelog is not None:
            # In the same step: a batch of these claims can only be made from here on.
            self._changelog.bind({tp: claim.epoch for tp, claim in claimed.claims.items()})
        self._on_claimed(claimed.claims)
        return claimed


def _claim_fields(claims: Mapping[TopicPartition, Claim]) -> list[dict[str, object]]:
    return [
        partition_fields(tp, next_offset=claim.next_offset, epoch=claim.epoch)
        for tp, claim in sorted(claims.items())
    ]


def _log_claims(
    event: LogEvent,
    claims: Mapping[TopicPartition, Claim],
    consumer: AIOKafkaConsumer,
    **sentence: object,
) -> None:
    """One line for the claims made: ``assigned partitions: t-0@12 (epoch 3), ...; generation
    N``, the group generation they were claimed in."""
    event.log(
        partitions=len(claims),
        assigned=_claim_fields(claims),
        generation=group_generation(consumer),
        **sentence,
    )


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Claims partitions from the database on assignment; releases them on revoke.

    aiokafka logs and swallows whatever a listener raises, which would leave partitions
    unpositioned. So a failure is handed to ``on_fatal``, which stops the daemon; the
    partitions stay unclaimed meanwhile, so none of their records are counted.
    """

    def __init__(
        self,
        claimer: Claimer,
        ownership: Ownership,
        budget_s: float,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self._claimer = claimer
        self._ownership = ownership
        self._budget_s = budget_s
        self._on_fatal = on_fatal

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            # Waiting for the lock waits for the batch in flight to commit. Nothing to flush:
            # every committed batch is already durable.
            if await acquire_within(self._ownership.lock, self._budget_s):
                try:
                    self._ownership.release(revoked)
                finally:
                    self._ownership.lock.release()
            else:
                self._ownership.release(revoked)
                _REVOKE_UNWAITED.log(wait_s=self._budget_s)
            _REVOKED.log(
                partitions=len(revoked),
                revoked=[partition_fields(tp) for tp in sorted(revoked)],
            )
        except BaseException as error:
            self._on_fatal(RebalanceError(f"releasing partitions failed: {error!r}"))
            raise

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            await self._claimer.assign(assigned)
        except BaseException as error:
            self._on_fatal(
                error
                if isinstance(error, SqlstateError)
                else RebalanceError(f"claiming partitions {describe(assigned)} failed: {error!r}")
            )
            raise
