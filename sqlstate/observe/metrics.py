"""Prometheus metrics and the small HTTP server that serves ``/metrics`` and ``/healthz``.

The batch loop never touches a metric: counters are read from ``Stats`` when Prometheus scrapes,
lag is computed then from the consumer, and commit latencies are drained from
``Stats.commit_seconds`` into the histogram once a tick and on each scrape. A private registry
keeps the metrics of a process that embeds sqlstate (or of a test running several daemons) apart.

prometheus_client's own server cannot serve a second path, and a thread would be the only
non-asyncio code in the daemon, so this is a minimal HTTP/1.1 responder on ``asyncio.start_server``:
one request per connection, GET or HEAD, closed after the answer. A slow or hostile client holds
nothing for long: the request must arrive, and the answer be taken, within a timeout each, and
connections beyond ``MAX_CONNECTIONS`` are answered 503 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus

from aiokafka import TopicPartition
from prometheus_client import (
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from sqlstate.errors import ConfigError
from sqlstate.observe.health import Health, Lags
from sqlstate.observe.logs import LogEvent
from sqlstate.observe.partition_states import STATES, PartitionState
from sqlstate.observe.stats import Stats
from sqlstate.version import __version__

logger = logging.getLogger("sqlstate.metrics")  # its documented name
_DROPPED = LogEvent(
    logger, logging.DEBUG, "metrics_request_dropped", "metrics request dropped: %(reason)s"
)
_FAILED = LogEvent(
    logger,
    logging.ERROR,
    "metrics_request_failed",
    "answering a metrics request failed",
    traceback=True,
)
_REFUSED = LogEvent(
    logger,
    logging.DEBUG,
    "metrics_request_refused",
    "metrics request refused: %(connections)d connections open",
)

# From a fast local SSD (about a millisecond) to a database waiting on a lock (the busy timeout).
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Connections answered at once. A Prometheus scraper and a health probe or two need a few; each
# connection holds a task and its buffers (an answer is the whole exposition, which grows with
# the partitions), so the ones beyond get a 503 and are closed.
MAX_CONNECTIONS = 16
# For the request to arrive, and again for the answer to be taken: a client that sends or reads
# slowly, or not at all, is cut off then, and its buffered answer dropped.
TIMEOUT_S = 5.0
_MAX_REQUEST_BYTES = 16_384


class _StateCollector:
    """Reads the daemon's counters and lags at scrape time."""

    def __init__(
        self,
        stats: Stats,
        lags: Callable[[], Lags],
        health: Callable[[], Health],
        states: Callable[[], Mapping[TopicPartition, PartitionState]],
    ) -> None:
        self._stats = stats
        self._lags = lags
        self._health = health
        self._states = states

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        for name, value, text in (
            ("records_consumed", stats.records, "Records counted and committed."),
            ("batches_committed", stats.batches, "Batch transactions committed."),
            ("rebalances", stats.rebalances, "Partition assignments received from the group."),
            (
                "fenced_batches",
                stats.fenced_batches,
                "Partition batches dropped because another owner claimed or moved the partition.",
            ),
            (
                "out_of_range_resets",
                stats.out_of_range_resets,
                "Partitions rebuilt from the earliest offset after their position left the log"
                " or their topic was deleted and created again.",
            ),
            (
                "topics_deleted",
                stats.topics_deleted,
                "--topic-pattern: matching topics found deleted while running (their state"
                " stays in the file).",
            ),
            (
                "database_busy_retries",
                stats.busy_retries,
                "Transactions retried because another connection held the database lock.",
            ),
            (
                "bad_records",
                stats.bad_records,
                "Records that did not decode, left out (--on-bad-record skip) or written to"
                " rejected_records (dead-letter), in committed batches.",
            ),
            (
                "kafka_offset_commits",
                stats.kafka_offset_commits,
                "Informational commits of the positions to the group's offsets in Kafka.",
            ),
            (
                "kafka_offset_commit_failures",
                stats.kafka_offset_commit_failures,
                "Informational commits to the group's offsets in Kafka that failed"
                " (the positions in the database are unaffected).",
            ),
            (
                "changelog_restored_records",
                stats.changelog_restored,
                "--changelog: changelog records applied by restores at claims.",
            ),
            (
                "changelog_applied_records",
                stats.changelog_applied,
                "--changelog: changelog records of other owners' partitions applied by the"
                " standby.",
            ),
            (
                "changelog_failures",
                stats.changelog_failures,
                "--changelog: batches rolled back because their changelog transactions did not"
                " all commit.",
            ),
            (
                "changelog_quarantined_records",
                stats.changelog_quarantined,
                "--changelog: changelog records set aside by restores and the standby, not"
                " applied: not a valid row of a state table of this partition, or a position"
                " that goes back or past the input's end.",
            ),
        ):
            yield CounterMetricFamily(f"sqlstate_{name}", text, value=value)
        standby_lag = GaugeMetricFamily(
            "sqlstate_standby_lag",
            "--standby all: changelog records a followed partition is behind its owner.",
            labels=["topic", "partition"],
        )
        for tp, behind in sorted(stats.standby_lag.items()):
            standby_lag.add_metric([tp.topic, str(tp.partition)], behind)
        yield standby_lag
        yield self._partition_states()
        processor_records = CounterMetricFamily(
            "sqlstate_processor_records",
            "Records a processor counted in committed batches, by what it counted (for"
            " windowed-counts, too_old: records for windows already past retention).",
            labels=["processor", "counter"],
        )
        for key, value in sorted(stats.processor_counters.items()):
            processor, _, counter = key.partition(":")
            processor_records.add_metric([processor, counter], value)
        yield processor_records
        rejected = CounterMetricFamily(
            "sqlstate_rejected_records",
            "Records a processor failed on, written to rejected_records in committed batches"
            " (--on-processor-error dead-letter), by processor.",
            labels=["processor"],
        )
        for processor, value in sorted(stats.rejected_records.items()):
            rejected.add_metric([processor], value)
        yield rejected

        lags = self._lags()
        lag = GaugeMetricFamily(
            "sqlstate_partition_lag",
            "Records between the committed position and the log end the consumer last saw.",
            labels=["topic", "partition"],
        )
        position = GaugeMetricFamily(
            "sqlstate_partition_next_offset",
            "The committed position: the next offset to consume.",
            labels=["topic", "partition"],
        )
        for tp, partition in sorted(lags.items()):
            labels = [tp.topic, str(tp.partition)]
            position.add_metric(labels, partition.next_offset)
            if partition.lag is not None:  # not fetched yet: no sample rather than a guess
                lag.add_metric(labels, partition.lag)
        yield lag
        yield position
        yield GaugeMetricFamily(
            "sqlstate_assigned_partitions",
            "Partitions this consumer has claimed.",
            value=len(lags),
        )
        health = self._health()
        yield GaugeMetricFamily(
            "sqlstate_in_group",
            "1 while the consumer is a member of its group.",
            value=int(health.in_group),
        )
        yield GaugeMetricFamily(
            "sqlstate_healthy", "1 while /healthz answers 200.", value=int(health.healthy)
        )
        info = GaugeMetricFamily("sqlstate_build_info", "sqlstate's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def _partition_states(self) -> Metric:
        states = GaugeMetricFamily(
            "sqlstate_partition_state",
            "--changelog: 1 for each partition's state: owned (claimed here), followed (the"
            " standby applies its changelog), restoring (being claimed), or neither (a failed"
            " claim, a changelog left paused: /healthz fails and the log says why).",
            labels=["topic", "partition", "state"],
        )
        for tp, partition in sorted(self._states().items()):
            for state in STATES:
                states.add_metric(
                    [tp.topic, str(tp.partition), state], int(partition.state == state)
                )
        return states


class Metrics:
    """The registry of one daemon."""

    def __init__(
        self,
        stats: Stats,
        lags: Callable[[], Lags],
        health: Callable[[], Health],
        states: Callable[[], Mapping[TopicPartition, PartitionState]] = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        self._commit_seconds = stats.commit_seconds
        self._commit_histogram = Histogram(
            "sqlstate_commit_duration_seconds",
            "Time to commit one batch transaction, lock waits and retries included.",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(stats, lags, health, states))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def drain(self) -> None:
        """Move the commit latencies the loop collected into the histogram."""
        latencies = self._commit_seconds[:]
        # No await since the copy: the loop cannot append in between.
        del self._commit_seconds[: len(latencies)]
        for seconds in latencies:
            self._commit_histogram.observe(seconds)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The text a scrape gets, in the format its Accept header asks for."""
        self.drain()
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class StatusServer:
    """Serves ``/metrics`` (Prometheus) and ``/healthz`` (200 healthy, 503 not, JSON body)."""

    def __init__(
        self,
        metrics: Metrics,
        health: Callable[[], Health],
        *,
        max_connections: int = MAX_CONNECTIONS,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._metrics = metrics
        self._health = health
        self._server: asyncio.Server | None = None
        self._max_connections = max_connections
        self._timeout_s = timeout_s
        self._connections = 0

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; return the address actually bound (``port`` 0 picks a free one)."""
        try:
            self._server = await asyncio.start_server(self._serve, host, port)
        except OSError as error:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {error.strerror or error}"
            ) from error
        bound: tuple[str, int] = self._server.sockets[0].getsockname()[:2]
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= self._max_connections:
            await self._refuse(reader, writer)
            return
        self._connections += 1
        answered = False
        try:
            async with asyncio.timeout(self._timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_REQUEST_BYTES:
                raise ValueError("request head too large")
            status, headers, body, send_body = self._answer(head.decode("latin-1"))
            writer.write(_response(status, headers, body if send_body else b"", len(body)))
            # drain() waits as long as the client does not read: without a bound, a client that
            # never reads would hold this task and the whole answer in memory for good.
            async with asyncio.timeout(self._timeout_s):
                await writer.drain()
            answered = True
        except (
            TimeoutError,
            ValueError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as error:
            _DROPPED.log(reason=repr(error))
        except Exception:
            # A bug in a collector must not go unseen, nor take the endpoint down.
            _FAILED.log()
            with contextlib.suppress(ConnectionError):
                writer.write(_response(HTTPStatus.INTERNAL_SERVER_ERROR, {}, b"", 0))
            answered = True
        finally:
            self._connections -= 1
            await self._close(writer, answered)

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A 503 without reading the request, then the connection closed."""
        _REFUSED.log(connections=self._connections)
        writer.write(_response(HTTPStatus.SERVICE_UNAVAILABLE, {"Retry-After": "1"}, b"", 0))
        with contextlib.suppress(ConnectionError, TimeoutError):
            writer.write_eof()
            # The request is read and dropped until the client closes (briefly): closing with
            # unread bytes makes the kernel reset the connection, and the client would see a
            # reset instead of the 503.
            async with asyncio.timeout(min(self._timeout_s, 1.0)):
                while await reader.read(_MAX_REQUEST_BYTES):
                    pass
        await self._close(writer, True)

    async def _close(self, writer: asyncio.StreamWriter, answered: bool) -> None:
        """Close once the answer is sent; otherwise drop whatever is still buffered for it."""
        if not answered:
            writer.transport.abort()
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                await writer.wait_closed()
        writer.transport.abort()  # a client that never took even a small answer

    def _answer(self, head: str) -> tuple[HTTPStatus, dict[str, str], bytes, bool]:
        request_line, _, header_lines = head.partition("\r\n")
        method, target, _version = request_line.split(" ", 2)
        path = target.split("?", 1)[0]
        accept = ""
        for line in header_lines.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        if method not in ("GET", "HEAD"):
            return (
                HTTPStatus.METHOD_NOT_ALLOWED,
                {"Allow": "GET, HEAD"},
                b"only GET and HEAD\n",
                True,
            )
        send_body = method == "GET"
        if path == "/metrics":
            body, content_type = self._metrics.exposition(accept)
            return HTTPStatus.OK, {"Content-Type": content_type}, body, send_body
        if path == "/healthz":
            health = self._health()
            status = HTTPStatus.OK if health.healthy else HTTPStatus.SERVICE_UNAVAILABLE
            body = json.dumps(health.as_json()).encode() + b"\n"
            return status, {"Content-Type": "application/json"}, body, send_body
        return (
            HTTPStatus.NOT_FOUND,
            {"Content-Type": "text/plain"},
            b"try /metrics or /healthz\n",
            send_body,
        )


def _response(status: HTTPStatus, headers: dict[str, str], body: bytes, length: int) -> bytes:
    lines = [f"HTTP/1.1 {status.value} {status.phrase}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [f"Content-Length: {length}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body
