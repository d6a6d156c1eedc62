"""Running sqlstate like production software: metrics, /healthz, progress lines, lag in SQL, logs.

Each test runs ``sqlstate run`` as a subprocess against the real broker, with ``--metrics-port 0``
so that parallel runs never fight over a port: the daemon logs the address it bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import grafana
from tests.support.broker import AsyncBrokerControl
from tests.support.daemon import Daemon, stored_positions, wait_for_positions
from tests.support.db import connect_read_only, query
from tests.support.faults import wait_stopped
from tests.support.kafka import TopicFactory
from tests.support.workload import db_counts, end_offsets, expected, keyed_messages, produce_keyed

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
OBSERVED = ("--metrics-port", "0")
SERVING = re.compile(r"serving (http://[0-9.]+:\d+)/metrics")


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, daemon: Daemon
) -> Any:
    """Poll ``check`` until it returns something true; fail with the daemon's log after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n{daemon.log()[-4000:]}")
        await asyncio.sleep(0.2)


async def endpoint(daemon: Daemon, timeout: float = 30) -> str:
    """The daemon's ``http://host:port``, from its log line."""

    async def bound() -> str | None:
        match = SERVING.search(daemon.log())
        return match.group(1) if match else None

    url: str = await eventually(bound, timeout, "the metrics endpoint to be served", daemon)
    return url


async def observed_daemon(
    kafka_bootstrap: str,
    topic: str,
    group_id: str,
    database: Path,
    daemons: list[Daemon],
    *extra_args: str,
) -> tuple[Daemon, str]:
    """A daemon serving /metrics and /healthz, started and healthy; and its base URL."""
    daemon = Daemon(kafka_bootstrap, [topic], group_id, database, *OBSERVED, *extra_args).start()
    daemons.append(daemon)
    base = await endpoint(daemon)
    await wait_health(base, daemon, healthy=True, timeout=30, reason="caught up")
    return daemon, base


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def scrape(base: str) -> Samples:
    status, body = await asyncio.to_thread(_get, f"{base}/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


async def health(base: str) -> tuple[int, dict[str, Any]]:
    status, body = await asyncio.to_thread(_get, f"{base}/healthz")
    answer: dict[str, Any] = json.loads(body)
    return status, answer


async def wait_health(
    base: str, daemon: Daemon, healthy: bool, timeout: float, reason: str = ""
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status, answer = await health(base)
        assert (status == 200) == answer["healthy"]
        return answer if answer["healthy"] == healthy and reason in answer["reason"] else None

    wanted = f"/healthz {'healthy' if healthy else 'unhealthy'} {reason!r}"
    answer: dict[str, Any] = await eventually(check, timeout, wanted, daemon)
    return answer


def lags(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["partition"]: value
        for (name, labels), value in samples.items()
        if name == "sqlstate_partition_lag"
    }


async def test_metrics_move_and_lag_falls_to_zero(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    daemon, base = await observed_daemon(
        kafka_bootstrap, topic, group_id, database, daemons, "--max-records", "200"
    )

    messages = keyed_messages(12_000, partitions=3, odd=False)
    producing = asyncio.create_task(produce_keyed(kafka_bootstrap, topic, messages, rate=4000))
    consumed: list[float] = []
    while not producing.done():
        consumed.append((await scrape(base))[("sqlstate_records_consumed_total", ())])
        await asyncio.sleep(0.2)
    await producing
    ends = await end_offsets(kafka_bootstrap, topic)

    async def caught_up() -> Samples | None:
        samples = await scrape(base)
        done = samples[("sqlstate_records_consumed_total", ())] == len(messages)
        return samples if done and lags(samples) == {"0": 0, "1": 0, "2": 0} else None

    samples = await eventually(caught_up, 60, "all records counted and lag 0", daemon)
    assert len(set(consumed)) >= 3, f"the records counter did not move while scraped: {consumed}"
    assert consumed == sorted(consumed)
    batches = samples[("sqlstate_batches_committed_total", ())]
    assert batches >= len(messages) / 200
    assert samples[("sqlstate_commit_duration_seconds_count", ())] == batches
    assert samples[("sqlstate_rebalances_total", ())] >= 1
    assert samples[("sqlstate_fenced_batches_total", ())] == 0
    assert samples[("sqlstate_assigned_partitions", ())] == 3
    assert samples[("sqlstate_in_group", ())] == 1
    assert samples[("sqlstate_healthy", ())] == 1
    assert {
        (topic, int(dict(labels)["partition"])): value
        for (name, labels), value in samples.items()
        if name == "sqlstate_partition_next_offset"
    } == ends
    assert await daemon.terminate() == 0
    assert db_counts(database, topic) == expected(messages)


async def test_stalled_positions_turn_healthz_unhealthy_and_progress_is_logged(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """Another connection holds the database's write lock: lag stands still, then moves."""
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    daemon, base = await observed_daemon(
        kafka_bootstrap,
        topic,
        group_id,
        database,
        daemons,
        "--stall-timeout",
        "3",
        "--progress-interval",
        "1",
        "--busy-timeout",
        "0.5",
    )

    messages = keyed_messages(3_000, partitions=3, odd=False)
    blocker = sqlite3.connect(database, isolation_level=None, timeout=10)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        await produce_keyed(kafka_bootstrap, topic, messages)
        answer = await wait_health(base, daemon, healthy=False, timeout=30, reason="not moved")
        assert answer["in_group"] is True
        # Lag as the consumer last saw it: aiokafka does not fetch a partition again while
        # records of it wait in its buffer, so the log end can be older than the last record.
        assert 0 < answer["lag"] <= len(messages)
        samples = await scrape(base)
        assert samples[("sqlstate_database_busy_retries_total", ())] > 0
        assert sum(lags(samples).values()) >= answer["lag"]  # only grows while blocked
        assert samples[("sqlstate_healthy", ())] == 0

        async def progress_logged() -> bool:
            return "lag not falling" in daemon.log()

        await eventually(progress_logged, 10, "a progress line while stalled", daemon)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    await wait_health(base, daemon, healthy=True, timeout=30, reason="caught up")
    log = daemon.log()
    assert re.search(r"WARNING +sqlstate\.health: unhealthy: positions of .* have not moved", log)
    assert "INFO    sqlstate.health: healthy again: caught up" in log
    assert re.search(
        r"INFO +sqlstate\.progress: catching up: 0 records/s, lag \d+ records over 3"
        r" partitions, lag not falling",
        log,
    )
    assert re.search(
        r"INFO +sqlstate\.progress: caught up: 3 partitions at their log end; 3000 records in",
        log,
    )
    assert await daemon.terminate() == 0
    assert db_counts(database, topic) == expected(messages)


async def test_healthz_follows_the_broker(
    kafka_bootstrap: str,
    broker_control: AsyncBrokerControl,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    first = keyed_messages(300, partitions=3, odd=False, seed=1)
    await produce_keyed(kafka_bootstrap, topic, first)
    daemon, base = await observed_daemon(
        kafka_bootstrap, topic, group_id, database, daemons, "--stall-timeout", "3"
    )

    await broker_control.stop()
    answer = await wait_health(
        base, daemon, healthy=False, timeout=30, reason="not in the consumer group"
    )
    assert answer["in_group"] is False
    assert "WARNING sqlstate.health: unhealthy: not in the consumer group" in daemon.log()

    await broker_control.start()
    await wait_health(base, daemon, healthy=True, timeout=60)
    second = keyed_messages(300, partitions=3, odd=False, seed=2)
    await produce_keyed(kafka_bootstrap, topic, second)
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 60, [daemon])
    await wait_health(base, daemon, healthy=True, timeout=30, reason="caught up")
    assert "INFO    sqlstate.health: healthy again" in daemon.log()
    assert daemon.running()
    assert await daemon.terminate() == 0
    assert db_counts(database, topic) == expected(first + second)


async def test_every_metric_of_the_grafana_dashboard_is_served(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """docs/grafana-dashboard.json reads only metrics /metrics serves, and shows every one."""
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    messages = keyed_messages(600, partitions=3, odd=False)
    await produce_keyed(kafka_bootstrap, topic, messages)
    # Healthy and caught up: every partition fetched, so the lag gauges have their samples; and
    # windowed-counts beside the counts, so that the processors' counter has one.
    daemon, base = await observed_daemon(
        kafka_bootstrap, topic, group_id, database, daemons, "--processor", "counts",
        "--processor", "windowed-counts",
    )  # fmt: skip
    status, body = await asyncio.to_thread(_get, f"{base}/metrics")
    assert status == 200
    # A family served with no sample yet counts too: the standby's lag gauge has one per
    # followed partition, and this daemon, without --changelog, follows none; a counter's
    # samples would be named with _total (records a processor failed on: none here).
    families = {
        family.name: {sample.name for sample in family.samples}
        or {f"{family.name}_total" if family.type == "counter" else family.name}
        for family in text_string_to_metric_families(body.decode())
    }
    served = set().union(*families.values())
    assert ("sqlstate_records_consumed_total", ()) in (await scrape(base))
    assert any(name.startswith("sqlstate_partition_lag") for name in served)

    dashboard = grafana.load()
    assert grafana.unserved(dashboard, served) == {}
    used = {name for expr in grafana.expressions(dashboard) for name in grafana.metric_names(expr)}
    # The text format serves a histogram's creation time as a gauge family of its own.
    unshown = sorted(
        family
        for family, samples in families.items()
        if family.startswith("sqlstate_") and not family.endswith("_created") and not samples & used
    )
    assert not unshown, f"metrics the dashboard does not show: {unshown}"

    # The check finds a panel that names a metric that does not exist.
    misspelt = json.loads(
        json.dumps(dashboard).replace("sqlstate_rebalances_total", "sqlstate_rebalance_total")
    )
    assert grafana.unserved(misspelt, served) == {"sqlstate_rebalance_total": ["Rebalances"]}
    assert await daemon.terminate() == 0
    assert db_counts(database, topic) == expected(messages)


async def offsets_command(database: Path, bootstrap: str) -> dict[int, dict[str, Any]]:
    """``sqlstate offsets --bootstrap-servers ... --json``, as a user runs it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sqlstate",
        "offsets",
        "--database",
        str(database),
        "--bootstrap-servers",
        bootstrap,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return {row["partition"]: row for row in json.loads(out)}


def progress_view(database: Path, topic: str) -> dict[int, dict[str, Any]]:
    rows = query(
        database,
        "SELECT partition, next_offset, log_end_offset, lag, owner, updated_at FROM progress"
        " WHERE topic = ?",
        (topic,),
    )
    names = ("partition", "next_offset", "log_end_offset", "lag", "owner", "updated_at")
    return {row[0]: dict(zip(names, row, strict=True)) for row in rows}


async def test_progress_view_matches_the_offsets_command(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=4)
    database = tmp_path / "state.db"
    messages = keyed_messages(20_000, partitions=3, odd=False)  # partition 3 stays empty
    await produce_keyed(kafka_bootstrap, topic, messages)
    daemon = Daemon(kafka_bootstrap, [topic], group_id, database, "--max-records", "10").start()
    daemons.append(daemon)

    # Frozen half-way (SIGSTOP, so it cannot finish meanwhile): the view knows the lag as of
    # each partition's last commit, with no call to Kafka.
    deadline = time.monotonic() + 60
    while True:
        positions = stored_positions(database)
        if sum(positions.values()) >= 3_000 and all(positions.get((topic, p), 0) for p in range(3)):
            break
        assert time.monotonic() < deadline, f"no progress on every partition\n{daemon.log()}"
        await asyncio.sleep(0.01)
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        await wait_stopped(daemon)  # every thread: nothing commits between the two reads
        view = progress_view(database, topic)
        command = await offsets_command(database, kafka_bootstrap)
    finally:
        daemon.process.send_signal(signal.SIGCONT)
    assert set(view) == set(command) == {0, 1, 2, 3}
    assert sum(row["lag"] for row in view.values()) > 0
    for partition in range(3):
        row, report = view[partition], command[partition]
        assert row["next_offset"] == report["next_offset"]
        assert row["log_end_offset"] == report["end_offset"] == report["log_end_offset"]
        assert row["lag"] == report["lag"]
        assert row["updated_at"] == report["updated_at"]

    # Caught up.
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 60, [daemon])
    assert await daemon.terminate() == 0
    view = progress_view(database, topic)
    command = await offsets_command(database, kafka_bootstrap)
    for partition in range(4):
        row, report = view[partition], command[partition]
        assert row["lag"] == report["lag"] == 0
        assert row["next_offset"] == report["next_offset"] == report["end_offset"]
        # Recorded at the claim for the partition that never had a record.
        assert row["log_end_offset"] == report["end_offset"]
    assert command[3]["end_offset"] == 0


async def test_a_second_connection_reads_whole_batches_while_the_daemon_writes(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """In every snapshot a reader takes, the counts add up to exactly the stored positions."""
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    daemon, _ = await observed_daemon(
        kafka_bootstrap, topic, group_id, database, daemons, "--max-records", "300"
    )

    messages = keyed_messages(15_000, partitions=3, odd=True)
    producing = asyncio.create_task(produce_keyed(kafka_bootstrap, topic, messages, rate=5000))
    reader = connect_read_only(database)
    reader.isolation_level = None  # explicit BEGIN: both reads in one snapshot
    snapshots: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not snapshots or snapshots[-1] < len(messages):
            assert time.monotonic() < deadline, f"reader saw {snapshots[-5:]}\n{daemon.log()}"
            reader.execute("BEGIN")
            (counted,) = reader.execute(
                "SELECT coalesce(sum(count), 0) FROM counts WHERE topic = ?", (topic,)
            ).fetchone()
            (positions,) = reader.execute(
                "SELECT coalesce(sum(next_offset), 0) FROM positions WHERE topic = ?", (topic,)
            ).fetchone()
            reader.execute("COMMIT")
            assert counted == positions  # offsets start at 0 and have no gaps here
            snapshots.append(counted)
            await asyncio.sleep(0.02)
    finally:
        reader.close()
    await producing
    assert len(set(snapshots)) >= 5, "the reader never saw the daemon at work"
    assert snapshots == sorted(snapshots)
    assert await daemon.terminate() == 0
    assert db_counts(database, topic) == expected(messages)


async def test_json_log_lines_parse(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    topic = await topic_factory(partitions=3)
    database = tmp_path / "state.db"
    messages = keyed_messages(1_000, partitions=3)
    await produce_keyed(kafka_bootstrap, topic, messages)
    daemon = Daemon(
        kafka_bootstrap, [topic], group_id, database, env={"SQLSTATE_LOG_FORMAT": "json"}
    ).start()
    daemons.append(daemon)
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 60, [daemon])
    await daemon.wait_for_log('"event": "caught_up"')  # the progress log's next tick
    assert await daemon.terminate() == 0
    lines = [line for line in daemon.log().splitlines() if not line.startswith("--- start")]
    entries = [json.loads(line) for line in lines]
    assert all(set(entry) >= {"time", "level", "logger", "message"} for entry in entries)
    assert any(
        entry["logger"] == "sqlstate.rebalance" and "assigned partitions" in entry["message"]
        for entry in entries
    )
    assert any(entry["level"] == "DEBUG" for entry in entries)  # -v: batch lines too
    assert entries[-1]["message"] == "stopped"

    # The event's data as fields, beside the message.
    events = [entry for entry in entries if "event" in entry]
    (started,) = [entry for entry in events if entry["event"] == "started"]
    assert started["logger"] == "sqlstate.daemon"
    assert started["topics"] == [topic]
    assert started["group_id"] == group_id
    assert started["database"] == str(database)
    assert started["schema"] == started["message"].split(" schema ")[1].split(";")[0]
    assert started["record_parser"] in {"c", "python"}
    assert started["records"] == "bare"  # counts, keys and values as bytes
    caught_up = [entry for entry in events if entry["event"] == "caught_up"]
    assert caught_up, "no caught-up line"
    assert caught_up[0]["partitions"] == 3
    assert caught_up[0]["records"] == len(messages)
    assert caught_up[0]["catch_up_s"] >= 0
    assert entries[-1]["event"] == "stopped"
    assert all("event" in entry for entry in entries if entry["logger"].startswith("sqlstate."))
    (assigned,) = [entry for entry in events if entry["event"] == "partitions_assigned"]
    assert assigned["assigned"] == [
        {"topic": topic, "partition": partition, "next_offset": 0, "epoch": 1}
        for partition in range(3)
    ]
    committed = [entry for entry in events if entry["event"] == "batch_committed"]
    assert sum(entry["records"] for entry in committed) == len(messages)
    assert all(entry["commit_s"] > 0 for entry in committed)


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_the_sasl_password_never_appears_in_the_output(
    log_format: str,
    kafka_bootstrap: str,
    topic: str,
    group_id: str,
    tmp_path: Path,
) -> None:
    """SASL against a PLAINTEXT listener fails at once; -vv logs aiokafka's debug lines too."""
    secret = "s3cret-pa55word-7f3a"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sqlstate",
        "-vv",
        "--log-format",
        log_format,
        "run",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        topic,
        "--group-id",
        group_id,
        "--database",
        str(tmp_path / "state.db"),
        "--connect-timeout",
        "5",
        "--security-protocol",
        "SASL_PLAINTEXT",
        "--sasl-mechanism",
        "PLAIN",
        "--sasl-username",
        "alice",
        env={**os.environ, "SQLSTATE_SASL_PASSWORD": secret},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    output = out.decode(errors="replace")
    assert process.returncode == 4, output
    assert "DEBUG" in output, output  # aiokafka's debug output is really there
    assert secret not in output
    assert secret.encode().hex() not in output
