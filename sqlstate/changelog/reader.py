"""Reading the changelog: restores (``ChangelogReader``) and standbys (``ChangelogFollower``).

Both read read_committed only: a changelog transaction that was aborted is a batch whose SQLite
transaction rolled back, or a zombie's, and must never be applied. Both hand out
``ChangelogChunk``s: the records, and the partition's next offset after them, the offset to
record as applied.

Whole transactions only. Every changelog transaction is one owner's batch and ends with exactly
one position record, but a fetch stops at its byte or record limit wherever that falls, often
inside a transaction. A chunk therefore ends at the last position record read so far; the records
after it wait in a buffer for the next fetch. Applied chunk by chunk, a file then only ever
commits states its owner committed (batch K+1's rows never appear with batch K's position).

The offset to record: with nothing left in the buffer, the consumer's position (past the commit
marker that follows every transaction, and past aborted records: they take offsets too). With
records left over, the offset right after the last position record (the marker's own offset): a
restart there reads the marker and the carried records again, never skipping or re-applying a
transaction; and, as for an owner's file, "one short of the changelog's end" still means nothing
to apply.

Out of range. A compacted changelog loses no record to retention, but a position can still fall
outside its log: ``kafka-delete-records.sh`` was run on it, or the topic was deleted and created
again (the file's changelog offset is then beyond its end). The readers then start over at the
log start and mark the chunks ``rewound`` (with a warning). Applying from the log start is still
correct for every key the log holds: compaction keeps the last value of every key, each record
is a full value or a tombstone, and applying one again is harmless. What it cannot bring back is
the rows whose last record was deleted by hand, or the deletions whose tombstones compaction
dropped after ``delete.retention.ms``; the ``rewound`` flag lets the caller decide (apply the
chunks although their offsets lie below the file's, or restore the partition from scratch).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from sqlstate.changelog.records import POSITION_KEY, ChangelogRecord
from sqlstate.errors import ChangelogError
from sqlstate.kafka.client import (
    EARLIEST,
    LATEST,
    build_changelog_consumer,
    consumed_position,
    high_watermarks,
    list_offsets,
    log_end,
    topic_ids,
)
from sqlstate.observe.logs import LogEvent, partition_fields
from sqlstate.settings import Settings

logger = logging.getLogger(__name__)

#: Records per chunk of a restore: each chunk is one SQLite transaction of the caller's. Bounded,
#: so that a large restore never holds the write lock for long (under a second on a busy 2-core
#: machine: a SIGTERM waits for the transaction under way), and shows progress as it goes; large
#: enough that a transaction's own costs (its commit, the capture triggers dropped and installed
#: again) are a few percent of it.
RESTORE_CHUNK = 20_000
# How long one fetch of a restore waits for records before asking again.
_FETCH_WAIT_MS = 500
# Bytes a restore fetches of its one partition at a time (unless the settings say more, or
# fetch_max_bytes less): a steady-state poll's 1 MiB holds about 7,000 records, fewer than a
# restore's chunk, which would end at each fetch.
RESTORE_FETCH_BYTES = 16 * 1024 * 1024
# How long the broker may hold a restore's fetch that finds nothing new. A restore reads to a
# known end, so a long poll only delays it: the fetcher sends its next fetch as soon as one
# returns, and one held at the end of a partition (aiokafka's 500 ms) kept the next restore's
# first fetch waiting for it, about half a second per partition claimed. The partition is
# paused once read whole, so that a reader between restores does not poll.
_RESTORE_FETCH_HOLD_MS = 20
#: How long a claim waits for a transaction committed to its changelog to show in the last
#: stable offset (``end_offset_reaching``): the commit markers normally land within
#: milliseconds; this bounds a coordinator that lags, and how long a changelog that lost the
#: file's last records takes to be called lost.
END_WAIT_S = 30.0
_END_POLL_S = 0.005
_END_POLL_MAX_S = 0.5


class ChangelogChunk(NamedTuple):
    """Records of one changelog partition, in offset order, and the partition's next offset
    after them (what to record as applied). ``rewound``: the reader started this partition over
    at its log start after an out-of-range position (see the module's docstring). ``start``:
    the offset the reading of these records began at, the previous chunk's ``next_offset``
    (None: not known). A file whose changelog offset lies below it no longer holds what came
    before (another process on the file forgot the partition to restore it whole): the chunk is
    not applied there (``standby.apply_chunk``)."""

    records: list[ChangelogRecord]
    next_offset: int
    rewound: bool = False
    start: int | None = None


def _records(batch: Iterable[Any], below: int | None = None) -> list[ChangelogRecord]:
    return [
        ChangelogRecord(record.key, record.value, record.offset)
        for record in batch
        if below is None or record.offset < below
    ]


def whole_transactions(
    records: list[ChangelogRecord], position: int
) -> tuple[ChangelogChunk | None, list[ChangelogRecord]]:
    """Split what has been read of a partition, up to consumer position ``position``, into the
    chunk of whole transactions (None: not one complete yet) and the records carried over."""
    last = len(records) - 1
    while last >= 0 and records[last].key != POSITION_KEY:
        last -= 1
    if last == len(records) - 1:
        return ChangelogChunk(records, position), []
    if last < 0:
        return None, records
    return ChangelogChunk(records[: last + 1], records[last].offset + 1), records[last + 1 :]


class InputEnds:
    """The log ends of input partitions, which no position record may pass. Kafka is asked
    only when a position goes past the end known: an owner's positions always lie within."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._known: dict[TopicPartition, int] = {}

    async def at_least(self, tp: TopicPartition, wanted: int) -> int:
        """Input partition ``tp``'s log end, asked again if the one known is below ``wanted``.
        The high watermark, whatever the isolation level: an owner that reads uncommitted
        records may stand past the last stable offset. ``ChangelogError`` if Kafka does not
        answer (retriable)."""
        known = self._known.get(tp)
        if known is None or known < wanted:
            try:
                known = (await high_watermarks(self._consumer, [tp]))[tp]
            except KafkaError as error:
                raise ChangelogError(
                    f"cannot ask Kafka where {tp.topic}-{tp.partition} ends, to check a"
                    f" position of its changelog: {error!r}"
                ) from error
            self._known[tp] = known
        return known


class ChangelogReader:
    """Reads changelog partitions from an offset to their end, one partition at a time (a
    restore at a claim). ``await start()`` once, ``await stop()`` at the end."""

    def __init__(self, settings: Settings) -> None:
        self._consumer = build_changelog_consumer(
            settings,
            fetch_max_wait_ms=_RESTORE_FETCH_HOLD_MS,
            max_partition_fetch_bytes=min(RESTORE_FETCH_BYTES, settings.fetch_max_bytes),
        )
        self._lock = asyncio.Lock()
        self.input_ends = InputEnds(self._consumer)

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def topic_ids(self, topics: Iterable[str]) -> dict[str, str | None]:
        """The IDs of ``topics`` in Kafka now (``sqlstate.kafka.topic_ids``): which incarnation
        of a changelog, or of its input, a restore reads."""
        return await topic_ids(self._consumer, topics)

    async def end_offset(self, tp: TopicPartition) -> int:
        """The last stable offset of changelog partition ``tp``: the end a restore reads to."""
        return (await self.end_offsets([tp]))[tp]

    async def end_offset_reaching(
        self,
        tp: TopicPartition,
        least: int,
        stop: asyncio.Event | None = None,
        timeout_s: float = END_WAIT_S,
    ) -> int:
        """``end_offset`` of ``tp`` once it is at least ``least``, or as last read once
        ``timeout_s`` passed or ``stop`` was set: a transaction known committed counts in the
        last stable offset only once its commit markers are written, an instant after the
        commit returned."""
        deadline = time.monotonic() + timeout_s
        pause = _END_POLL_S
        while True:
            end = await self.end_offset(tp)
            if end >= least or time.monotonic() >= deadline or (stop and stop.is_set()):
                return end
            # Kafka tells nobody when the markers are written: ask again, soon at first.
            await asyncio.sleep(pause)
            pause = min(pause * 2, _END_POLL_MAX_S)

    async def high_watermark(self, tp: TopicPartition) -> int:
        """The end of changelog partition ``tp``'s log, open transactions included."""
        return (await high_watermarks(self._consumer, [tp]))[tp]

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """``end_offset`` of each of ``tps``, in one request per broker."""
        if not tps:
            return {}
        return await list_offsets(self._consumer, tps, LATEST, "read_committed")

    async def offsets_at(self, tps: Iterable[TopicPartition], at: int) -> dict[TopicPartition, int]:
        """ListOffsets of ``tps`` at ``at`` (``kafka.client.list_offsets``)."""
        return await list_offsets(self._consumer, tps, at)

    async def read_to_end(
        self, tp: TopicPartition, from_offset: int, batch_size: int = RESTORE_CHUNK
    ) -> AsyncIterator[ChangelogChunk]:
        """Chunks of at most ``batch_size`` committed records of changelog partition ``tp``,
        from ``from_offset`` up to its last stable offset as of this call; the last chunk's
        ``next_offset`` is that end. Nothing when the partition holds nothing from there.

        Call it after the partition's producer started (a kept one: after
        ``end_offset_reaching`` its last transaction): its end is then final (no earlier owner
        can commit any more). Reads run one after the other on one reader.
        """
        async with self._lock:
            consumer = self._consumer
            consumer.assign([tp])
            end = await self.end_offset(tp)
            start = (await list_offsets(consumer, [tp], EARLIEST))[tp]
            rewound = False
            if not start <= from_offset <= end:
                self._say_rewound(tp, from_offset, start, end)
                from_offset, rewound = start, True
            consumer.seek(tp, from_offset)
            position = begun = from_offset
            carried: list[ChangelogRecord] = []  # the start of a transaction not read whole yet
            # The last offset before the end can only be a transaction marker: only the owners'
            # transactional producers write to a changelog, and a committed record's marker
            # comes after it, below the last stable offset. Waiting for a fetch that returns
            # nothing but that marker would cost a whole fetch wait per partition.
            while position < end - 1:
                try:
                    batches = await consumer.getmany(
                        tp, timeout_ms=_FETCH_WAIT_MS, max_records=batch_size
                    )
                except OffsetOutOfRangeError:
                    # Records deleted under the read (delete-records while restoring).
                    start = (await list_offsets(consumer, [tp], EARLIEST))[tp]
                    self._say_rewound(tp, position, start, end)
                    consumer.seek(tp, start)
                    position, rewound, carried, begun = start, True, [], start
                    continue
                # Right after getmany, with no await between: the exact position, markers and
                # aborted records included.
                now = consumed_position(consumer, tp)
                records = _records(batches.get(tp, ()), below=end)
                if now is None or (now == position and not records):
                    continue
                position = min(now, end)
                chunk, carried = whole_transactions(carried + records, position)
                if chunk is not None:
                    yield chunk._replace(rewound=rewound, start=begun)
                    begun = chunk.next_offset
            # Read: fetch nothing more of it (each fetch would return at once, empty) until the
            # next restore assigns a partition.
            consumer.pause(tp)
            if carried:
                # Committed records below the end with no position record after them: not an
                # owner's transaction (its records are checked one by one when applied). There is
                # nothing more to wait for.
                yield ChangelogChunk(carried, position, rewound, begun)

    def _say_rewound(self, tp: TopicPartition, offset: int, start: int, end: int) -> None:
        _log_rewound(tp, offset, start, end, "restore")


class ChangelogFollower:
    """Follows many changelog partitions at once, for a standby: no group, assigned by hand.

    ``follow()`` adds partitions at given offsets, ``unfollow()`` removes some, ``pause()``
    stops fetching some (the ones this process owns), ``resume()`` starts them again from given
    offsets, ``poll()`` returns the new chunks, ``lag()`` how far behind each followed partition
    is.
    """

    def __init__(self, settings: Settings) -> None:
        self._consumer: AIOKafkaConsumer = build_changelog_consumer(settings)
        self.input_ends = InputEnds(self._consumer)
        self._next: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._rewound: set[TopicPartition] = set()
        # Per partition, the start of a transaction not read whole yet (see the module's docstring).
        self._carried: dict[TopicPartition, list[ChangelogRecord]] = {}
        # Per partition, where the next chunk's reading began (``ChangelogChunk.start``).
        self._begun: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    @property
    def followed(self) -> dict[TopicPartition, int]:
        """Each followed partition and its next offset (the one after the last chunk)."""
        return dict(self._next)

    @property
    def paused(self) -> frozenset[TopicPartition]:
        return frozenset(self._paused)

    @property
    def followed_now(self) -> Mapping[TopicPartition, int]:
        """``followed`` without a copy, for membership tests (also from the database thread)."""
        return self._next

    def follow(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Follow these partitions from these offsets (also to move a followed one)."""
        self._next.update(offsets)
        self._begun.update(offsets)
        for tp in offsets:
            self._carried.pop(tp, None)
        self._reassign()

    def unfollow(self, tps: Iterable[TopicPartition]) -> None:
        """Stop following these partitions (``--standby N``: no longer this file's to follow);
        what was fetched of them and not returned yet is dropped."""
        tps = [tp for tp in tps if tp in self._next]
        for tp in tps:
            del self._next[tp]
            self._begun.pop(tp, None)
            self._paused.discard(tp)
            self._rewound.discard(tp)
            self._carried.pop(tp, None)
        if tps:
            self._reassign()

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        """Stop fetching these partitions (this process owns them now)."""
        tps = [tp for tp in tps if tp in self._next]
        self._paused.update(tps)
        self._consumer.pause(*tps)

    def resume(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Fetch these paused partitions again, from these offsets (what the file has applied:
        the owner that held them went on writing meanwhile)."""
        for tp, offset in offsets.items():
            if tp not in self._next:
                continue
            self._next[tp] = self._begun[tp] = offset
            self._carried.pop(tp, None)
            self._consumer.seek(tp, offset)
            self._paused.discard(tp)
            self._consumer.resume(tp)

    async def poll(
        self, timeout_ms: int = 500, max_records: int | None = None
    ) -> dict[TopicPartition, ChangelogChunk]:
        """The followed, unpaused partitions that moved, with their new whole transactions and
        the next offset after them. Empty when nothing moved within ``timeout_ms``."""
        if not self._next or len(self._paused) == len(self._next):
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        try:
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except OffsetOutOfRangeError as error:
            await self._rewind(error.args[0] if error.args else {})
            return {}
        chunks: dict[TopicPartition, ChangelogChunk] = {}
        # No await from getmany to here: each position is exactly the one after its records.
        for tp, previous in self._next.items():
            if tp in self._paused:
                continue
            position = consumed_position(self._consumer, tp)
            records = _records(batches.get(tp, ()))
            if position is None or (position == previous and not records):
                continue
            self._next[tp] = position
            chunk, self._carried[tp] = whole_transactions(
                self._carried.get(tp, []) + records, position
            )
            if chunk is not None:
                chunks[tp] = chunk._replace(rewound=tp in self._rewound, start=self._begun.get(tp))
                self._begun[tp] = chunk.next_offset
                self._rewound.discard(tp)
        return chunks

    async def offsets_at(self, tps: Iterable[TopicPartition], at: int) -> dict[TopicPartition, int]:
        """ListOffsets of ``tps`` at ``at`` (``kafka.client.list_offsets``), over this
        follower's own client: the group consumer's metadata is left alone."""
        return await list_offsets(self._consumer, tps, at)

    def lag(self) -> dict[TopicPartition, int | None]:
        """Records each followed partition is behind its last stable offset as of the last
        fetch; None for a partition not fetched yet, or paused (this process owns it)."""
        lags: dict[TopicPartition, int | None] = {}
        for tp, position in self._next.items():
            end = None if tp in self._paused else log_end(self._consumer, tp, "read_committed")
            lags[tp] = None if end is None else max(0, end - position)
        return lags

    def _reassign(self) -> None:
        # assign() replaces the whole assignment and drops every position and pause: set them
        # all again at once, with no await between, so that no fetch sees a partition without a
        # position (with no group and no reset policy it would raise).
        self._consumer.assign(list(self._next))
        for tp, offset in self._next.items():
            self._consumer.seek(tp, offset)
        if self._paused:
            self._consumer.pause(*self._paused)

    async def _rewind(self, out_of_range: Mapping[TopicPartition, int]) -> None:
        for tp, fetch_offset in out_of_range.items():
            if tp not in self._next or tp in self._paused:
                continue  # no longer followed, or paused meanwhile: resume() seeks it anyway
            start = (await list_offsets(self._consumer, [tp], EARLIEST))[tp]
            end = (await list_offsets(self._consumer, [tp], LATEST, "read_committed"))[tp]
            if tp not in self._next or tp in self._paused:
                continue
            _log_rewound(tp, fetch_offset, start, end, "standby")
            self._next[tp] = self._begun[tp] = start
            self._carried.pop(tp, None)
            self._rewound.add(tp)
            self._consumer.seek(tp, start)


_REWOUND = LogEvent(
    logger,
    logging.WARNING,
    "changelog_rewound",
    "changelog %(tp)s: offset %(fetch_offset)d is outside the log [%(log_start_offset)d,"
    " %(log_end_offset)d); reading it again from %(log_start_offset)d: compaction kept the last"
    " value of every key",
    words=lambda fields: {"tp": TopicPartition(fields["topic"], fields["partition"])},
)


def _log_rewound(tp: TopicPartition, offset: int, start: int, end: int, reader: str) -> None:
    _REWOUND.log(
        **partition_fields(
            tp, fetch_offset=offset, log_start_offset=start, log_end_offset=end, reader=reader
        )
    )
