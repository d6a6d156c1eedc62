"""Which processors a daemon runs: built-ins by short name, the user's by import path, SQL files.

``--processor counts`` (or ``latest``, ``windowed-counts``) names a built-in;
``--processor PACKAGE.MODULE:NAME`` imports ``PACKAGE.MODULE`` (the current directory is searched
first, as ``python -m`` would, for that import only) and takes ``NAME`` from it: a ``Processor``,
or a class or function that returns one when called with no arguments. ``--sql FILE`` is a
processor written in SQL (``sql_file.py``). Everything is loaded and checked before the daemon
touches its database: a processor that cannot be imported, does not have the ``Processor``
shape, reuses another's name, or whose SQL the guard refuses, stops the start with exit code 2.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from types import ModuleType

from aiokafka import TopicPartition

from sqlstate.errors import ProcessorError
from sqlstate.processors.base import (
    MIGRATION_NAME,
    NAME,
    Parameters,
    Processor,
    Record,
    Records,
    Statement,
)
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.guard import Guard
from sqlstate.processors.keys import StoredKey, stored_key
from sqlstate.processors.latest import Latest
from sqlstate.processors.sql_file import SqlFileProcessor
from sqlstate.processors.windowed_counts import WindowedCounts
from sqlstate.settings import Settings, duration_ms
from sqlstate.state import migrate
from sqlstate.state.model import Piece, Rejected
from sqlstate.state.queries import sql
from sqlstate.state.rejections import describe

BUILT_INS: dict[str, Callable[[Settings], Processor]] = {
    "counts": lambda settings: KeyCounter(),
    "latest": lambda settings: Latest(),
    "windowed-counts": lambda settings: WindowedCounts(
        duration_ms(settings.window), duration_ms(settings.retention)
    ),
}


# Processors whose statements read a record's key, value, offset and timestamp only (typed so,
# ``base.ParsedRecord``), which aiokafka's bare records have (``sqlstate.kafka.client``): the
# daemon gives them those, not ConsumerRecords. A user's processor or a SQL file may read more
# (topic, partition, headers as a tuple), and a subclass may too: they get ConsumerRecords.
_BARE_RECORD_READERS = (KeyCounter, Latest, WindowedCounts)


def load(spec: str, settings: Settings) -> Processor:
    """The processor ``--processor spec`` names."""
    if spec in BUILT_INS:
        return BUILT_INS[spec](settings)
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ProcessorError(
            f"--processor {spec}: name a built-in ({', '.join(BUILT_INS)}) or give"
            " PACKAGE.MODULE:NAME"
        )
    try:
        module = _import_from_here(module_name)
    except Exception as error:
        raise ProcessorError(
            f"--processor {spec}: cannot import {module_name}: {error!r}"
        ) from error
    found = getattr(module, attribute, None)
    if found is None:
        raise ProcessorError(f"--processor {spec}: {module_name} has no {attribute}")
    if isinstance(found, type) or (callable(found) and not isinstance(found, Processor)):
        try:
            found = found()
        except Exception as error:
            raise ProcessorError(f"--processor {spec}: {attribute}() failed: {error!r}") from error
    return checked(found, f"--processor {spec}")


def _import_from_here(module_name: str) -> ModuleType:
    """Import ``module_name`` with the current directory first on ``sys.path``, as ``python -m``
    has it, and take the directory off again right after.

    For this import only: left on the path, the current directory would stay first for every
    later import of the run, and a file there named like a module imported later (by
    aiokafka, say, or the standard library's lazy imports) would be run in its place. The
    module stays imported, and a package found here keeps its own absolute ``__path__`` for
    its submodules; a module the processor imports only later, from the current directory,
    is not found (import it at the top of the processor's module)."""
    here = os.getcwd()
    sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    finally:
        # One entry, ours: whatever else the module itself did to sys.path stays.
        with contextlib.suppress(ValueError):
            sys.path.remove(here)


def checked(candidate: object, source: str) -> Processor:
    """``candidate`` if it has the processor's shape, a good name and good migration names."""
    if not isinstance(candidate, Processor):
        raise ProcessorError(
            f"{source}: {candidate!r} is not a processor: it needs name, migrations,"
            " statements(tp, records) and forget(tp) (see sqlstate.processors.Processor)"
        )
    name = candidate.name
    if not isinstance(name, str) or not NAME.match(name):
        raise ProcessorError(
            f"{source}: processor name {name!r} must be lowercase letters, digits, _ and -,"
            " starting with a letter"
        )
    names = [migration.name for migration in candidate.migrations]
    for migration_name in names:
        if not MIGRATION_NAME.match(migration_name):
            raise ProcessorError(
                f"{source}: migration name {migration_name!r} of processor {name} is not"
                " NNNN_what (digits, then lowercase letters, digits and _)"
            )
    if len(set(names)) != len(names):
        raise ProcessorError(f"{source}: processor {name} has two migrations of the same name")
    return candidate


def from_settings(settings: Settings, given: Sequence[Processor] = ()) -> list[Processor]:
    """Every processor of ``settings``, in order: ``--processor`` ones, then ``--sql`` files,
    then ``given``, processors passed as objects (``sqlstate.testing``), each checked; with
    ``given``, no processor is added by default."""
    specs = settings.processors if given else settings.processor_specs
    processors = [load(spec, settings) for spec in specs]
    processors += [SqlFileProcessor.load(path) for path in settings.sql_files]
    sources = [*specs, *map(str, settings.sql_files)]
    for processor in given:
        sources.append(repr(processor))
        processors.append(checked(processor, sources[-1]))
    for spec, processor in zip(sources, processors, strict=True):
        if spec not in BUILT_INS and processor.name in BUILT_INS:
            # A built-in's name carries its rights: counts writes sqlstate's key_counts.
            raise ProcessorError(
                f"{spec}: the name {processor.name} belongs to a built-in processor; choose"
                " another (for a --sql file, rename the file)"
            )
    names = [processor.name for processor in processors]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ProcessorError(f"two processors are named {', '.join(twice)}: names must be unique")
    return processors


class ProcessorRaised(ProcessorError):
    """A processor's Python code raised on a batch's records."""


class Processors:
    """All processors of a daemon; their statements run in order in the batch's transaction.

    With a ``guard``, each distinct statement a processor returns is checked once against it
    before it goes anywhere near the database.
    """

    def __init__(self, members: Sequence[Processor], guard: Guard | None = None) -> None:
        self.members = tuple(members)
        self.names = [member.name for member in self.members]
        self._guard = guard

    @property
    def read_bare_records(self) -> bool:
        """Whether every processor takes aiokafka's bare records (``_BARE_RECORD_READERS``)."""
        return all(type(member) in _BARE_RECORD_READERS for member in self.members)

    @classmethod
    def checked(cls, members: Sequence[Processor]) -> Processors:
        """The processors, with a guard that has already accepted their migrations."""
        guard = Guard()
        try:
            guard.add_sqlstate_schema(migration.script for migration in migrate.available())
            for member in members:
                for migration in sorted(member.migrations, key=lambda m: m.name):
                    where = f"migration {migration.name}"
                    try:
                        migrate.split(migration.script)  # as it will be applied
                    except ValueError as error:
                        raise ProcessorError(
                            f"processor {member.name} ({where}): {error}"
                        ) from error
                    guard.apply(member.name, migration.script, where)
            # Forgetting runs inside the reset's transaction, in the database thread, where the
            # guard (whose connection the event loop uses) must not run: check it here, once.
            for member in members:
                for statement in member.forget(TopicPartition("a-topic", 0)):
                    guard.check(member.name, statement.sql, _first(statement), "forget")
        except BaseException:
            guard.close()  # refused: nobody else will close its scratch connection
            raise
        return cls(members, guard)

    def statements(self, tp: TopicPartition, records: Records) -> list[Statement]:
        if not records:
            return []
        prepared = []
        for member in self.members:
            try:
                statements = member.statements(tp, records)
            except Exception as error:
                # Its batch is not committed; a restart would meet the same records again.
                raise ProcessorRaised(
                    f"processor {member.name} failed on {tp.topic}-{tp.partition} offsets"
                    f" {records[0].offset}-{records[-1].offset}: {error!r}; nothing of the"
                    " batch was committed (--on-processor-error fail)"
                ) from error
            prepared += self._checked(member, statements)
        return prepared

    def apart(
        self,
        tp: TopicPartition,
        records: Records,
        size: int,
        start: int = 0,
        stop: int | None = None,
    ) -> list[Piece]:
        """``records[start:stop]`` in pieces of ``size`` records, each with every processor's
        statements prepared for it alone (the state is the same: a processor's state is a
        function of its records, whatever the batches), for --on-processor-error dead-letter.
        A piece on which a processor raises is cut into single records; a single record on
        which one raises gets no statements, and the processor's name and the error instead."""
        stop = len(records) if stop is None else stop
        pieces = []
        for first in range(start, stop, size):
            pieces += self._piece(tp, records, first, min(first + size, stop))
        return pieces

    def _piece(self, tp: TopicPartition, records: Records, start: int, stop: int) -> list[Piece]:
        first = records[start]
        prepared: list[tuple[str, Sequence[Statement]]] = []
        for member in self.members:
            try:
                statements = member.statements(tp, records[start:stop])
            except Exception as error:
                if stop - start > 1:
                    return self.apart(tp, records, 1, start, stop)
                raised = Rejected(first.offset, member.name, describe(error))
                return [Piece(start, stop, first.offset, (), raised, *_stored(first))]
            prepared.append((member.name, self._checked(member, statements)))
        single = _stored(first) if stop - start == 1 else (None, None)
        return [Piece(start, stop, first.offset, prepared, None, *single)]

    def _checked(self, member: Processor, statements: Sequence[Statement]) -> list[Statement]:
        """``member``'s statements that have rows, checked by the guard, counters named."""
        prepared = []
        for statement in statements:
            if not statement.rows:
                continue
            if self._guard is not None:
                self._guard.check(
                    member.name,
                    statement.sql,
                    _first(statement),
                    "a statement",
                    statement.setup,
                )
            if statement.counter is not None:
                # Counters are named per processor: "windowed-counts:too_old".
                statement = replace(statement, counter=f"{member.name}:{statement.counter}")
            prepared.append(statement)
        return prepared

    def forget(self, tp: TopicPartition) -> list[Statement]:
        """What forgets a partition: each processor's state and its rejected records."""
        partition = [{"topic": tp.topic, "partition": tp.partition}]
        statements = [Statement(sql("delete_rejected_records"), partition)]
        return statements + [s for member in self.members for s in member.forget(tp)]

    def close(self) -> None:
        if self._guard is not None:
            self._guard.close()


def _stored(record: Record) -> tuple[StoredKey, StoredKey]:
    """A record's key and value as rejected_records keeps them."""
    return stored_key(record.key), stored_key(record.value)


def _first(statement: Statement) -> Parameters | None:
    """One row of parameters for the compiler to bind."""
    return statement.rows[0] if statement.rows else None
