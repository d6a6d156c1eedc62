"""What the read-only commands (``counts``, ``offsets``, ``migrate --list``) look up.

Each opens the database read-only (``migrate`` excepted), so they are safe beside a running daemon.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from sqlstate.errors import AuthenticationError, BrokerError
from sqlstate.kafka.client import build_offsets_consumer, refusal, worth_asking_why
from sqlstate.settings import Security, default
from sqlstate.state import migrate
from sqlstate.state.database import Database
from sqlstate.state.model import Position
from sqlstate.state.store import Store

# These commands have no flags for them: they wait as long as ``run`` does by default.
BUSY_TIMEOUT_S: float = default("busy_timeout_s")
CONNECT_TIMEOUT_S: float = default("connect_timeout_s")


@dataclass(frozen=True)
class KeyCount:
    topic: str
    key: str | bytes | None
    count: int


@dataclass(frozen=True)
class PositionReport:
    position: Position
    end_offset: int | None  # from Kafka, when asked for

    @property
    def lag(self) -> int | None:
        if self.end_offset is None:
            return None
        return max(self.end_offset - self.position.next_offset, 0)


async def _open_read_only(path: Path) -> Store:
    return Store(
        await Database.open(
            path, busy_timeout_s=BUSY_TIMEOUT_S, read_only=True, check_integrity=False
        )
    )


async def top_counts(
    database: Path, topic: str | None, limit: int
) -> tuple[list[KeyCount], list[Position]]:
    """The highest totals, and the positions they were read at (the same snapshot)."""
    store = await _open_read_only(database)
    try:
        rows, read_at = await store.top_counts(topic, limit)
    finally:
        await store.database.close()
    return [KeyCount(*row) for row in rows], read_at


async def positions(
    database: Path,
    bootstrap_servers: str | None,
    isolation_level: str,
    security: Security | None = None,
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> list[PositionReport]:
    """Stored positions; with ``bootstrap_servers`` also the end offsets (connecting per
    ``security``, PLAINTEXT by default)."""
    # Bad security flags are an error even when there is nothing to look up yet.
    security = (security or Security()).validated() if bootstrap_servers else security
    store = await _open_read_only(database)
    try:
        stored = await store.positions()
    finally:
        await store.database.close()
    ends: dict[TopicPartition, int] = {}
    if bootstrap_servers and stored:
        ends = await _end_offsets(
            bootstrap_servers,
            [TopicPartition(p.topic, p.partition) for p in stored],
            isolation_level,
            security or Security(),
            timeout_s,
        )
    return [PositionReport(p, ends.get(TopicPartition(p.topic, p.partition))) for p in stored]


async def _end_offsets(
    bootstrap_servers: str,
    tps: list[TopicPartition],
    isolation_level: str,
    security: Security,
    timeout_s: float,
) -> dict[TopicPartition, int]:
    consumer = build_offsets_consumer(bootstrap_servers, isolation_level, security)
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        # A broker that refused an OAUTHBEARER token answers no metadata: start() does not
        # notice, and end_offsets() would wait for it until the timeout. topics() fails at once.
        await asyncio.wait_for(consumer.topics(), timeout_s)
        ends: dict[TopicPartition, int] = await asyncio.wait_for(
            consumer.end_offsets(tps), timeout_s
        )
        return ends
    except (TimeoutError, KafkaError, OSError) as error:
        # As in the daemon: aiokafka reports a refused login like an unreachable broker.
        refused = None
        if worth_asking_why(error, security):
            refused = await refusal(bootstrap_servers, security, timeout_s)
        if refused:
            raise AuthenticationError(refused) from error
        raise BrokerError(f"cannot read end offsets from {bootstrap_servers}: {error!r}") from error
    finally:
        await consumer.stop()


async def migrations(database: Path, apply: bool) -> tuple[list[str], list[Any]]:
    """Apply pending migrations (unless only listing); return (applied now, status of each)."""
    db = await Database.open(database, busy_timeout_s=BUSY_TIMEOUT_S, read_only=not apply)
    try:
        applied = await migrate.apply_pending(db) if apply else []
        return applied, await migrate.list_status(db)
    finally:
        await db.close()
