"""The batch loop: fetch a bounded batch, keep what this consumer may count, commit it atomically.

For each batch: ``getmany(max_records)``; read each claimed partition's position right away (no
await in between); gate out records below each stored position; then, under the ownership lock,
drop the batch if a rebalance came in between, and hand the rest to the store, which moves
positions by compare-and-set and applies the processors in one transaction.

Batches are pipelined one deep: the commit of batch N runs in the database thread while batch
N+1 is fetched and parsed in the event loop, so the two overlap on two cores. Batch N+1 is gated
against the positions batch N commits and is handed to the store only once that commit is done;
the compare-and-set still guards every commit, so a batch can only commit on top of the one
before it.

Between two batches, with no commit in flight, the loop handles what the fetcher or the topic
watch reported: a position out of range (the partition is claimed again, ``Claimer.recover``), a
partition without a position, a topic deleted and created again (its partitions are claimed
again, ``Claimer.reclaim``). The claims change only through ``Ownership``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    ConsumerStoppedError,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
)
from aiokafka.structs import ConsumerRecord

from sqlstate.app.claims import Claimer
from sqlstate.app.group_offsets import GroupOffsets
from sqlstate.app.ownership import Ownership
from sqlstate.app.processor_errors import ProcessorErrors
from sqlstate.app.topic_watch import TopicWatch
from sqlstate.errors import ChangelogError, DatabaseBusyError
from sqlstate.kafka.client import absent_topics, consumed_position, in_group, log_end
from sqlstate.kafka.decoding import BadRecords
from sqlstate.kafka.errors import Retrying, permanent, topic_gone
from sqlstate.observe.logs import LogEvent, describe, partition_fields, rounded
from sqlstate.observe.stats import Stats
from sqlstate.processors.base import Records
from sqlstate.processors.registry import Processors
from sqlstate.settings import Settings
from sqlstate.state.model import ChangelogPublishFailed, Claim, Committed, Fenced, PartitionBatch
from sqlstate.state.store import Store

logger = logging.getLogger("sqlstate.consumer")  # its documented name
_STALE_DROPPED = LogEvent(
    logger,
    logging.DEBUG,
    "stale_batch_dropped",
    "dropped a batch fetched before the claims changed",
)
_STALE_FENCED = LogEvent(
    logger,
    logging.WARNING,
    "stale_batch_fenced",
    "a batch of an earlier claim rolled back: %(reason)s",
)
_STALE_COMMITTED = LogEvent(
    logger,
    logging.DEBUG,
    "stale_batch_committed",
    "a rebalance came while a batch committed; its outcome is left to the next claim",
)
_COMMITTED = LogEvent(
    logger,
    logging.DEBUG,
    "batch_committed",
    "committed %(records)d records over %(partitions)d partitions in %(commit_ms).3f ms",
    data={"commit_s": rounded(6)},
    words=lambda fields: {"commit_ms": fields["commit_s"] * 1000},
)
_PUBLISH_FAILED = LogEvent(
    logger,
    logging.WARNING,
    "changelog_publish_failed",
    "a batch rolled back: %(reason)s. Fenced partitions wait for the rebalance that gave them"
    " to another member; the others are restored from their changelogs and claimed again",
)
_POSITION_MOVED = LogEvent(
    logger,
    logging.WARNING,
    "position_moved",
    "position of %(topic)s-%(partition)d moved to %(next_offset)d while we expected"
    " %(expected_offset)d; dropped %(dropped_records)d records and re-seeked",
)


def _holder_words(fields: Mapping[str, Any]) -> dict[str, object]:
    # No row at all: nobody holds the partition in the file.
    owner, epoch = fields["owner"], fields["owner_epoch"]
    return {
        "holder": "nobody" if owner is None else owner,
        "holder_epoch": "-" if epoch is None else epoch,
    }


_FENCED = LogEvent(
    logger,
    logging.WARNING,
    "batch_fenced",
    "fenced on %(topic)s-%(partition)d: claimed by %(holder)s with epoch %(holder_epoch)s"
    " (ours %(epoch)d); dropped a batch of %(dropped_records)d records",
    words=_holder_words,
)
_RESEEKED = LogEvent(
    logger,
    logging.DEBUG,
    "reseeked",
    "re-seeking %(topic)s-%(partition)d to %(next_offset)d",
)
_OUT_OF_RANGE_IGNORED = LogEvent(
    logger,
    logging.DEBUG,
    "out_of_range_ignored",
    "ignored out-of-range for unclaimed %(topic)s-%(partition)d",
)
_OUT_OF_RANGE_REPORTED = LogEvent(
    logger,
    logging.INFO,
    "out_of_range_reported",
    "%(topic)s-%(partition)d: fetch at %(fetch_offset)d reported out of range; log holds"
    " [%(log_start_offset)d, %(log_end_offset)d)",
)
_OUT_OF_RANGE_LEFT = LogEvent(
    logger,
    logging.WARNING,
    "out_of_range_left",
    "%(topic)s-%(partition)d: out of range, but another consumer claimed it meanwhile; leaving it",
)

# How often a topic missing from the consumer's metadata is looked up again in Kafka's own list.
_TOPIC_CHECK_PAUSE_S = 5.0

Batch = Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]


def unseen(records: Records, next_offset: int) -> Records:
    """The records at or after ``next_offset``: those below it are already counted."""
    if not records or records[0].offset >= next_offset:
        return records  # the usual case: nothing to filter, no copy
    return [record for record in records if record.offset >= next_offset]


def partition_batch(
    tp: TopicPartition,
    claim: Claim,
    records: Records,
    next_offset: int,
    log_end_offset: int | None,
    processors: Processors,
    bad_records: BadRecords,
    decoded_so_far: int,
    errors: ProcessorErrors | None = None,
) -> PartitionBatch:
    """One partition's share of a batch, as the store commits it: the move from ``claim`` to
    ``next_offset``, and the statements for its ``records`` at or after the claim, those that
    do not decode sorted out by ``--on-bad-record`` (``decoded_so_far``: the decoding failures
    counted before the batch was decoded), those the processors fail on by
    ``--on-processor-error`` (``errors``; without, as under ``fail``). Also how ``sqlstate
    replay`` makes its batches."""
    kept, rejected, bad = bad_records.sort(tp, unseen(records, claim.next_offset), decoded_so_far)
    batch = PartitionBatch(
        tp=tp,
        claim=claim,
        next_offset=next_offset,
        log_end_offset=log_end_offset,
        records=len(kept),
        statements=rejected,
        bad_records=bad,
        source=kept,
        dead_letters=len(rejected),
    )
    if errors is None:
        return replace(batch, statements=[*rejected, *processors.statements(tp, kept)])
    return errors.prepare(batch)


class BatchLoop:
    """Runs until ``stop`` is set; a fatal error propagates out of ``run``."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        store: Store,
        ownership: Ownership,
        processors: Processors,
        settings: Settings,
        stats: Stats,
        claimer: Claimer,
        watch: TopicWatch,
        offsets: GroupOffsets,
        bad_records: BadRecords,
        stop: asyncio.Event,
    ) -> None:
        self._consumer = consumer
        self._store = store
        self._ownership = ownership
        self._processors = processors
        self._errors = ProcessorErrors(processors, settings, stats)
        self._settings = settings
        self._stats = stats
        self._claimer = claimer
        self._watch = watch
        self._offsets = offsets
        self._bad_records = bad_records
        self._retrying = Retrying()
        self._stop = stop
        self._topics_checked_at = 0.0

    async def run(self) -> None:
        stop = self._stop
        committing: asyncio.Task[set[TopicPartition]] | None = None
        try:
            while not stop.is_set():
                if self._watch.recreated:
                    await self._settled(committing)
                    committing = None
                    await self._claimer.reclaim(self._watch.take())
                    continue
                if self._ownership.held:
                    await self._claim_held()
                await self._check_topics()
                decoded_so_far = self._bad_records.mark()
                try:
                    batch: Batch = await self._consumer.getmany(
                        timeout_ms=self._settings.poll_timeout_ms,
                        max_records=self._settings.max_records,
                    )
                except OffsetOutOfRangeError as error:
                    await self._settled(committing)
                    committing = None
                    await self._out_of_range(error.args[0])
                    continue
                except NoOffsetForPartitionError as error:
                    await self._settled(committing)
                    committing = None
                    await self._reseek(error.args[0])
                    continue
                except ConsumerStoppedError:
                    return
                except KafkaError as error:
                    # Raised before getmany() handed out any record: nothing to lose by waiting.
                    await self._wait_out(error, "fetching records")
                    continue
                if self._retrying.active and in_group(self._consumer):
                    self._retrying.recovered()
                generation = self._ownership.generation
                positions = self._positions()
                # Keys and values whose schema is not fetched yet: the batch waits for the
                # schema registry (positions were read above, with no await since getmany).
                if not await self._bad_records.decoding.complete(batch, stop):
                    break
                refetch: set[TopicPartition] = set()
                if committing is not None:
                    # The previous batch's commit must be done before this batch is gated
                    # against the positions it moved.
                    previous, committing = committing, None
                    refetch = await previous
                advances = self._advances(batch, positions, refetch, decoded_so_far)
                if advances:
                    committing = asyncio.create_task(self._commit_in_turn(generation, advances))
                    # Let it run up to handing the transaction to the database thread: the
                    # next getmany() may return buffered records without ever yielding.
                    await asyncio.sleep(0)
        finally:
            # Stopping or failing: the batch being committed is finished (and its failure, if
            # any, seen), never left running behind the loop. Failing, it must not wait forever
            # for a locked database either.
            if not stop.is_set():
                self._store.database.stop_retrying()
            await self._settled(committing)

    async def _wait_out(self, error: BaseException, during: str) -> None:
        """A Kafka error: stop on a permanent one; wait a transient one out with backoff."""
        stop = permanent(error)
        if stop is not None:
            raise stop from error
        backoff_s = self._retrying.failed(error, during)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), backoff_s)

    async def _claim_held(self) -> None:
        """Claim the partitions a rebalance could not claim in time, now if it can be done."""
        try:
            await self._claimer.claim_held(self._stop)
        except DatabaseBusyError:
            pass  # still locked: they stay held, and the next round tries again
        except ChangelogError as error:
            # Kafka's transaction coordinator or the changelog did not answer: they stay held.
            backoff_s = self._retrying.failed(error, "restoring from the changelogs")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff_s)
        except (KafkaError, TimeoutError) as error:
            await self._wait_out(error, "looking up the log's bounds of held partitions")
        else:
            self._retrying.recovered()

    async def _check_topics(self) -> None:
        """Stop if a topic was deleted while running.

        aiokafka takes a deleted topic out of the assignment at the next rebalance and says
        nothing more: the daemon would sit idle on it forever. A topic missing from the
        consumer's metadata is looked up in Kafka's own list of topics before it counts as gone.
        Only the topics given with --topic: a topic --topic-pattern took is reported instead,
        and the others consumed on (``matched_topics.py``).
        """
        if not self._ownership.assigned:
            return  # the consumer has no metadata of its topics before its first assignment
        missing = absent_topics(self._consumer, self._settings.topics)
        if not missing or time.monotonic() < self._topics_checked_at + _TOPIC_CHECK_PAUSE_S:
            return
        self._topics_checked_at = time.monotonic()
        try:
            listed = await asyncio.wait_for(
                self._consumer.topics(), self._settings.rebalance_budget_s
            )
        except (KafkaError, TimeoutError) as error:
            await self._wait_out(error, "checking that the topics still exist")
            return
        for topic, unauthorized in missing:
            if topic not in listed:
                raise topic_gone(topic, unauthorized)

    @staticmethod
    async def _settled(
        committing: asyncio.Task[set[TopicPartition]] | None,
    ) -> None:
        """Wait for a commit in flight before handling anything that seeks.

        What it found fenced needs no special care here: it sought those partitions before
        the next ``getmany()``, which therefore returns their records from the new position.
        """
        if committing is not None:
            await committing

    def _positions(self) -> dict[TopicPartition, int]:
        """Where ``getmany()`` left each claimed partition. Must run with no await since it."""
        positions = {}
        for tp in self._ownership.claims:
            position = consumed_position(self._consumer, tp)
            if position is not None:
                positions[tp] = position
        return positions

    def _advances(
        self,
        batch: Batch,
        positions: Mapping[TopicPartition, int],
        refetch: set[TopicPartition],
        decoded_so_far: int,
    ) -> list[PartitionBatch]:
        """Each claimed partition that moved: its new position and the statements for its
        unseen records, those that do not decode sorted out by ``--on-bad-record``.

        A partition can move with no records, stepping over transaction markers or aborted
        records. ``refetch``: partitions the previous commit found fenced and re-seeked, or
        whose batch it dropped or rolled back; this batch may hold their records from before or
        after that, so they are dropped and the partition is sought to its claim again.
        ``decoded_so_far``: the decoding failures counted before this batch's ``getmany()``.
        """
        self._ownership.rewind(refetch)
        advances = []
        for tp, claim in self._ownership.claims.items():
            if tp in refetch:
                continue
            position = positions.get(tp)
            if position is None or position <= claim.next_offset:
                continue
            advances.append(
                partition_batch(
                    tp,
                    claim,
                    batch.get(tp, ()),
                    position,
                    log_end(self._consumer, tp, self._settings.isolation_level),
                    self._processors,
                    self._bad_records,
                    decoded_so_far,
                    self._errors,
                )
            )
        return advances

    async def _commit_in_turn(
        self, generation: int, advances: list[PartitionBatch]
    ) -> set[TopicPartition]:
        """Commit under the ownership lock, unless the claims changed since the batch was
        fetched.

        Returns the partitions to fetch again from their claims: those found fenced, and those
        of a batch dropped or rolled back while they stayed claimed.
        """
        async with self._ownership.lock:
            if self._ownership.is_stale(generation):
                # The claims changed while this batch waited: a rebalance (which re-seeked every
                # partition it claimed), or a rolled-back batch that held some partitions again
                # (which re-seeked only those). The consumer's position of every other partition
                # is past this batch's records, which the file never counted: fetch them again
                # from the claim, or the next batch would move the position over them.
                _STALE_DROPPED.log()
                return self._fetch_again(advances)
            return await self._commit(generation, advances)

    async def _commit(self, generation: int, advances: list[PartitionBatch]) -> set[TopicPartition]:
        started = time.perf_counter()
        try:
            outcomes = await self._errors.commit(self._store, advances)
        except ChangelogPublishFailed as failed:
            if not self._ownership.is_stale(generation):
                await self._changelog_failed(failed)
            else:
                # A revoke stopped waiting for this commit: its partitions were released, and
                # any claim of them since is not this batch's to hold.
                self._stats.changelog_failures += 1
                _STALE_FENCED.log(reason=str(failed))
                # Rolled back: a partition still claimed is fetched again from its claim.
                return self._fetch_again(advances)
            return set()
        commit_seconds = time.perf_counter() - started
        self._stats.commit_seconds.append(commit_seconds)
        committed = sum(outcome.records for outcome in outcomes if isinstance(outcome, Committed))
        bad_records = {part.tp: part.bad_records for part in advances}
        for outcome in outcomes:
            if isinstance(outcome, Committed):
                # Committed, whoever owns the partition by now: count what the batch did.
                self._stats.count_processors(outcome.counters)
                self._stats.bad_records += bad_records[outcome.tp]
        fenced: set[TopicPartition] = set()
        if self._ownership.is_stale(generation):
            # A revoke stopped waiting for this commit (the database was locked): the partitions
            # are no longer ours to move, seek or pause. What committed stays committed, and the
            # next claim of each partition reads it.
            _STALE_COMMITTED.log()
        else:
            moved = {o.tp: o.claim for o in outcomes if isinstance(o, Committed)}
            self._ownership.advance(moved)
            for outcome in outcomes:
                if isinstance(outcome, Fenced):
                    fenced.add(outcome.tp)
                    followed = self._fenced(outcome)
                    if followed is not None:
                        moved[outcome.tp] = followed
            # Only now, with the transaction committed: Kafka's copy never runs ahead of it.
            self._offsets.publish(moved)
        self._stats.records += committed
        self._stats.batches += 1
        _COMMITTED.log(records=committed, partitions=len(advances), commit_s=commit_seconds)
        return fenced

    def _fetch_again(self, advances: Sequence[PartitionBatch]) -> set[TopicPartition]:
        """A batch that the file did not take: seek each of its partitions still claimed here
        back to its claim, now, and return them all, so that the batch fetched meanwhile drops
        their records too (``_advances``' ``refetch``)."""
        tps = {part.tp for part in advances}
        self._ownership.rewind(tps)
        return tps

    async def _changelog_failed(self, failed: ChangelogPublishFailed) -> None:
        """The batch rolled back: its changelog transactions did not all commit."""
        fenced = failed.fenced
        self._stats.changelog_failures += 1
        _PUBLISH_FAILED.log(
            partitions=len(failed.partitions),
            fenced=[partition_fields(tp) for tp in sorted(fenced)],
            reason=str(failed),
        )
        await self._claimer.hold_again(failed.partitions, fenced)

    def _fenced(self, outcome: Fenced) -> Claim | None:
        """Our compare-and-set failed: someone else claimed or moved the partition. The claim
        followed, when only its position moved."""
        self._stats.fenced_batches += 1
        tp, row = outcome.tp, outcome.holder
        claim = self._ownership.claims[tp]
        if row is not None and row.epoch == claim.epoch:
            # Same epoch, different offset: the position moved under us. Follow the database.
            _POSITION_MOVED.log(
                **partition_fields(tp),
                next_offset=row.next_offset,
                expected_offset=claim.next_offset,
                dropped_records=outcome.records,
            )
            followed = Claim(row.next_offset, row.epoch)
            self._ownership.move(tp, followed)
            return followed
        # A newer owner claimed it: we are a zombie for this partition. Stop fetching it until
        # Kafka's next rebalance tells us what we own.
        _FENCED.log(
            **partition_fields(tp),
            owner=row.owner if row else None,
            owner_epoch=row.epoch if row else None,
            epoch=claim.epoch,
            dropped_records=outcome.records,
        )
        self._ownership.drop_and_hold(tp, row.next_offset if row else claim.next_offset)
        return None

    async def _reseek(self, tp: TopicPartition) -> None:
        """The fetcher looked for a Kafka-committed offset before our listener seeked.

        aiokafka gives every partition a fresh state without a position on each rebalance, and
        with ``auto_offset_reset="none"`` and nothing committed in Kafka (a new group, or
        ``--no-commit-offsets-to-kafka``) it raises NoOffsetForPartitionError for a partition it
        reaches first. (With an offset committed there, it starts from that instead, until the
        listener's seek replaces it.) Our positions live in the database: seek to the claimed one.
        """
        async with self._ownership.lock:
            claim = self._ownership.rewind([tp]).get(tp)
        if claim is not None:
            _RESEEKED.log(**partition_fields(tp), next_offset=claim.next_offset)

    async def _out_of_range(self, offsets: Mapping[TopicPartition, int]) -> None:
        """The fetcher found a position gone from the log while running: the partition is
        claimed again (``Claimer.recover``), and the claim transaction applies the policy.

        The log's bounds and the topic's ID are read first, without the ownership lock (a
        revoke must never wait for a network call); the claim then runs under it, only if the
        claim is still the one the error was about. A topic with a new ID was deleted and
        created again: all of it is claimed again instead, as the topic watch would.
        """
        for tp, fetch_offset in offsets.items():
            claim = self._ownership.claim_of(tp)
            if claim is None:
                _OUT_OF_RANGE_IGNORED.log(**partition_fields(tp))
                continue
            generation = self._ownership.generation
            try:
                bounds, ids = await asyncio.wait_for(
                    self._claimer.read_logs({tp}), self._settings.rebalance_budget_s
                )
                if self._ownership.recreated(ids):
                    await self._claimer.reclaim({tp.topic})
                    continue
            except (KafkaError, TimeoutError) as error:
                # The partition keeps its position: the fetcher reports it out of range again
                # at its next fetch, and the bounds are asked for again then.
                await self._wait_out(error, f"looking up the log's bounds of {describe([tp])}")
                continue
            self._retrying.recovered()
            _OUT_OF_RANGE_REPORTED.log(
                **partition_fields(tp),
                fetch_offset=fetch_offset,
                log_start_offset=bounds[tp].first,
                log_end_offset=bounds[tp].end,
            )
            if not await self._claimer.recover(tp, claim, generation, bounds, ids):
                _OUT_OF_RANGE_LEFT.log(**partition_fields(tp), reason="claimed by another consumer")
