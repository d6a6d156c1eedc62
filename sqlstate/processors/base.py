"""The processor interface: how a kind of state plugs into the batch transaction.

A processor is handed the open transaction and, per partition, the records that the batch commits
for it; it updates its tables with them. The loop, positions and fencing stay outside: whatever a
processor writes commits or rolls back together with the positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from sqlstate.store import Transaction

Records = Sequence[ConsumerRecord[bytes, bytes]]


class Processor(Protocol):
    """A kind of derived state kept in the database."""

    name: str

    async def apply(self, tx: Transaction, batch: Mapping[TopicPartition, Records]) -> None:
        """Update state with the batch's records, inside ``tx``. Must not commit."""

    async def discard(self, tx: Transaction, tp: TopicPartition) -> None:
        """Forget everything derived from one partition (its position is being reset)."""


class Processors:
    """All processors of a daemon, applied in order inside the same transaction."""

    def __init__(self, members: Sequence[Processor]) -> None:
        self.members = tuple(members)

    async def apply(self, tx: Transaction, batch: Mapping[TopicPartition, Records]) -> None:
        for processor in self.members:
            await processor.apply(tx, batch)

    async def discard(self, tx: Transaction, tp: TopicPartition) -> None:
        for processor in self.members:
            await processor.discard(tx, tp)
