"""Nothing stops silently, and a stop is prompt, under ``--changelog`` (docs/scaling.md).

- SIGTERM while a fresh host restores a long changelog: it exits 0 within 2 s, keeping every
  transaction it restored, and its next start restores from there;
- a claim whose changelog producer cannot start (the broker paused: InitProducerId gets no
  answer) is reported (the log, ``/healthz``), and once the broker is back every partition is
  owned or followed again and every file catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from sqlstate.changelog.topics import changelog_topic
from tests.support.broker import AsyncBrokerControl
from tests.support.daemon import Daemon, wait_for_positions
from tests.support.db import query
from tests.support.faults import produce, wait_for_log
from tests.support.hosts import converged, host, logs
from tests.support.kafka import TopicFactory, delete_topics
from tests.support.workload import end_offsets, produce_keyed

# Enough distinct keys that restoring their changelog takes several transactions of 20,000 records.
KEYS = 150_000
STOP_WITHIN_S = 2.0

MakeTopic = Callable[[int], Awaitable[str]]


@pytest.fixture
async def input_topic(
    kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> AsyncIterator[MakeTopic]:
    """The topic factory, whose topics' changelogs are deleted after the test too."""
    topics: list[str] = []

    async def make(partitions: int = 1) -> str:
        topics.append(await topic_factory(partitions))
        return topics[-1]

    yield make
    with contextlib.suppress(Exception):
        await delete_topics(kafka_bootstrap, [changelog_topic(group_id, t) for t in topics])


def changelog_offset(database: Path, topic: str) -> int:
    rows = query(
        database,
        "SELECT next_offset FROM changelog_offsets WHERE topic = ? AND partition = 0",
        (topic,),
    )
    return int(rows[0][0]) if rows else 0


async def test_sigterm_during_a_long_restore_stops_at_once_and_resumes(
    tmp_path: Path,
    kafka_bootstrap: str,
    input_topic: MakeTopic,
    group_id: str,
    daemons: list[Daemon],
) -> None:
    topic = await input_topic(1)
    await produce_keyed(kafka_bootstrap, topic, [(0, f"key-{i}".encode()) for i in range(KEYS)])
    # The first host counts them all: its changelog holds one row per key.
    first = host(kafka_bootstrap, topic, group_id, tmp_path, 0, "--max-records", "20000")
    daemons.append(first.start())
    await wait_for_positions(first.database, {(topic, 0): KEYS}, 180, [first])
    assert await first.terminate() == 0

    # Without a standby, only the restore writes its file: its start is exactly where it was.
    fresh = host(kafka_bootstrap, topic, group_id, tmp_path, 1, "--standby", "none")
    daemons.append(fresh.start())
    await fresh.wait_for_log(f"restoring {topic}-0: at changelog offset", timeout=60)
    asked = time.monotonic()
    fresh.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert await fresh.wait(30) == 0, fresh.log()[-3000:]
    took = time.monotonic() - asked
    assert f"restored {topic}-0 from its changelog" not in fresh.current_log()
    assert took < STOP_WITHIN_S, f"stopped in {took:.2f}s:\n{fresh.log()[-3000:]}"
    kept = changelog_offset(fresh.database, topic)
    assert kept > 0

    # Started again, it restores from where it stopped, then counts on.
    fresh.start()
    await fresh.wait_for_log(f"restoring {topic}-0 from its changelog", timeout=60)
    started_at = re.findall(
        rf"restoring {re.escape(topic)}-0 from its changelog, offsets (\d+)", fresh.current_log()
    )
    assert [int(offset) for offset in started_at] == [kept]
    await produce(kafka_bootstrap, topic, 100, partitions=1, seed=5)
    await converged(kafka_bootstrap, topic, [fresh], timeout=180)
    assert await fresh.terminate() == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def healthz(port: int) -> tuple[int, str]:
    """``/healthz``: the status and the body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@contextlib.contextmanager
def paused(broker: AsyncBrokerControl) -> Iterator[None]:
    broker.pause()
    try:
        yield
    finally:
        broker.resume()


async def test_a_claim_whose_producer_cannot_start_is_reported_then_kept(
    tmp_path: Path,
    kafka_bootstrap: str,
    input_topic: MakeTopic,
    group_id: str,
    daemons: list[Daemon],
    broker_control: AsyncBrokerControl,
) -> None:
    topic = await input_topic(2)
    await produce(kafka_bootstrap, topic, 400, partitions=2, seed=1)
    first = host(kafka_bootstrap, topic, group_id, tmp_path, 0)
    daemons.append(first.start())
    await wait_for_positions(first.database, await end_offsets(kafka_bootstrap, topic), 60, [first])

    # The second host stops itself as its first claim is about to start the changelog
    # producer, its standby already paused for the claim; it goes on with the broker paused.
    port = free_port()
    second = host(
        kafka_bootstrap,
        topic,
        group_id,
        tmp_path,
        1,
        "--metrics-port",
        str(port),
        fault="changelog_producer_start",
        action="stop",
    )
    daemons.append(second.start())
    hosts = [first, second]
    await wait_for_log(second, "FAULT changelog_producer_start", timeout=60)
    with paused(broker_control):
        second.resume()
        # InitProducerId gets no answer: the claim fails (after the start timeout) and the
        # partition is neither claimed nor followed. That is reported, not silent.
        await wait_for_log(second, "neither owned nor followed", timeout=90)
        status, body = await asyncio.to_thread(healthz, port)
        assert status == 503, body
        assert '"neither"' in body, body
    # With the broker back, every partition is owned or followed again, and both files catch
    # up with what comes next.
    await produce(kafka_bootstrap, topic, 200, partitions=2, seed=2)
    await converged(kafka_bootstrap, topic, hosts, timeout=180)
    await wait_for_log(second, "every partition is owned or followed again", timeout=30)
    status, body = await asyncio.to_thread(healthz, port)
    assert status == 200, body
    assert [await h.terminate() for h in hosts] == [0, 0], logs(hosts)
