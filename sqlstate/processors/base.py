"""The processor interface: how a kind of state plugs into the batch transaction.

A processor only *prepares statements*. Given one partition's records of a batch, it returns the
statements that fold them into its tables; given a partition to forget (its position is being
reset, because Kafka no longer holds it), the statements that delete what was derived from it.
The store runs them inside the same transaction that moves the partition's position, so state
and position commit or roll back together. A processor never sees a connection, a position or an
epoch: fencing, positions and transactions are the store's.

The contract that makes it exact: the statements depend only on the records given (no clock, no
randomness, no reads of other systems), so replaying the same records after a crash, a reset or
on another host produces the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

Records = Sequence[ConsumerRecord[bytes, bytes]]
Parameters = Sequence[Any] | Mapping[str, Any]


@dataclass(frozen=True)
class Statement:
    """One SQL statement and the rows of parameters to run it with (one ``executemany``)."""

    sql: str
    rows: Sequence[Parameters]


class Processor(Protocol):
    """A kind of derived state kept in the database."""

    @property
    def name(self) -> str:
        """A short name, unique among the daemon's processors (it prefixes their tables)."""

    def statements(self, tp: TopicPartition, records: Records) -> Sequence[Statement]:
        """The statements that fold ``records`` (one partition's share of a batch, in offset
        order, never empty) into this processor's tables."""

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        """The statements that delete everything derived from partition ``tp``."""


class Processors:
    """All processors of a daemon; their statements run in order in the same transaction."""

    def __init__(self, members: Sequence[Processor]) -> None:
        self.members = tuple(members)

    def statements(self, tp: TopicPartition, records: Records) -> list[Statement]:
        if not records:
            return []
        return [s for processor in self.members for s in processor.statements(tp, records)]

    def forget(self, tp: TopicPartition) -> list[Statement]:
        return [s for processor in self.members for s in processor.forget(tp)]
