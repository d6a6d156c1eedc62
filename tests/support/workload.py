"""Keyed test traffic with its expected counts, and the database read back the way users read it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from aiokafka import AIOKafkaProducer

from sqlstate.processors.keys import stored_key
from tests.support.db import query
from tests.support.kafka import log_end_offsets

logger = logging.getLogger(__name__)

StoredKey = str | bytes | None
# Keys that are easy to get wrong: none, empty, not UTF-8, UTF-8 beyond ASCII, very large.
ODD_KEYS: tuple[bytes | None, ...] = (
    None,
    b"",
    b"\xff\xfe\x00",
    "ключ-🔑".encode(),
    b"x" * 100_000,
)


# SteadyTraffic's default keys: the odd ones (a 10 kB key rather than 100 kB: it goes by
# hundreds a minute) and 500 ordinary ones.
STEADY_KEYS: tuple[bytes | None, ...] = (
    *(key for key in ODD_KEYS if key is None or len(key) < 1000),
    b"x" * 10_000,
    *(f"user-{i}".encode() for i in range(500)),
)


def keyed_messages(
    count: int, partitions: int, keys: int = 300, seed: int = 1, odd: bool = True
) -> list[tuple[int, bytes | None]]:
    """``count`` (partition, key) pairs over ``keys`` ordinary keys and the odd keys."""
    rng = random.Random(seed)
    messages: list[tuple[int, bytes | None]] = []
    pool: list[bytes | None] = [f"user-{i}".encode() for i in range(keys)]
    if odd:
        pool += list(ODD_KEYS)
    for _ in range(count):
        key = rng.choice(pool)
        messages.append((rng.randrange(partitions), key))
    return messages


def expected(messages: Sequence[tuple[int, bytes | None]]) -> Counter[tuple[int, StoredKey]]:
    """{(partition, key as stored): count} for what was produced."""
    return Counter((partition, stored_key(key)) for partition, key in messages)


async def produce_keyed(
    bootstrap: str, topic: str, messages: Sequence[tuple[int, bytes | None]], rate: float = 0.0
) -> None:
    """Produce to explicit partitions; with ``rate`` > 0, about that many messages per second."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_request_size=2_000_000, acks="all"
    )
    await producer.start()
    try:
        chunk = max(1, int(rate / 20)) if rate else 1000
        for start in range(0, len(messages), chunk):
            futures = [
                await producer.send(topic, b"v", key=key, partition=partition)
                for partition, key in messages[start : start + chunk]
            ]
            await asyncio.gather(*futures)
            if rate:
                await asyncio.sleep(0.05)
    finally:
        await producer.stop()


def db_counts(database: Path, topic: str) -> Counter[tuple[int, StoredKey]]:
    """{(partition, key): count} from the key_counts table, read-only."""
    rows = query(database, "SELECT partition, key, count FROM key_counts WHERE topic = ?", (topic,))
    return Counter({(partition, key): count for partition, key, count in rows})


def db_totals(database: Path, topic: str) -> Counter[StoredKey]:
    """{key: total} from the counts view, read-only."""
    return Counter(dict(query(database, "SELECT key, count FROM counts WHERE topic = ?", (topic,))))


async def end_offsets(
    bootstrap: str, topic: str, isolation_level: str = "read_committed"
) -> dict[tuple[str, int], int]:
    """{(topic, partition): end offset}: where a caught-up daemon's positions must stand."""
    ends = await log_end_offsets(bootstrap, topic, isolation_level=isolation_level)
    assert ends, f"topic {topic} has no partitions"
    return {(topic, partition): offset for partition, offset in ends.items()}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def database_digests(database: Path) -> dict[str, str]:
    """sha256 of the database file and of its -wal: what "left byte for byte as it was" compares.

    An empty -wal is left out: SQLite may create one beside a WAL-mode file it merely reads, and
    it holds nothing. A read-write connection's last close copies the WAL into the main file and
    deletes it, which this tells apart.
    """
    wal = Path(f"{database}-wal")
    files = [database] + ([wal] if wal.exists() and wal.stat().st_size else [])
    return {path.name: file_digest(path) for path in files}


class SteadyTraffic:
    """About ``rate`` keyed records a second to random partitions of ``topic``, until stopped.

    Rides out a broker that is killed and restarted meanwhile: a send that fails is counted in
    ``send_failures`` (it may or may not be in the log; the oracle reads what is), and the
    producer starts over. ``produced`` counts the acknowledged records.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partitions: int,
        rate: float,
        keys: Sequence[bytes | None] = STEADY_KEYS,
        seed: float | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.rate = rate
        self.keys = keys
        self.rng = random.Random(seed)
        self.produced = 0
        self.send_failures = 0
        self.stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SteadyTraffic]:
        """Produce in the background for the block; stopped (and its producer closed) at exit."""
        self.stop.clear()
        task = asyncio.create_task(self.run())
        try:
            yield self
        finally:
            self.stop.set()
            await asyncio.wait_for(task, 60)

    async def wait_for_more(self, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` more records than now are acknowledged (e.g. after a broker
        restart: the traffic flows again)."""
        target = self.produced + count
        deadline = time.monotonic() + timeout
        while self.produced < target:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"steady traffic: {self.produced} records acknowledged, not {target},"
                    f" in {timeout}s ({self.send_failures} sends failed)"
                )
            await asyncio.sleep(0.1)

    async def run(self) -> None:
        """Produce in 20 chunks a second until ``stop`` is set."""
        chunk = max(1, round(self.rate / 20))
        while not self.stop.is_set():
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                request_timeout_ms=15_000,
            )
            try:
                await producer.start()
                while not self.stop.is_set():
                    started = time.monotonic()
                    futures = [
                        await producer.send(
                            self.topic,
                            b"v",
                            key=self.rng.choice(self.keys),
                            partition=self.rng.randrange(self.partitions),
                        )
                        for _ in range(chunk)
                    ]
                    results = await asyncio.gather(*futures, return_exceptions=True)
                    failed = sum(isinstance(r, BaseException) for r in results)
                    self.produced += len(results) - failed
                    self.send_failures += failed
                    if failed:
                        break  # start over with a fresh producer
                    await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - started)))
            except Exception as error:  # the broker is down: wait and start over
                logger.info("steady traffic: %r", error)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), 20)
            if not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 1)
