"""Whether a file may catch a partition up from where it stands, or must read it from the start.

Compaction drops a tombstone (a deleted row's record) from a changelog ``delete.retention.ms``
after it was written, at the earliest. A file that stopped keeping a partition for a while (a
standby that no longer follows it under ``--standby N``, a host that released it under
``--standby none``, a host that was down) and then catches it up from its old changelog offset
would keep the rows deleted meanwhile whose tombstones are gone: its state would no longer be
the one its position says.

So before a restore or a standby reads a partition from a file's offset, ``Tombstones.stale``
asks Kafka (ListOffsets by time) for the first changelog record written within the last half
of the changelog's ``delete.retention.ms``. If the file stands before it, older records lie
between the file and the end, and the file forgets the partition (``forget_partition``: its
rows, position and changelog offset, in one transaction, so that a reader sees the partition
absent, as in a new file) and reads the changelog from its start, which holds every live row.
The other half of the retention covers the read itself and clocks that differ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from sqlstate.changelog.topics import tombstone_retention_ms
from sqlstate.errors import ChangelogError
from sqlstate.observe.logs import LogEvent, partition_fields
from sqlstate.settings import Settings

logger = logging.getLogger(__name__)
_STALE = LogEvent(
    logger,
    logging.WARNING,
    "changelog_reread",
    "%(topic)s-%(partition)d: this file stands at changelog offset %(changelog_offset)d, before"
    " records older than half the changelog's delete.retention.ms (%(retention_ms)d ms), whose"
    " tombstones may be gone: forgetting the partition here and reading its changelog from the"
    " start",
)
# Kafka's default delete.retention.ms, for a changelog whose configuration it does not give.
DEFAULT_RETENTION_MS = 86_400_000


class Reads(Protocol):
    """What a changelog reader answers (``ChangelogReader``, ``ChangelogFollower``)."""

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]: ...

    async def first_offsets_since(
        self, times: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int | None]: ...


class Tombstones:
    """Each changelog's ``delete.retention.ms`` (asked once per topic), and the check."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._retention_ms: dict[str, int] = {}

    async def retention_ms(self, changelog: str) -> int:
        if changelog not in self._retention_ms:
            try:
                found = await tombstone_retention_ms(self._settings, [changelog])
            except KafkaError as error:
                raise ChangelogError(
                    f"could not ask Kafka for the configuration of {changelog}: {error}"
                ) from error
            self._retention_ms[changelog] = found.get(changelog, DEFAULT_RETENTION_MS)
        return self._retention_ms[changelog]

    async def stale(
        self, reads: Reads, starts: Mapping[TopicPartition, tuple[TopicPartition, int]]
    ) -> set[TopicPartition]:
        """Those input partitions of ``starts`` (input partition -> its changelog partition
        and the file's offset in it) whose catching up from that offset may miss tombstones;
        each logged. Offset 0 reads everything; a file at the changelog's end has nothing to
        catch up. One request of each kind for all of them."""
        starts = {tp: start for tp, start in starts.items() if start[1] > 0}
        if not starts:
            return set()
        now_ms = int(time.time() * 1000)
        retention = {
            topic: await self.retention_ms(topic) for topic in {s.topic for s, _ in starts.values()}
        }
        firsts = await reads.first_offsets_since(
            {source: now_ms - retention[source.topic] // 2 for source, _ in starts.values()}
        )
        quiet = [source for source, _ in starts.values() if firsts.get(source) is None]
        ends = await reads.end_offsets(quiet)
        stale = set()
        for tp, (source, offset) in sorted(starts.items()):
            first = firsts.get(source)
            # Nothing written lately: stale only if older records follow the file's offset
            # (the record at it is the commit marker of the file's last transaction).
            if (offset < first) if first is not None else (ends[source] - offset > 1):
                stale.add(tp)
                _STALE.log(
                    **partition_fields(
                        tp, changelog_offset=offset, retention_ms=retention[source.topic]
                    )
                )
        return stale
