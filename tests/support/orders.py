"""Order events for the processors' fault tests: JSON orders keyed by customer, with what real
topics also hold: tombstones, values that are JSON but not orders, values that are not JSON at
all, odd keys, and record times that run late, some by more than the retention."""

from __future__ import annotations

import asyncio
import json
import random
import time

from aiokafka import AIOKafkaProducer

HOUR_MS = 3_600_000
# Record times start a day before this run, on the hour, and move half a second per record:
# well inside the broker's retention (7 days) on any date, and never in the future, which a
# broker may refuse. A fixed date would be deleted mid-test a week after it was written.
START_MS = (time.time_ns() // 1_000_000 // HOUR_MS - 24) * HOUR_MS
LATE_MS = 12 * 60_000  # late records are this far behind: more than the tests' retention
WINDOW = "1m"
RETENTION = "10m"
WINDOW_MS, RETENTION_MS = 60_000, 600_000
CUSTOMERS: list[bytes | None] = [*(f"c-{n:02d}".encode() for n in range(12)), None, b"\xff\xfe"]


def order_value(rng: random.Random, customer: bytes | None) -> bytes | None:
    """Mostly an order; sometimes a tombstone, JSON that is no order, or no JSON at all."""
    roll = rng.random()
    if roll < 0.03 and customer is not None:  # a record needs a key or a value
        return None
    if roll < 0.06:
        return b'{"customer": "c-01", "amount_cents": 1' if roll < 0.045 else b"NaN"
    if roll < 0.08:
        return json.dumps([1, 2]).encode()
    name = customer.decode("utf-8", "replace") if customer is not None else "nobody"
    return json.dumps({"customer": name, "amount_cents": rng.randrange(1, 5_000)}).encode()


async def produce_orders(
    bootstrap: str,
    topic: str,
    count: int,
    partitions: int,
    seed: int = 0,
    first: int = 0,
    rate: float = 0.0,
) -> None:
    """``count`` records spread over the partitions; record ``first + i`` has time
    ``START_MS + 500 ms * (first + i)``, or 12 minutes less for about one in twenty."""
    rng = random.Random(seed)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        chunk = max(1, int(rate / 20)) if rate else count
        for begin in range(0, count, chunk):
            sends = []
            for i in range(begin, min(begin + chunk, count)):
                customer = rng.choice(CUSTOMERS)
                timestamp = START_MS + 500 * (first + i)
                if rng.random() < 0.05:
                    timestamp -= LATE_MS
                sends.append(
                    await producer.send(
                        topic,
                        order_value(rng, customer),
                        key=customer,
                        partition=i % partitions,
                        timestamp_ms=timestamp,
                    )
                )
            await asyncio.gather(*sends)
            if rate:
                await asyncio.sleep(0.05)
    finally:
        await producer.stop()
