"""A group member that only joins: its arrival makes the group rebalance, and nothing more.

Run (c) uses it to start two ``sqlstate run`` processes on the backlog at the same moment.
Started together on a broker without ``group.initial.rebalance.delay.ms`` (the test broker sets
it to 0), the first process to join would get every partition and consume much of the backlog
alone before the second one's arrival reaches it with a heartbeat (up to one interval). So the
bench lets both join while their stored positions hold them at the log end, then moves the
positions back to the start and sends this member in: the rebalance makes both processes claim
their partitions again, reading the positions from the database, and both start consuming
together.

It subscribes to a topic of its own, so the round-robin assignor gives it none of the measured
topic's partitions. It prints ``joined`` once it has its assignment and stays until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys

from aiokafka import AIOKafkaConsumer


async def join(bootstrap: str, topic: str, group_id: str) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id="sqlstate-bench-joiner",
        enable_auto_commit=False,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await consumer.start()
    try:
        # getmany() drives the group membership; its own topic is empty, so it fetches nothing.
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=50)
        print("joined", flush=True)
        while not stop.is_set():
            await consumer.getmany(timeout_ms=200)
    finally:
        await consumer.stop()


def start(bootstrap: str, topic: str, group_id: str) -> subprocess.Popen[str]:
    """Start a member that joins ``group_id`` through its own ``topic``; return once it is in.
    Stop it with ``terminate()``."""
    member = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.joiner",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--group-id",
            group_id,
        ],
        # Its client logs every rebalance it causes as a warning: not news here.
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert member.stdout is not None
    if member.stdout.readline().strip() != "joined":
        member.kill()
        raise RuntimeError("the joining group member failed to join")
    return member


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group-id", required=True)
    args = parser.parse_args()
    asyncio.run(join(args.bootstrap, args.topic, args.group_id))
    sys.exit(0)


if __name__ == "__main__":
    main()
