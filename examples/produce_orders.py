"""Produce JSON order events for the README's examples (``make broker-up`` first).

    .venv/bin/python -m examples.produce_orders --topic orders --orders 1000

Creates the topic (3 partitions) if it is not there, then sends orders such as
``{"customer": "c-07", "amount_cents": 1250}`` keyed by customer, and, with ``--bad N``, N values
that are not JSON. Prints the total it sent, to compare with what sqlstate keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, orders: int, bad: int, seed: int) -> int:
    """Send the orders; return their total amount in cents."""
    rng = random.Random(seed)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    total = 0
    try:
        sends = []
        for _ in range(orders):
            customer = f"c-{rng.randrange(20):02d}"
            amount = rng.randrange(100, 10_000)
            total += amount
            value = json.dumps({"customer": customer, "amount_cents": amount}).encode()
            sends.append(await producer.send(topic, value, key=customer.encode()))
        for number in range(bad):
            sends.append(await producer.send(topic, b"not JSON %d" % number, key=b"c-00"))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--bad", type=int, default=0, help="values that are not JSON")
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    asyncio.run(create_topic(options.bootstrap_servers, options.topic))
    total = asyncio.run(
        produce(options.bootstrap_servers, options.topic, options.orders, options.bad, options.seed)
    )
    print(
        f"sent {options.orders} orders, {total} cents in all, and {options.bad} values that are"
        f" not JSON, to {options.topic}"
    )


if __name__ == "__main__":
    main()
