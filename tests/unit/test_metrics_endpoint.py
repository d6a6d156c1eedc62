"""The /metrics and /healthz endpoint over real HTTP on the loopback interface (no broker)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from sqlstate.errors import ConfigError
from sqlstate.observe import metrics
from sqlstate.observe.health import Health, Lags, PartitionLag
from sqlstate.observe.metrics import Metrics, StatusServer
from sqlstate.observe.stats import Stats


class Daemon:
    """What the metrics read from a running daemon, as plain attributes a test can set."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.lags: dict[TopicPartition, PartitionLag] = {}
        self.health = Health(True, "caught up", True, 0, 0)
        self.metrics = Metrics(self.stats, self.get_lags, self.get_health)

    def get_lags(self) -> Lags:
        return self.lags

    def get_health(self) -> Health:
        return self.health


@pytest.fixture
async def served() -> AsyncIterator[tuple[Daemon, int]]:
    daemon = Daemon()
    server = StatusServer(daemon.metrics, daemon.get_health)
    _host, port = await server.start("127.0.0.1", 0)
    yield daemon, port
    await server.close()


async def request(port: int, head: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode())
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    raw_head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    return await request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


async def test_metrics_are_read_at_scrape_time(served: tuple[Daemon, int]) -> None:
    daemon, port = served
    daemon.stats.records, daemon.stats.batches, daemon.stats.rebalances = 1500, 3, 1
    daemon.stats.busy_retries = 2
    daemon.stats.rejected_records["amounts"] += 4
    daemon.stats.commit_seconds.extend([0.002, 0.004, 0.2])
    daemon.lags = {
        TopicPartition("orders", 0): PartitionLag(100, 160),
        TopicPartition("orders", 1): PartitionLag(7, None),
    }
    status, headers, body = await get(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    values = samples(body)
    assert values[("sqlstate_records_consumed_total", ())] == 1500
    assert values[("sqlstate_batches_committed_total", ())] == 3
    assert values[("sqlstate_rebalances_total", ())] == 1
    assert values[("sqlstate_database_busy_retries_total", ())] == 2
    assert values[("sqlstate_fenced_batches_total", ())] == 0
    assert values[("sqlstate_out_of_range_resets_total", ())] == 0
    assert values[("sqlstate_rejected_records_total", (("processor", "amounts"),))] == 4
    assert values[("sqlstate_commit_duration_seconds_count", ())] == 3
    assert values[("sqlstate_commit_duration_seconds_bucket", (("le", "0.005"),))] == 2
    orders_0 = (("partition", "0"), ("topic", "orders"))
    orders_1 = (("partition", "1"), ("topic", "orders"))
    assert values[("sqlstate_partition_lag", orders_0)] == 60
    assert ("sqlstate_partition_lag", orders_1) not in values  # log end not known yet
    assert values[("sqlstate_partition_next_offset", orders_1)] == 7
    assert values[("sqlstate_assigned_partitions", ())] == 2
    assert values[("sqlstate_healthy", ())] == 1
    assert daemon.stats.commit_seconds == []  # drained into the histogram

    daemon.stats.records += 500
    values = samples((await get(port, "/metrics"))[2])
    assert values[("sqlstate_records_consumed_total", ())] == 2000
    assert values[("sqlstate_commit_duration_seconds_count", ())] == 3


async def test_openmetrics_when_asked_for(served: tuple[Daemon, int]) -> None:
    _daemon, port = served
    status, headers, body = await request(
        port,
        "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    )
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_healthz(served: tuple[Daemon, int]) -> None:
    daemon, port = served
    status, headers, body = await get(port, "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    answer: dict[str, Any] = json.loads(body)
    assert answer == {
        "healthy": True,
        "reason": "caught up",
        "in_group": True,
        "partitions": 0,
        "lag": 0,
    }
    daemon.health = Health(False, "positions of orders-0 have not moved", True, 1, 9)
    status, _, body = await get(port, "/healthz?verbose=1")
    assert status == 503
    assert json.loads(body)["reason"] == "positions of orders-0 have not moved"


async def test_other_requests(served: tuple[Daemon, int]) -> None:
    _daemon, port = served
    assert (await get(port, "/"))[0] == 404
    status, headers, _ = await request(port, "POST /metrics HTTP/1.1\r\n\r\n")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    status, headers, body = await request(port, "HEAD /healthz HTTP/1.1\r\n\r\n")
    assert status == 200
    assert int(headers["content-length"]) > 0
    assert body == b""


async def test_a_port_in_use_is_a_clear_error(served: tuple[Daemon, int]) -> None:
    daemon, port = served
    with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
        await StatusServer(daemon.metrics, daemon.get_health).start("127.0.0.1", port)


async def test_a_failing_collector_answers_500_and_is_logged(
    served: tuple[Daemon, int], caplog: pytest.LogCaptureFixture
) -> None:
    daemon, port = served

    def broken() -> Lags:
        raise RuntimeError("bug")

    daemon.get_lags = broken  # type: ignore[method-assign]
    daemon.metrics = Metrics(daemon.stats, broken, daemon.get_health)
    server = StatusServer(daemon.metrics, daemon.get_health)
    _host, broken_port = await server.start("127.0.0.1", 0)
    try:
        assert (await get(broken_port, "/metrics"))[0] == 500
        assert (await get(broken_port, "/healthz"))[0] == 200
    finally:
        await server.close()
    assert "answering a metrics request failed" in caplog.text
    assert (await get(port, "/metrics"))[0] == 200


async def test_connections_beyond_the_cap_get_503_while_slow_clients_hold_the_others(
    served: tuple[Daemon, int],
) -> None:
    _daemon, port = served
    cap = metrics.MAX_CONNECTIONS
    slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(cap)]
    try:
        for _reader, writer in slow:
            writer.write(b"GET /metrics HTTP/1.1\r\n")  # and the rest never comes
        status, headers, body = await get(port, "/healthz")
        assert (status, headers["retry-after"], body) == (503, "1", b"")

        # One slow client gone: its place is free again.
        _reader, writer = slow.pop()
        writer.close()
        await writer.wait_closed()
        async with asyncio.timeout(5):
            while True:
                if (await get(port, "/healthz"))[0] == 200:
                    break
                await asyncio.sleep(0.05)
    finally:
        for _reader, writer in slow:
            writer.close()
            await writer.wait_closed()


class HugeAnswer(Metrics):
    """Metrics whose exposition is 32 MiB, made at once (the real one of that size takes
    many seconds to make)."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(daemon.stats, daemon.get_lags, daemon.get_health)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        return b"#\n" * 16 * 2**20, "text/plain"


async def test_a_client_that_never_reads_the_answer_is_cut_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its answer is far larger than the socket buffers (the kernel's grow to a few MB on the
    loopback), so the server's drain() waits on it; after the timeout the connection is dropped,
    with what was still buffered for it."""
    daemon = Daemon()
    server = StatusServer(HugeAnswer(daemon), daemon.get_health, timeout_s=0.5)
    _host, port = await server.start("127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window
    client.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=client)
        with caplog.at_level(logging.DEBUG, logger="sqlstate.metrics"):
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            async with asyncio.timeout(30):
                while True:
                    if "metrics_request_dropped" in [
                        getattr(r, "event", None) for r in caplog.records
                    ]:
                        break
                    await asyncio.sleep(0.05)
        assert "TimeoutError" in caplog.text
        received = b""
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(10):
                while chunk := await reader.read(65_536):
                    received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert len(body) < length
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    finally:
        await server.close()
