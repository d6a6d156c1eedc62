"""The processor interface: how a kind of state plugs into the batch transaction.

A processor is handed, per partition, the records that the batch commits for it, and returns the
statements that update its tables with them; the store runs them inside the batch's transaction.
The loop, positions and fencing stay outside: whatever a processor writes commits or rolls back
together with the positions. Preparing statements rather than running them lets the store hand
the whole transaction to the database thread in one call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from sqlstate.store import Transaction, Write

Records = Sequence[ConsumerRecord[bytes, bytes]]


class Processor(Protocol):
    """A kind of derived state kept in the database."""

    name: str

    def writes(self, batch: Mapping[TopicPartition, Records]) -> Sequence[Write]:
        """The statements that update state with the batch's records. Must not touch the
        database itself: the store runs them in the batch's transaction."""

    async def discard(self, tx: Transaction, tp: TopicPartition) -> None:
        """Forget everything derived from one partition (its position is being reset)."""


class Processors:
    """All processors of a daemon, their statements run in order inside the same transaction."""

    def __init__(self, members: Sequence[Processor]) -> None:
        self.members = tuple(members)

    def writes(self, batch: Mapping[TopicPartition, Records]) -> list[Write]:
        return [write for processor in self.members for write in processor.writes(batch)]

    async def discard(self, tx: Transaction, tp: TopicPartition) -> None:
        for processor in self.members:
            await processor.discard(tx, tp)
