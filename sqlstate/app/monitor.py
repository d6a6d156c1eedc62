"""The daemon's observers, wired together: one tick a second, and the optional HTTP endpoint.

Each tick reads what the batch loop and the listener already keep (``Stats``, the claims in
``Ownership``, the consumer's view of each log end) and feeds the watchdog (``health.py``), the
progress log (``progress.py``) and the commit-latency histogram (``metrics.py``). Nothing here runs
on the batch path, awaits the database or calls the broker, so the tick task can simply be
cancelled at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition

from sqlstate.app.ownership import Ownership
from sqlstate.changelog.owner import ChangelogOwner
from sqlstate.kafka.client import in_group, log_end
from sqlstate.observe.health import Health, Lags, PartitionLag, Watchdog
from sqlstate.observe.logs import LogEvent
from sqlstate.observe.metrics import Metrics, StatusServer
from sqlstate.observe.partition_states import Facts, PartitionState, classify, neither, passing
from sqlstate.observe.progress import ProgressLog
from sqlstate.observe.stats import Stats
from sqlstate.settings import Settings

logger = logging.getLogger("sqlstate.monitor")  # its documented name
_SERVING = LogEvent(
    logger,
    logging.INFO,
    "metrics_serving",
    "serving http://%(host)s:%(port)d/metrics and /healthz",
)
_TICK_FAILED = LogEvent(
    logger, logging.ERROR, "monitor_tick_failed", "monitor tick failed", traceback=True
)

TICK_S = 1.0


class Monitor:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        ownership: Ownership,
        stats: Stats,
        settings: Settings,
        changelog: ChangelogOwner | None = None,
    ) -> None:
        self._consumer = consumer
        self._ownership = ownership
        self._stats = stats
        self._settings = settings
        self._changelog = changelog
        self.watchdog = Watchdog(settings.stall_timeout_s)
        self._progress = ProgressLog(settings.progress_interval_s)
        self.metrics = Metrics(stats, self.lags, self.health, self.partition_states)

    def lags(self) -> Lags:
        """Each claimed partition's committed position and the log end last fetched."""
        level = self._settings.isolation_level
        return {
            tp: PartitionLag(claim.next_offset, log_end(self._consumer, tp, level))
            for tp, claim in self._ownership.claims.items()
        }

    def partition_states(self) -> dict[TopicPartition, PartitionState]:
        """Under --changelog, whether each partition is owned, followed, or neither; {} without."""
        owner = self._changelog
        if owner is None:
            return {}
        standby = owner.standby
        return classify(
            Facts(
                assigned=self._consumer.assignment(),
                claimed=set(self._ownership.claims),
                held=self._ownership.held,
                claiming=owner.claiming,
                failures=owner.failures,
                followed=None if standby is None else standby.followed,
                paused=frozenset() if standby is None else standby.paused,
                to_follow=frozenset() if standby is None else standby.to_follow,
            )
        )

    def health(self) -> Health:
        return self.watchdog.health

    def _degraded(self) -> str | None:
        stats = self._stats
        causes = []
        if stats.schema_registry_unavailable is not None:
            causes.append(f"waiting for {stats.schema_registry_unavailable}")
        if stats.changelog_quarantined:
            causes.append(
                f"{stats.changelog_quarantined} changelog records set aside, the last"
                f" {stats.changelog_quarantine_last} (see the changelog_record_quarantined log"
                " events)"
            )
        if stats.deleted_topics:
            causes.append(
                f"topic {', '.join(sorted(stats.deleted_topics))} deleted while running, its"
                " state kept in the file (see the topic_deleted log events)"
            )
        return "; ".join(causes) or None

    def tick(self) -> None:
        # The histogram is drained even when nobody scrapes, so the loop's list stays short.
        self.metrics.drain()
        lags = self.lags()
        states = self.partition_states()
        unkept = neither(states)
        self.watchdog.check(
            in_group(self._consumer), lags, self._degraded(), unkept, passing(states)
        )
        self._progress.tick(self._stats.records, lags, unkept)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Tick, and serve ``/metrics`` and ``/healthz`` if a metrics port is set, until exit."""
        server = None
        if self._settings.metrics_port is not None:
            server = StatusServer(self.metrics, self.health)
            host, port = await server.start(
                self._settings.metrics_host, self._settings.metrics_port
            )
            _SERVING.log(host=host, port=port)
        task = asyncio.create_task(self._tick_forever(), name="sqlstate-monitor")
        try:
            yield
        finally:
            task.cancel()
            # wait() rather than awaiting the task: its CancelledError is not ours to re-raise.
            await asyncio.wait([task])
            if server is not None:
                await server.close()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick()
            except Exception:
                # A bug here must not stop consuming; it is logged every tick, so it is seen.
                _TICK_FAILED.log()
