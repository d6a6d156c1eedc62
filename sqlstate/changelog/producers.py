"""The owner's side of the changelog: one transactional producer per claimed input partition.

A batch's changes to one partition's state go to that partition's changelog partition in one
Kafka transaction, the changed rows then the partition's new position, committed before the
batch's SQLite transaction. The producer's ``transactional_id`` is derived from the group, the
topic and the partition (``topics.transactional_id``), the same on every host, so:

- ``start()`` (InitProducerId) bumps the id's epoch: every earlier producer of that partition,
  on any host, is fenced for good, and the transaction it had open is aborted. The broker answers
  only once that abort is complete, so after ``start()`` the changelog partition's last stable
  offset is final: whatever an earlier owner committed lies below it, and nothing can be added
  but by this producer. That is what makes a restore read to that end complete.
- a fenced producer's ``publish()`` raises ``ChangelogFenced``; its transaction was not
  committed, so the caller rolls back its SQLite transaction and the zombie changes nothing.

Every other failure aborts the Kafka transaction (or, when the producer cannot even abort, closes
it) and raises ``ChangelogError``: the caller rolls back too. After ``ChangelogFenced``, or a
``ChangelogError`` that left ``usable`` False (a timeout, a producer that stopped), the partition
must be claimed again before it is written: a new producer's ``start()`` and a restore from the
file's changelog offset (a transaction whose outcome was unknown may have committed). A producer
is never restarted on its own: starting one fences the current owner, which only a claim may do.

A producer that never failed (``reusable``) serves the next claim of its partition by the same
member, in the group's next generation (``app/claims.py``): a rebalance costs a kept partition no
InitProducerId. Unless another producer of the partition started since, which only a member
given the partition meanwhile can have done, this producer is the partition's newest, so nobody
else can have added to its changelog; if one did start, this producer is fenced, and its first
publish says so (``ChangelogFenced.kept``) before anything commits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalOperation, InvalidProducerEpoch, KafkaError, ProducerFenced

from sqlstate.changelog.records import position_record
from sqlstate.changelog.topics import changelog_topic, transactional_id
from sqlstate.errors import ChangelogError, ChangelogFenced
from sqlstate.kafka.client import build_changelog_producer, transaction_fatal_error
from sqlstate.observe.logs import LogEvent, partition_fields, rounded
from sqlstate.settings import Settings
from sqlstate.state.model import Row
from sqlstate.state.start import StartedAt

logger = logging.getLogger(__name__)


def _input_tp(fields: Mapping[str, Any]) -> dict[str, object]:
    # These sentences name the input partition as aiokafka writes one.
    return {"input_tp": TopicPartition(fields["topic"], fields["partition"])}


_STARTED = LogEvent(
    logger,
    logging.DEBUG,
    "changelog_producer_started",
    "changelog producer of %(input_tp)s started in %(init_s).3f s",
    data={"init_s": rounded(3)},
    words=_input_tp,
)
_FENCED = LogEvent(
    logger,
    logging.WARNING,
    "changelog_fenced",
    "the changelog producer of %(input_tp)s was fenced: another owner claimed the partition",
    words=_input_tp,
)
_PUBLISH_FAILED = LogEvent(
    logger,
    logging.WARNING,
    "changelog_publish_failed",
    "the changelog transaction of %(input_tp)s failed: %(reason)s",
    words=_input_tp,
)
_STOP_FAILED = LogEvent(
    logger,
    logging.WARNING,
    "changelog_producer_stop_failed",
    "the changelog producer of %(input_tp)s did not stop cleanly: %(reason)s",
    words=_input_tp,
)

# Kafka aborts a transaction left open longer than this. Ours are open only inside publish();
# one left open by a process that stopped mid-way holds back every read_committed reader of its
# partition (the standbys) until it is aborted: by the next owner's start(), normally within the
# group's session timeout, or at the latest after this.
TRANSACTION_TIMEOUT_MS = 60_000
# aiokafka retries InitProducerId, produce and EndTxn without end while the broker is away.
START_TIMEOUT_S = 30.0
PUBLISH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


class ChangelogProducer:
    """The transactional producer of one claimed input partition's changelog partition.

    Use: ``await start()`` at the claim, ``await publish(rows, next_offset)`` per batch, ``await
    stop()`` at the revoke. Not safe for concurrent ``publish()`` calls: the batch loop makes one
    at a time per partition.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        partition: int,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
        transaction_timeout_ms: int = TRANSACTION_TIMEOUT_MS,
        input_topic_id: str | None = None,
        changelog_topic_id: str | None = None,
    ) -> None:
        self.input_tp = TopicPartition(topic, partition)
        # Written into every position record: which incarnation of the input its offsets count.
        self.input_topic_id = input_topic_id
        # The incarnation of the changelog it writes: a claim keeps it only for that one.
        self.changelog_topic_id = changelog_topic_id
        self.tp = TopicPartition(changelog_topic(settings.group_id, topic), partition)
        self.transactional_id = transactional_id(settings.group_id, topic, partition)
        self._settings = settings
        self._start_timeout_s = start_timeout_s
        self._publish_timeout_s = publish_timeout_s
        self._transaction_timeout_ms = transaction_timeout_ms
        self._producer: AIOKafkaProducer | None = None
        self._fenced = False
        self._retired = False
        # A publish failed since the start: the producer may be fine, but a claim starts anew.
        self._failed = False
        self._publishing = False
        # Kept through a rebalance (``keep``), and not published through since.
        self._kept = False
        self._committed_end: int | None = None
        # The next claim starts a new producer (``replace_at_next_claim``).
        self._replace = False

    @property
    def usable(self) -> bool:
        """Whether ``publish()`` may be called: started, not fenced, not closed by a failure."""
        return self._producer is not None and not self._fenced and not self._retired

    @property
    def reusable(self) -> bool:
        """Whether the next claim of its partition may keep this producer: usable, no publish
        under way (one cancelled may still be closing it), and none failed since it started."""
        return self.usable and not (self._failed or self._publishing or self._replace)

    @property
    def topic_ids(self) -> tuple[str | None, str | None]:
        """The IDs of the input topic and of the changelog topic it was started for."""
        return self.input_topic_id, self.changelog_topic_id

    @property
    def committed_end(self) -> int | None:
        """The changelog partition's last stable offset once this producer's last committed
        transaction is complete (the offset after its commit marker); None before its first
        commit.

        Kafka acknowledges a commit once the coordinator has logged it, and writes the commit
        markers into the partition after that: for a moment, the partition's last stable offset
        stays below this transaction's first record, although the commit returned. A new
        producer's start waits for that (InitProducerId answers CONCURRENT_TRANSACTIONS until
        the markers are written); a producer kept through a rebalance starts nothing, so a
        claim that keeps it waits for this end before reading the changelog's."""
        return self._committed_end

    @property
    def fenced(self) -> bool:
        """Whether a newer producer of this partition fenced this one."""
        return self._fenced

    async def start(self) -> float:
        """Start the producer: fence every earlier owner of the partition and abort its open
        transaction. Returns how long that took, in seconds. Raises ChangelogError when Kafka
        does not answer within the start timeout."""
        if self._producer is not None:
            raise ChangelogError(f"the changelog producer of {self.input_tp} is started already")
        began = time.monotonic()
        producer = build_changelog_producer(
            self._settings, self.transactional_id, self._transaction_timeout_ms
        )
        self._producer = producer
        try:
            async with asyncio.timeout(self._start_timeout_s):
                await producer.start()
        except BaseException as error:
            await self._close()
            if isinstance(error, TimeoutError):
                raise ChangelogError(
                    f"the changelog producer of {self.input_tp} did not start within"
                    f" {self._start_timeout_s:g} s (Kafka's transaction coordinator did not"
                    " answer)"
                ) from None
            if isinstance(error, KafkaError):
                raise ChangelogError(
                    f"the changelog producer of {self.input_tp} could not start: {error!r}"
                ) from error
            if isinstance(error, AssertionError):
                # aiokafka asserts that its metadata names a broker before it looks up the
                # transaction coordinator (AIOKafkaClient.coordinator_lookup). A broker that was
                # fenced by its controller a moment ago (e.g. after a long pause) answers its
                # first Metadata request with no broker, so a fresh producer's start fails
                # that way: the claim fails like any other transient start failure, and is
                # tried again.
                raise ChangelogError(
                    f"the changelog producer of {self.input_tp} could not start: Kafka's"
                    " metadata named no broker yet"
                ) from error
            raise
        init_s = time.monotonic() - began
        _STARTED.log(**partition_fields(self.input_tp, init_s=init_s))
        return init_s

    async def publish(
        self,
        rows: Sequence[Row],
        next_offset: int,
        start: StartedAt | None = None,
        seed: str | None = None,
    ) -> int:
        """Publish ``rows`` then the position record (``next_offset``: the input partition's
        next offset after the batch; ``start``: where its state begins; ``seed``: the hand-over
        whose seed this is) in one committed Kafka transaction; return the next changelog
        offset, the one after the position record.

        Raises ChangelogFenced when a newer producer of the partition fenced this one, and
        ChangelogError for any other failure; in both cases nothing was committed, or (a
        timeout during the commit, ``usable`` False afterwards) the outcome is unknown.
        """
        producer = self._producer
        if self._fenced:
            raise ChangelogFenced(self._fenced_message(), kept=self._kept)
        if producer is None or self._retired:
            raise ChangelogError(f"the changelog producer of {self.input_tp} is not running")
        settled = False  # the transaction ended (committed or aborted): the producer is fine
        succeeded = False
        self._publishing = True
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                self._raise_if_stopped(producer)
                await self._know_partition(producer)
                await producer.begin_transaction()
                try:
                    last_offset = await self._send(producer, rows, next_offset, start, seed)
                except BaseException:
                    await self._abort(producer)
                    settled = True
                    raise
                await producer.commit_transaction()
            succeeded = True
            self._committed_end = last_offset + 2
            self._kept = False
        except (ProducerFenced, InvalidProducerEpoch) as error:
            await self._fence()
            raise ChangelogFenced(self._fenced_message(), kept=self._kept) from error
        except TimeoutError:
            # The commit may still be on its way (aiokafka shields it from cancellation), and the
            # producer is mid-transaction: only closing it ends that.
            await self._close()
            raise ChangelogError(
                f"the changelog transaction of {self.input_tp} did not complete within"
                f" {self._publish_timeout_s:g} s; its outcome is unknown and the producer is"
                " closed: claim the partition again"
            ) from None
        except (KafkaError, IllegalOperation, AssertionError) as error:
            # AssertionError: aiokafka's "Unrecognized partition", should its metadata lose the
            # partition between the check above and the send.
            if not settled:
                await self._close()
            self._log_failure(error)
            raise ChangelogError(
                f"the changelog transaction of {self.input_tp} failed and was not committed:"
                f" {error!r}"
            ) from error
        except asyncio.CancelledError:
            # Cancelled mid-transaction: which step had run is not known, so nothing more can
            # be sent with this producer.
            await asyncio.shield(self._close())
            raise
        finally:
            self._publishing = False
            self._failed = self._failed or not succeeded
        return last_offset + 1

    async def _know_partition(self, producer: AIOKafkaProducer) -> None:
        """Make sure the producer's metadata has the changelog partition, before a transaction.

        aiokafka refreshes its metadata only every ``metadata_max_age_ms`` (five minutes), and
        for a partition its metadata lacks, ``send_batch`` fails on a bare ``AssertionError``
        ("Unrecognized partition"): so it goes for a changelog grown while running (its input
        gained partitions). Ask Kafka once more; a partition it still does not show is a
        ``ChangelogError``, retried at the next claim, never a crash.
        """
        topic, partition = self.tp
        if partition in await producer.partitions_for(topic):
            return
        await producer.client.force_metadata_update()
        if partition not in await producer.partitions_for(topic):
            raise ChangelogError(
                f"changelog partition {topic}-{partition} is not in Kafka's metadata yet"
            )

    def keep(self) -> None:
        """Serve the next claim of its partition (``reusable``): until it has published, a
        fencing may be a revoked owner's doing, which ``ChangelogFenced.kept`` tells."""
        self._kept = True

    def replace_at_next_claim(self) -> None:
        """Let the next claim of its partition start a new producer rather than keep this one
        (whose InitProducerId waits for this one's transactions by itself)."""
        self._replace = True

    def retire(self) -> None:
        """Take no more batches, from now on: its partition is being released (``stop`` closes
        it). A publish begun before runs to its end."""
        self._retired = True

    async def stop(self) -> None:
        """Close the producer (at the revoke). Its partition's next owner fences it anyway; a
        clean stop only saves the broker the wait. Bounded by a timeout."""
        await self._close()

    async def _send(
        self,
        producer: AIOKafkaProducer,
        rows: Sequence[Row],
        next_offset: int,
        start: StartedAt | None,
        seed: str | None,
    ) -> int:
        """Queue ``rows`` and the position record as record batches, wait until every one is
        written, and return the offset of the last.

        aiokafka commits a transaction even when one of its batches failed (its sender does
        not mark the transaction failed then), so every batch is awaited before the commit.
        """
        topic, partition = self.tp
        futures: list[Any] = []
        counts: list[int] = []
        batch = producer.create_batch()
        position = position_record(next_offset, self.input_topic_id, start, seed)
        for key, value in (*rows, position):
            if batch.append(key=key, value=value, timestamp=None) is None:
                # Full: send it and go on in a new one (a first record always fits).
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                counts.append(batch.record_count())
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        futures.append(await producer.send_batch(batch, topic, partition=partition))
        counts.append(batch.record_count())
        # Every batch is awaited, even after one failed, so that no failure goes unretrieved.
        results = await asyncio.gather(*futures, return_exceptions=True)
        last: int = -1
        for result, count in zip(results, counts, strict=True):
            if isinstance(result, BaseException):
                raise result
            last = result.offset + count - 1
        return last

    async def _abort(self, producer: AIOKafkaProducer) -> None:
        """Abort the open transaction, unless the producer already stopped for good (then the
        broker aborts it: at the next owner's start, or at the transaction timeout)."""
        if transaction_fatal_error(producer) is not None:
            return
        await producer.abort_transaction()

    def _raise_if_stopped(self, producer: AIOKafkaProducer) -> None:
        error = transaction_fatal_error(producer)
        if error is not None:
            raise error

    async def _fence(self) -> None:
        self._fenced = True
        _FENCED.log(**partition_fields(self.input_tp))
        await self._close()

    def _fenced_message(self) -> str:
        return (
            f"the changelog producer of {self.input_tp} was fenced: another owner claimed the"
            " partition; its batch is rolled back"
        )

    def _log_failure(self, error: BaseException) -> None:
        _PUBLISH_FAILED.log(
            **partition_fields(self.input_tp, reason=repr(error), usable=self.usable)
        )

    async def _close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await producer.stop()
        except (TimeoutError, KafkaError) as error:
            _STOP_FAILED.log(**partition_fields(self.input_tp, reason=repr(error)))


async def publish_all(
    work: Iterable[tuple[ChangelogProducer, Sequence[Row], int, StartedAt | None]],
) -> list[int | ChangelogError]:
    """Publish several partitions' batches at once, each in its own transaction: for each
    ``(producer, rows, next_offset, start)``, its next changelog offset or the ChangelogError (or
    ChangelogFenced) it raised, in the same order. One partition's failure does not stop the
    others: each partition's SQLite transaction then commits or rolls back on its own outcome.
    """
    outcomes = await asyncio.gather(
        *(producer.publish(rows, offset, start) for producer, rows, offset, start in work),
        return_exceptions=True,
    )
    results: list[int | ChangelogError] = []
    for outcome in outcomes:
        if isinstance(outcome, ChangelogError | int):
            results.append(outcome)
        else:  # not a changelog failure (a bug, a cancellation): not for the caller to sort out
            raise outcome
    return results
