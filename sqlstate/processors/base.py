"""The processor API: how a kind of state plugs into the batch transaction.

A processor only *prepares statements*. Given one partition's records of a batch, it returns the
statements that fold them into its tables; given a partition to forget (its position is being
reset, because Kafka no longer holds it), the statements that delete what was derived from it.
The store runs them inside the same transaction that moves the partition's position, so state
and position commit or roll back together. A processor never sees a connection, a position or an
epoch: fencing, positions and transactions are sqlstate's.

A processor also owns its tables: ``migrations`` creates them. sqlstate applies each migration
once, in its own transaction, and records it in ``schema_migrations`` as ``<name>/<migration>``,
so two processors never collide and ``sqlstate migrate --list`` shows them.

The contract that makes it exact:

- the statements depend only on the records given (no clock, no randomness, no reads of other
  systems, no memory of earlier batches), so replaying the same records after a crash, a reset
  or on another consumer produces the same rows;
- what is derived from a partition can be forgotten on its own: keep the partition in your rows
  (a view can sum across partitions), and ``forget`` deletes those rows;
- the statements write only the processor's own tables, never sqlstate's (``positions``,
  ``key_counts``, ``schema_migrations``, ...); sqlstate refuses a processor that does.

Under ``--changelog`` (state shipped to other hosts through Kafka, one row at a time) a processor
also says what identifies a row of each of its tables, with an optional attribute
``changelog_tables: Mapping[str, Sequence[str]]`` (table -> its key columns, in order), and,
when the table's unique index is over an expression such as ``ifnull(key, 0)``, with
``changelog_matches: Mapping[str, str]`` (table -> a SQL condition over ``?1 .. ?n``, the key's
values, that finds the row through that index). A processor without them is refused under
``--changelog``; ``--sql`` files need neither (their tables' PRIMARY KEYs say it). See
``sqlstate/changelog/tables.py``.

See README.md ("Your own state") for a worked example.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, Protocol, TypeAlias, runtime_checkable

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

# What a processor makes and brings belongs to the state layer, which runs and applies it: defined
# there, and part of this API too.
from sqlstate.state.migrate import Migration
from sqlstate.state.model import Parameters, Statement

__all__ = [
    "MIGRATION_NAME",
    "NAME",
    "Migration",
    "Parameters",
    "Processor",
    "Record",
    "Records",
    "Statement",
]

#: One record as a processor gets it: aiokafka's ``ConsumerRecord`` (``topic``, ``partition``,
#: ``offset``, ``timestamp`` in milliseconds since the epoch, ``key``, ``value``, ``headers``),
#: with ``key`` and ``value`` as ``--key-format`` and ``--value-format`` decode them: ``bytes``
#: (the default), ``str`` for ``text``, or the JSON text as ``str`` for ``json``. A null key or
#: value (a tombstone) is ``None`` in every format.
Record: TypeAlias = ConsumerRecord[Any, Any]
Records: TypeAlias = Sequence[Record]


class ParsedRecord(Protocol):
    """The part of a ``Record`` that the built-in processors read: its key, value, offset and
    timestamp. aiokafka's record parser makes objects with these and without ``topic`` or
    ``partition``; the daemon hands those to the built-ins as they are, without copying each
    into a ``ConsumerRecord`` (``sqlstate.kafka.client``). Typed so, a built-in that came to read
    another field of a record is refused by mypy, not by a running daemon; mypy does not read
    the name an ``attrgetter`` is given, so the built-ins read the key through ``record_key``.
    Not part of the public API: a processor of your own gets ``Record``s."""

    @property
    def key(self) -> Any: ...

    @property
    def value(self) -> Any: ...

    @property
    def offset(self) -> int: ...

    @property
    def timestamp(self) -> int: ...


ParsedRecords: TypeAlias = Sequence[ParsedRecord]
#: A record's key, read in C (a counting pass calls it for every record of a batch).
record_key: Callable[[ParsedRecord], Any] = attrgetter("key")

#: A processor's name: it prefixes its recorded migrations and labels its metrics.
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: A migration's name: ``NNNN_what`` (the order is the name's).
MIGRATION_NAME = re.compile(r"^\d{4}_[a-z0-9_]+$")


@runtime_checkable
class Processor(Protocol):
    """A kind of derived state kept in the database."""

    @property
    def name(self) -> str:
        """A short name, unique among the daemon's processors: lowercase letters, digits, ``_``
        and ``-`` (``NAME``). It namespaces the processor's recorded migrations, so keep it."""

    @property
    def migrations(self) -> Sequence[Migration]:
        """The processor's own schema, in order: its tables, indexes and views. Applied once
        each before the daemon joins its group; never edit one that was applied, add another."""

    def statements(self, tp: TopicPartition, records: Records) -> Sequence[Statement]:
        """The statements that fold ``records`` (one partition's share of a batch, in offset
        order, never empty) into this processor's tables."""

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        """The statements that delete everything derived from partition ``tp``."""
