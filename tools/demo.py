"""``make demo``: a newcomer's first run, end to end, against the broker at KAFKA_BOOTSTRAP.

Creates the topic (``test`` unless ``--topic``; 3 partitions) if it is missing, produces a few
thousand keyed messages, runs ``sqlstate run`` on a new database until every partition of the
topic is stored at the log end read before it started, prints the top counts with the
``sqlite3`` command-line tool, and stops the daemon with SIGTERM.

The database is the demo's own: it is rebuilt from the topic on every run, so the table always
counts what the topic holds, also after a fresh broker recreated the topic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

# Topic names are letters, digits, '.', '_' and '-' only, so one can sit in a quoted literal.
TOP_KEYS = (
    "SELECT key, count FROM counts WHERE topic = '{topic}' ORDER BY count DESC, key LIMIT 10;"
)
CATCH_UP_TIMEOUT_S = 60.0


async def prepare(bootstrap: str, topic: str, messages: int) -> dict[int, int]:
    """Create ``topic`` if needed and produce ``messages``; the end offset of each of its
    partitions once they are written."""
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
        # Every partition of the topic, from the metadata the producer needed to send: a
        # consumer asked right after the topic was created may not know them yet.
        partitions = sorted(await producer.partitions_for(topic))
    finally:
        await producer.stop()
    print(f"produced {messages} keyed messages to {topic}")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


def stored_positions(database: Path, topic: str) -> dict[int, int]:
    """Each partition's committed next offset; {} until the daemon has created the table."""
    try:
        with contextlib.closing(
            sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
        ) as conn:
            return dict(
                conn.execute(
                    "SELECT partition, next_offset FROM positions WHERE topic = ?", (topic,)
                ).fetchall()
            )
    except sqlite3.OperationalError:  # no file, or not migrated yet
        return {}


def caught_up(stored: dict[int, int], ends: dict[int, int]) -> bool:
    """Whether every partition of the topic is stored at or past its end; never with no ends,
    which would say nothing about the topic."""
    return bool(ends) and all(stored.get(partition, -1) >= end for partition, end in ends.items())


def remove_database(database: Path) -> None:
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        path.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument(
        "--database", type=Path, default=Path("demo.db"), help="rebuilt on every run"
    )
    parser.add_argument("--topic", default="test")
    parser.add_argument("--group-id", default="sqlstate-demo")
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()
    ends = asyncio.run(prepare(args.bootstrap, args.topic, args.messages))
    remove_database(args.database)
    command = [
        sys.executable,
        "-m",
        "sqlstate",
        "run",
        "--bootstrap-servers",
        args.bootstrap,
        "--topic",
        args.topic,
        "--group-id",
        args.group_id,
        "--database",
        str(args.database),
    ]
    print("$", " ".join(["sqlstate", *command[3:]]), flush=True)
    daemon = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while not caught_up(stored_positions(args.database, args.topic), ends):
            if daemon.poll() is not None or time.monotonic() > deadline:
                print(
                    f"the daemon did not catch up with {ends} (stored:"
                    f" {stored_positions(args.database, args.topic)})",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    query = TOP_KEYS.format(topic=args.topic)
    sqlite3_cli = shutil.which("sqlite3")
    print(f'\n$ sqlite3 -header -column {args.database} "{query}"', flush=True)
    if sqlite3_cli is None:
        print("(the sqlite3 command-line tool is not installed; apt-get install sqlite3)")
        return 1
    return subprocess.call([sqlite3_cli, "-header", "-column", str(args.database), query])


if __name__ == "__main__":
    sys.exit(main())
