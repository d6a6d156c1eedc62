"""``make demo``: a newcomer's first run, end to end, against the broker at KAFKA_BOOTSTRAP.

Creates topic ``test`` (3 partitions) if it is missing, produces a few thousand keyed messages,
runs ``sqlstate run`` until every stored position reaches the log end, prints the top counts with
the ``sqlite3`` command-line tool, and stops the daemon with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

QUERY = "SELECT key, count FROM counts WHERE topic = 'test' ORDER BY count DESC, key LIMIT 10;"


async def prepare(bootstrap: str, topic: str, messages: int) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
            print(f"created topic {topic} with 3 partitions")
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10)
    await producer.start()
    try:
        rng = random.Random()
        # A skewed choice of 50 users, so the top of the table is interesting.
        users = [f"user-{n}" for n in range(50)]
        weights = [1 / (rank + 1) for rank in range(len(users))]
        futures = [
            await producer.send(topic, b"clicked", key=rng.choices(users, weights)[0].encode())
            for _ in range(messages)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    print(f"produced {messages} keyed messages to {topic}")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer.topics()  # a consumer without subscription knows no partitions until asked
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


def caught_up(database: Path, topic: str, ends: dict[int, int]) -> bool:
    if not database.exists():
        return False
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
            rows = dict(
                conn.execute(
                    "SELECT partition, next_offset FROM positions WHERE topic = ?", (topic,)
                ).fetchall()
            )
    except sqlite3.OperationalError:
        return False
    return all(rows.get(partition, -1) >= end for partition, end in ends.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--database", type=Path, default=Path("demo.db"))
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()
    topic = "test"
    ends = asyncio.run(prepare(args.bootstrap, topic, args.messages))
    command = [
        sys.executable,
        "-m",
        "sqlstate",
        "run",
        "--bootstrap-servers",
        args.bootstrap,
        "--topic",
        topic,
        "--group-id",
        "sqlstate-demo",
        "--database",
        str(args.database),
    ]
    print("$", " ".join(["sqlstate", *command[3:]]))
    daemon = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + 60
        while not caught_up(args.database, topic, ends):
            if daemon.poll() is not None or time.monotonic() > deadline:
                print("the daemon did not catch up", file=sys.stderr)
                return 1
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    sqlite3_cli = shutil.which("sqlite3")
    print(f'\n$ sqlite3 -header -column {args.database} "{QUERY}"')
    if sqlite3_cli is None:
        print("(the sqlite3 command-line tool is not installed; apt-get install sqlite3)")
        return 1
    return subprocess.call([sqlite3_cli, "-header", "-column", str(args.database), QUERY])


if __name__ == "__main__":
    sys.exit(main())
