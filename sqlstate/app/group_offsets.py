"""A copy of the positions in the consumer group's offsets in Kafka, for operators' tools.

The database is where positions live. Kafka's group offsets are only a copy, for the tools
operators already run (``kafka-consumer-groups.sh --describe``, Burrow, kafka-lag-exporter,
Kafka UI, a cloud provider's lag alerts), which read a group's lag from there. So the copy is:

- **Informational, never read back.** Each offset is committed with metadata that says so
  (``OFFSET_METADATA``). Every assignment still claims each partition in the database and seeks
  it there (``claims.py``). aiokafka looks up a committed offset only for a partition that
  has no position yet, that is before that seek; the seek drops whatever it fetched from there
  and discards fetches in flight, and the batch loop takes records only of claimed partitions.
- **After the fact, off the batch path.** Once a SQLite transaction has committed (a batch, a
  claim, an out-of-range reset), its claims are handed to ``publish``, which never awaits. One
  task sends them, at most once a second (``COMMIT_INTERVAL_S``); meanwhile only the newest
  claim of each partition is kept. A slow or failing Kafka commit never delays a batch.
- **Only what this member still owns.** At the moment of sending, a partition is included only
  if this consumer still holds exactly the claim that was published (a revoke releases it, a
  fenced batch drops it, a new claim replaces it) and is a member of its group; the request
  carries that membership's generation, which the coordinator checks (``kafka.py``).
- **Best-effort.** A failure is counted (``Stats.kafka_offset_commit_failures``) and logged once
  as a warning, or at DEBUG when the coordinator only refused an old generation (a rebalance,
  or a member that was expelled): the claims of the next assignment replace what was refused.
  What failed, or waited for the consumer to be a member of its group again, is tried again
  after a pause, if this consumer still holds those claims then. On stop, what is pending is
  sent once more, within the shutdown timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    IllegalGenerationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from sqlstate.app.ownership import Ownership
from sqlstate.kafka.client import commit_group_offsets
from sqlstate.observe.logs import LogEvent
from sqlstate.observe.stats import Stats
from sqlstate.state.model import Claim

logger = logging.getLogger("sqlstate.group_offsets")  # its documented name
_ABANDONED = LogEvent(
    logger,
    logging.DEBUG,
    "kafka_offsets_abandoned",
    "gave up committing the last positions to Kafka after %(timeout_s)gs",
)
_RECOVERED = LogEvent(
    logger,
    logging.INFO,
    "kafka_offsets_recovered",
    "committing positions to Kafka's group offsets again",
)
_COMMITTED = LogEvent(
    logger,
    logging.DEBUG,
    "kafka_offsets_committed",
    "committed the positions of %(partitions)d partitions to Kafka's group offsets",
)
_FAILED = LogEvent(
    logger,
    logging.WARNING,
    "kafka_offsets_commit_failed",
    "committing positions to Kafka's group offsets failed: %(reason)s; the positions in the"
    " database are unaffected, this is retried (further failures at DEBUG)",
)
_FAILED_AGAIN = LogEvent(
    logger,
    logging.DEBUG,
    "kafka_offsets_commit_failed",
    "committing positions to Kafka's group offsets failed: %(reason)s",
)

#: What each committed offset says about itself, for whoever reads it in Kafka.
OFFSET_METADATA = "sqlstate: informational; positions live in the database"
#: The coordinator's answers to a member whose generation is over: expected around rebalances.
OLD_GENERATION = (UnknownMemberIdError, IllegalGenerationError, RebalanceInProgressError)
RETRY_PAUSE_S = 1.0
# At most one commit a second. Lag tools sample every few seconds (Kafka's own auto-commit
# interval is 5 s), while each commit costs the event loop about half a millisecond: at
# twenty batches a second that was a tenth of the loop's time (measured with make bench).
COMMIT_INTERVAL_S = 1.0


class GroupOffsets:
    """Commits the positions the database holds to the group's offsets in Kafka, best-effort."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        ownership: Ownership,
        stats: Stats,
        *,
        enabled: bool,
    ) -> None:
        self._consumer = consumer
        self._ownership = ownership
        self._stats = stats
        self._enabled = enabled
        self._pending: dict[TopicPartition, Claim] = {}
        self._sender: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()  # wakes a sender waiting out the commit interval
        self._last_sent = -COMMIT_INTERVAL_S
        self._warned = False  # a warning was logged for the current run of failures

    def publish(self, claims: Mapping[TopicPartition, Claim]) -> None:
        """Queue claims a SQLite transaction has just committed. Never waits."""
        if not self._enabled or self._stopping or not claims:
            return
        self._pending.update(claims)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_pending(), name="sqlstate-group-offsets")

    async def close(self, timeout_s: float) -> None:
        """Send what is still pending (the last batch's positions) once, within ``timeout_s``."""
        self._stopping = True
        self._stopped.set()
        sender = self._sender
        if sender is None or sender.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(sender), timeout_s)
        except TimeoutError:
            sender.cancel()
            # wait() rather than awaiting the task: its CancelledError is not ours to re-raise.
            await asyncio.wait([sender])
            _ABANDONED.log(timeout_s=timeout_s)

    async def _send_pending(self) -> None:
        while self._pending:
            wait_s = self._last_sent + COMMIT_INTERVAL_S - time.monotonic()
            if wait_s > 0 and not self._stopping:
                # Newer claims replace older ones in ``_pending`` meanwhile.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), wait_s)
            claims, self._pending = self._pending, {}
            # Checked now, at the moment of sending, not when the claims were published.
            owned = {
                tp: claim for tp, claim in claims.items() if self._ownership.claim_of(tp) == claim
            }
            if not owned:
                continue
            if await self._commit(owned):
                self._last_sent = time.monotonic()
                continue
            if self._stopping:
                return  # one try only, when stopping
            for tp, claim in owned.items():
                self._pending.setdefault(tp, claim)  # unless a newer claim came meanwhile
            await asyncio.sleep(RETRY_PAUSE_S)

    async def _commit(self, owned: Mapping[TopicPartition, Claim]) -> bool:
        """Commit ``owned``; False when it failed (counted) or this consumer is not a member of
        its group right now (during a rebalance, say): to be tried again later."""
        offsets = {tp: claim.next_offset for tp, claim in owned.items()}
        try:
            sent = await commit_group_offsets(self._consumer, offsets, OFFSET_METADATA)
        except Exception as error:
            # Whatever went wrong, this copy must never stop the daemon.
            self._failed(error, len(owned))
            return False
        if not sent:
            return False
        self._stats.kafka_offset_commits += 1
        if self._warned:
            self._warned = False
            _RECOVERED.log(partitions=len(sent))
        _COMMITTED.log(partitions=len(sent))
        return True

    def _failed(self, error: Exception, partitions: int) -> None:
        self._stats.kafka_offset_commit_failures += 1
        if isinstance(error, OLD_GENERATION) or self._warned:
            _FAILED_AGAIN.log(partitions=partitions, reason=repr(error))
            return
        self._warned = True
        _FAILED.log(partitions=partitions, reason=repr(error))
