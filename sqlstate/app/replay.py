"""Processors run over records that come from anywhere, into a database, as the daemon runs them.

``replay`` takes batches of records as Kafka has them (key and value bytes, not yet decoded) and
commits each batch the way the batch loop does: decoded by ``--key-format``/``--value-format``
(the registry's formats waiting for the schemas the batch needs, as long as the registry takes),
sorted out by ``--on-bad-record``, gated at each partition's stored position, turned into the
processors' statements, the records they fail on sorted out by ``--on-processor-error``
(``processor_errors.py``, with its ``--max-rejected-in-a-row``), and committed through
``Store.commit_batch``, one transaction per batch
that moves each partition's position by compare-and-set. The database is an ordinary sqlstate
file (migrations applied, processors and isolation level recorded, positions), queried like a
live one. ``sqlstate replay`` feeds it a JSON Lines file (``records_file.py``);
``sqlstate.testing`` a test's records.

A database that already holds positions is continued, as a restarted daemon continues it: each
partition is claimed (its epoch bumped, so a daemon still writing that partition is fenced,
which is why a replay must not target a file a daemon runs on), and a record below its stored
position is skipped, never applied twice. The database's recorded settings are checked as the
daemon checks them: another set of processors for a topic, another isolation level or a file
made with ``--changelog`` are refused before anything is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from sqlstate.app import records_file
from sqlstate.app.batch_loop import partition_batch
from sqlstate.app.processor_checks import load_checked, offline_settings
from sqlstate.app.processor_definitions import definitions
from sqlstate.app.processor_errors import ProcessorErrors
from sqlstate.app.records_file import RawRecord
from sqlstate.errors import ConfigError, DatabaseError
from sqlstate.kafka.decoding import BadRecords, Decoding
from sqlstate.kafka.schemas import schemas_for
from sqlstate.observe.stats import Stats
from sqlstate.processors.base import Record
from sqlstate.processors.registry import Processors
from sqlstate.settings import Settings
from sqlstate.state import migrate
from sqlstate.state.database import Database
from sqlstate.state.model import Claim, Committed
from sqlstate.state.out_of_range import LogBounds
from sqlstate.state.store import Store


@dataclass
class Replayed:
    """What a replay did."""

    batches: int = 0  # batch transactions committed
    records: int = 0  # records the processors folded in
    skipped: int = 0  # records below a partition's stored position: in the database already
    bad_records: int = 0  # records that did not decode, left out or dead-lettered
    rejected: int = 0  # records a processor failed on, in rejected_records (dead-letter)
    # What the processors' counting statements returned, by "processor:counter".
    counters: Counter[str] = field(default_factory=Counter)


def replay_owner() -> str:
    """Who claims the partitions in the positions table: this replay's host and process."""
    return f"sqlstate-replay@{socket.gethostname()}:{os.getpid()}"


async def replay(
    batches: AsyncIterable[Sequence[RawRecord]],
    database: Path,
    processors: Processors,
    settings: Settings,
    owner: str | None = None,
) -> Replayed:
    """Commit each of ``batches`` (records of any partitions of ``settings.topics``, each
    partition's in offset order) to ``database``, created if missing, as the daemon commits a
    batch; return what was done. ``processors``: loaded and checked
    (``processor_checks.load_checked``). Of ``settings``, what a batch depends on:
    ``key_format``, ``value_format`` (and the ``schema_registry_*`` they may need),
    ``on_bad_record``, ``on_processor_error`` and ``max_rejected_in_a_row``,
    ``isolation_level`` (the one the records were read with, recorded as the daemon records it)
    and ``busy_timeout_s``.

    Raises what the daemon would: ``ProcessorError`` for a processor set that differs from the
    one recorded for a topic, ``BadRecordError`` under ``--on-bad-record fail`` (its batch not
    committed), ``RejectionLimitError`` past ``--max-rejected-in-a-row`` (its batch not
    committed), ``DatabaseError`` for a file that cannot be used or that another process
    claimed meanwhile.
    """
    db = await Database.open(database, busy_timeout_s=settings.busy_timeout_s)
    try:
        await migrate.apply_pending(db)
        store = Store(db)
        await store.check_processors(settings.topics, processors.names)
        await store.check_changelog(False)
        await store.record_processors(settings.topics, processors.names)
        await store.record_definitions(settings.topics, definitions(processors.members, settings))
        await store.record_changelog(False)
        await migrate.apply_processor_migrations(db, processors.members)
        run = _Run(store, processors, settings, owner or replay_owner())
        async for batch in batches:
            await run.commit(batch)
        return run.replayed
    finally:
        await db.close()


class _Run:
    """One replay's claims and the batches it commits."""

    def __init__(
        self,
        store: Store,
        processors: Processors,
        settings: Settings,
        owner: str,
    ) -> None:
        self._store = store
        self._processors = processors
        self._topics = set(settings.topics)
        stats = Stats()
        self._decoding = Decoding(
            settings.key_format, settings.value_format, schemas_for(settings, stats)
        )
        self._errors = ProcessorErrors(processors, settings, stats)
        self._bad_records = BadRecords(self._decoding, settings.on_bad_record)
        self._isolation_level = settings.isolation_level
        self._owner = owner
        self._claims: dict[TopicPartition, Claim] = {}
        self.replayed = Replayed()

    async def commit(self, batch: Sequence[RawRecord]) -> None:
        by_partition: dict[TopicPartition, list[RawRecord]] = {}
        for record in batch:
            by_partition.setdefault(TopicPartition(record.topic, record.partition), []).append(
                record
            )
        await self._claim(by_partition)
        decoded_so_far = self._bad_records.mark()
        decoded = {tp: [self._decoded(r) for r in records] for tp, records in by_partition.items()}
        # Keys and values whose schema is not fetched yet: waits for the schema registry, as
        # the batch loop does after its getmany().
        await self._decoding.complete(decoded, asyncio.Event())
        advances = []
        for tp, records in sorted(decoded.items()):
            claim = self._claims[tp]
            self.replayed.skipped += sum(1 for r in records if r.offset < claim.next_offset)
            next_offset = records[-1].offset + 1
            if next_offset <= claim.next_offset:
                continue  # all of it is in the database already
            advances.append(
                partition_batch(
                    tp,
                    claim,
                    records,
                    next_offset,
                    # The end of what was read: the file or feed is the log.
                    next_offset,
                    self._processors,
                    self._bad_records,
                    decoded_so_far,
                    self._errors,
                )
            )
        if not advances:
            return
        bad_records = {part.tp: part.bad_records for part in advances}
        for outcome in await self._errors.commit(self._store, advances):
            if not isinstance(outcome, Committed):
                raise DatabaseError(
                    f"{outcome.tp.topic}-{outcome.tp.partition} was claimed or moved by another"
                    f" process while replaying into {self._store.database.path}; what was"
                    " committed before stays, this batch was not"
                )
            self._claims[outcome.tp] = outcome.claim
            self.replayed.records += outcome.records
            self.replayed.bad_records += bad_records[outcome.tp]
            self.replayed.rejected += len(outcome.rejected)
            self.replayed.counters.update(outcome.counters)
        self.replayed.batches += 1

    async def _claim(self, partitions: dict[TopicPartition, list[RawRecord]]) -> None:
        """Claim the partitions seen for the first time, as an assignment would."""
        new = sorted(tp for tp in partitions if tp not in self._claims)
        if not new:
            return
        strangers = sorted({tp.topic for tp in new} - self._topics)
        if strangers:
            raise ConfigError(f"a record of topic {strangers[0]}, which the replay was not given")
        # Bounds that hold where each partition stands: a replay has no log to be out of range
        # of, and a partition it has not seen starts at 0, as a log does.
        stored = {
            TopicPartition(p.topic, p.partition): p.next_offset
            for p in await self._store.positions()
        }
        claimed = await self._store.claim(
            {tp: LogBounds(0, stored.get(tp, 0)) for tp in new},
            self._owner,
            "fail",
            self._processors.forget,
            topic_ids={},
            isolation_level=self._isolation_level,
        )
        self._claims.update(claimed.claims)

    def _decoded(self, record: RawRecord) -> Record:
        """The record as the consumer's deserializers would have made it."""
        key_of, value_of = self._decoding.key_deserializer, self._decoding.value_deserializer
        return dataclasses.replace(
            record,
            key=record.key if key_of is None else key_of(record.key),
            value=record.value if value_of is None else value_of(record.value),
        )


async def replay_file(records: Path, database: Path, **options: Any) -> tuple[Replayed, list[str]]:
    """``sqlstate replay``: the records of a JSON Lines file (``records_file.py``), in batches of
    ``max_records``, through the processors of ``options`` (``Settings`` fields, checked as the
    daemon checks them at start) into ``database``. Returns what was done and the processors'
    names."""
    raw = records_file.read(records)
    if not raw:
        raise records_file.RecordsFileError(f"--records {records}: it holds no record")
    settings = offline_settings(sorted({record.topic for record in raw}), **options)
    processors, _ = load_checked(settings)
    with contextlib.closing(processors):
        replayed = await replay(
            in_batches(raw, settings.max_records),
            database,
            processors,
            settings,
        )
    return replayed, processors.names


async def in_batches(records: Sequence[RawRecord], size: int) -> AsyncIterator[Sequence[RawRecord]]:
    """``records`` as ``replay`` takes them: ``size`` at a time (``records_file.batches``)."""
    for batch in records_file.batches(records, size):
        yield batch
