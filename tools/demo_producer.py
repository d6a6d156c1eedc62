"""The demo's producer: creates the topic if it is missing, then sends keyed clicks forever.

Run by the ``producer`` service of the ``demo`` compose profile with the sqlstate image's Python
(which has aiokafka). Settings from the environment: KAFKA_BOOTSTRAP, DEMO_TOPIC, DEMO_RATE
(messages per second, default 200).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

logger = logging.getLogger("demo-producer")


async def create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    while True:  # the broker may still be starting
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            logger.info("waiting for Kafka at %s", bootstrap)
            await asyncio.sleep(2)
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        logger.info("created topic %s with 3 partitions", topic)
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, rate: float) -> None:
    # A skewed choice of 50 users, so that the top of the counts is interesting.
    users = [f"user-{n}".encode() for n in range(50)]
    weights = [1 / (rank + 1) for rank in range(len(users))]
    rng = random.Random()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        sent = 0
        while True:
            tick = max(1, round(rate / 10))
            for _ in range(tick):
                await producer.send(topic, b"clicked", key=rng.choices(users, weights)[0])
            sent += tick
            if sent % (tick * 100) == 0:
                logger.info("sent %d messages to %s", sent, topic)
            await asyncio.sleep(0.1)
    finally:
        await producer.stop()


async def main() -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "kafka:9092")
    topic = os.environ.get("DEMO_TOPIC", "clicks")
    await create_topic(bootstrap, topic)
    await produce(bootstrap, topic, float(os.environ.get("DEMO_RATE", "200")))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(main())
