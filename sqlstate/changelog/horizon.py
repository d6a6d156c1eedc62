"""The tombstone horizon: whether a file can still catch up on a changelog partition from its
tail, or must restore it whole.

Compaction drops a tombstone once it has been in the log for the changelog's
``delete.retention.ms`` (``R``). A tombstone written at time ``w`` is there at least until
``w + R``, so every record younger than ``now - R`` still comes with the deletions after it. A
file whose next changelog offset is older than that (a standby stopped for longer than ``R``, a
snapshot older than ``R``, a partition that ``--standby N`` or ``none`` stopped keeping and that
comes back to the file later) may have missed a deletion whose tombstone is gone: applying the
tail would keep a row its owner deleted. Such a partition is restored whole instead: its rows
and position are forgotten and its changelog is applied from the log's start, in which
compaction kept the last value of every live key (``apply.forget_for_restore``).

Which offset is young enough, Kafka says: ListOffsets by time gives the first offset whose record
is at or after ``now - R + R/10``. The tenth of ``R`` is the margin for the hosts' clocks (each
record's time is its producer's) and for the restore's own length: a tombstone older than the
horizon when the restore starts could expire while it reads. A file at or past that offset is
caught up from its tail, as always; more than one offset before it, restored whole. One short
is enough: a file stands at a commit marker (an owner's, after its last batch), which holds no
row, or at a transaction's first record, written together with the rest of it. An offset of 0
(the file applied nothing of the changelog) needs no check: the restore reads the whole log
anyway. A changelog whose start has moved (records deleted from it) cannot give the whole state:
that stops the host (``ChangelogLostError``, exit 5), as a changelog that lost what the file
applied does.

A file that follows a changelog (a standby) is checked again while it runs: what the check
proved at time ``t`` (every tombstone after the file's offset was written after ``t - R + R/10``)
holds until ``t + R/10``, so a standby that is about to apply a poll's records more than half
that margin (``R/20``) after its partition's last check checks it again first
(``proof_lasts_s``). A process frozen, suspended or cut off from Kafka for longer than ``R`` is
then restored whole instead of applying a tail that may lack deletions; one that runs and keeps
up asks Kafka two offsets every ``R/20`` (8.4 hours under the 7 days sqlstate creates its
changelogs with).

``R`` is asked once per changelog topic and process (``DescribeConfigs``), when a standby
starts following it or at the first check that needs it: lowering it on a running group takes
effect for this check at each daemon's next start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import NamedTuple, TypeAlias

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from sqlstate.changelog.topics import changelog_topic, delete_retention_ms
from sqlstate.errors import ChangelogError, ChangelogLostError
from sqlstate.kafka.client import EARLIEST, LATEST
from sqlstate.observe.logs import LogEvent, partition_fields
from sqlstate.settings import Settings

logger = logging.getLogger(__name__)
_WHOLE = LogEvent(
    logger,
    logging.WARNING,
    "changelog_restored_whole",
    "changelog %(changelog)s-%(partition)d: this file applied it up to offset"
    " %(changelog_offset)d, older than its tombstones are kept (delete.retention.ms"
    " %(delete_retention_ms)d: offset %(horizon)d on): deletions since may be gone from the log,"
    " so %(topic)s-%(partition)d is restored whole, from offset %(log_start_offset)d",
)
#: ListOffsets of some partitions at one time (or EARLIEST, LATEST).
OffsetLookup: TypeAlias = Callable[
    [Iterable[TopicPartition], int], Awaitable[dict[TopicPartition, int]]
]
# The share of delete.retention.ms kept as a margin (the module's docstring).
_MARGIN_SHARE = 10


class WholeRestore(NamedTuple):
    """A partition to restore whole: where its changelog starts, and what to say once its rows
    are forgotten (``say``)."""

    log_start: int
    fields: dict[str, object]

    def say(self) -> None:
        _WHOLE.log(**self.fields)


class TombstoneHorizon:
    """Tells which partitions a file must restore whole (the module's docstring)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock  # for how long a whole restore has been under way
        self._retention: dict[str, int] = {}  # changelog topic -> its delete.retention.ms
        # Input partition -> when its whole restore began here (``clock``).
        self._whole_since: dict[TopicPartition, float] = {}

    async def stale(
        self, offsets: OffsetLookup, applied: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, WholeRestore]:
        """Of the input partitions ``applied`` (-> the file's next offset in its changelog),
        those whose offset lies before their changelog's horizon, each with the changelog's
        first offset (where the whole restore starts) and what to log once it is forgotten.
        ``offsets`` asks Kafka (ListOffsets, as ``kafka.client.list_offsets`` of a client that
        reads the changelogs). ``ChangelogError`` (retriable) when Kafka cannot say."""
        sources = {
            tp: TopicPartition(changelog_topic(self._settings.group_id, tp.topic), tp.partition)
            for tp, offset in applied.items()
            if offset > 0
        }
        if not sources:
            return {}
        try:
            retention = await self._retention_of({source.topic for source in sources.values()})
            sources = {
                tp: source
                for tp, source in sources.items()
                if not self._restoring_whole(tp, retention[source.topic])
            }
            now_ms = int(time.time() * 1000)
            by_time: dict[int, list[TopicPartition]] = {}
            for source in sources.values():
                kept = retention[source.topic]
                by_time.setdefault(max(0, now_ms - kept + kept // _MARGIN_SHARE), []).append(source)
            # The ends first: a record written between the two answers is then young, never
            # taken for the end of a log older than the horizon.
            ends = await offsets(sources.values(), LATEST)
            horizons: dict[TopicPartition, int] = {}
            for at, group in sorted(by_time.items()):
                young = await offsets(group, at)
                for source in group:
                    # -1: no record is that young; the log's last offset is a commit marker.
                    # One short of the first young record is no loss (the module's docstring).
                    first_young = young[source] if young[source] >= 0 else ends[source]
                    horizons[source] = first_young - 1
            stale = {tp: source for tp, source in sources.items() if applied[tp] < horizons[source]}
            starts = await offsets(stale.values(), EARLIEST)
        except KafkaError as error:
            raise ChangelogError(
                f"cannot ask Kafka how old the changelog records this file stands at are: {error!r}"
            ) from error
        for tp, source in stale.items():
            if starts[source] > 0:
                # Only kafka-delete-records moves a compacted log's start: the changelog lacks
                # records, and a restore from it would lose rows (as ``changelog_lost``).
                raise ChangelogLostError(
                    f"this file has applied the changelog of {tp.topic}-{tp.partition} up to"
                    f" offset {applied[tp]}, older than its tombstones are kept, so it must be"
                    f" restored whole; but that changelog now starts at offset {starts[source]}"
                    " (records were deleted from it), so it lacks rows of the partition's state."
                    " Nothing was written. Changelog topics must never have records deleted; to"
                    " start over, run a new group (new changelogs) on new database files"
                )
        return {
            tp: WholeRestore(
                starts[source],
                partition_fields(
                    tp,
                    changelog=source.topic,
                    changelog_offset=applied[tp],
                    delete_retention_ms=retention[source.topic],
                    horizon=horizons[source],
                    log_start_offset=starts[source],
                ),
            )
            for tp, source in stale.items()
        }

    def began(self, tp: TopicPartition, restore: WholeRestore) -> None:
        """``tp`` was forgotten here to be restored whole (``restore``): said, and remembered,
        so that a restore cut short goes on from where it stands (``_restoring_whole``)."""
        self._whole_since[tp] = self._clock()
        restore.say()

    def _restoring_whole(self, tp: TopicPartition, retention_ms: int) -> bool:
        """Whether ``tp``'s whole restore began here less than the margin ago: the offset it
        reached lies in the old part of the log, but every tombstone after it is still there
        (the margin covers a restore's length), so it goes on from there rather than over."""
        since = self._whole_since.get(tp)
        if since is None:
            return False
        if (self._clock() - since) * 1000 < retention_ms // _MARGIN_SHARE:
            return True
        del self._whole_since[tp]
        return False

    async def proof_lasts_s(self, changelogs: set[str]) -> dict[str, float]:
        """For each changelog topic, how long after a check a standby applies its records
        unchecked: half the margin (the module's docstring). ``ChangelogError`` (retriable)
        when Kafka cannot say what ``R`` is."""
        try:
            retention = await self._retention_of(changelogs)
        except KafkaError as error:
            raise ChangelogError(
                f"cannot ask Kafka how long the changelogs keep their tombstones: {error!r}"
            ) from error
        return {name: _proof_lasts_s(kept) for name, kept in retention.items()}

    def known_proof_lasts_s(self, changelogs: set[str]) -> dict[str, float] | None:
        """``proof_lasts_s`` without asking Kafka: None unless ``R`` of each is known here."""
        if not changelogs <= self._retention.keys():
            return None
        return {name: _proof_lasts_s(self._retention[name]) for name in changelogs}

    async def _retention_of(self, changelogs: set[str]) -> dict[str, int]:
        missing = sorted(changelogs - self._retention.keys())
        if missing:
            self._retention.update(await delete_retention_ms(self._settings, missing))
        return {name: self._retention[name] for name in changelogs}


def _proof_lasts_s(retention_ms: int) -> float:
    """How long a check against the horizon of a changelog keeping tombstones
    ``retention_ms`` lasts: half the margin."""
    return retention_ms / (2 * _MARGIN_SHARE) / 1000
