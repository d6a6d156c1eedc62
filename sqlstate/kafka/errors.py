"""Which Kafka errors sqlstate waits out and which stop it, and how a wait is logged.

aiokafka raises Kafka's errors from ``getmany()`` (the fetcher's, and the group coordinator's
that it hands to the user) and from its own lookups; sqlstate's lookups of the log's bounds and
topic IDs (``client.py``) raise them too. Out-of-range, no-offset and consumer-stopped have
their own handling in the batch loop; every other error is one of three kinds (``permanent``
tells them apart):

- **transient**: a broker restarting, a partition leader or the group coordinator moving, a
  connection dropped, a request or a lookup timed out, a rebalance under way. aiokafka marks most
  of these ``retriable``; a timeout (``KafkaTimeoutError``, or sqlstate's own bound on a lookup)
  and the group's generation errors, which aiokafka answers by rejoining, are transient too. They
  are retried with a growing backoff (``Retrying``), logged once when an episode starts and once
  when Kafka answers again.
- **permanent**: Kafka refuses what retrying cannot change: the topic or the group not
  authorized, a topic deleted while running, a record batch that fails its CRC check, a codec
  this Python lacks, a record larger than the fetch size (aiokafka would skip that record, which
  would lose its count). sqlstate stops with exit code 7 and one line saying what to do. The
  database stays at its last committed batch.
- **anything else**: an unexpected error, exit code 1, one line.

Retrying a transient error from ``getmany()`` never loses a record: aiokafka raises such an error
before it hands out any record of that call, so the positions sqlstate reads after the next call
are the positions of what it returned.
"""

from __future__ import annotations

import logging
import time

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    GroupAuthorizationFailedError,
    IllegalGenerationError,
    KafkaError,
    KafkaTimeoutError,
    KafkaUnavailableError,
    RebalanceInProgressError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownMemberIdError,
    UnsupportedCodecError,
)

from sqlstate.errors import KafkaRefusedError, SqlstateError
from sqlstate.observe.logs import LogEvent, rounded

logger = logging.getLogger("sqlstate.kafka_errors")  # its documented name
_RETRYING = LogEvent(
    logger,
    logging.WARNING,
    "kafka_retrying",
    "Kafka error while %(during)s: %(reason)s; retrying with backoff until Kafka answers again",
)
_RECOVERED = LogEvent(
    logger,
    logging.INFO,
    "kafka_recovered",
    "Kafka answers again after %(errors)d transient errors over %(outage_s).1fs",
    data={"outage_s": rounded(3)},
)

# Transient although aiokafka does not mark them retriable: a request that ran out of time, no
# broker reachable for a moment, and the group's own errors, which aiokafka answers by rejoining.
_TRANSIENT: tuple[type[KafkaError], ...] = (
    KafkaTimeoutError,
    KafkaUnavailableError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
)
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 10.0


def _first_arg(error: BaseException) -> str:
    return str(error.args[0]) if error.args else "?"


def permanent(error: BaseException) -> SqlstateError | None:
    """The error to stop with, or None when waiting and trying again may succeed."""
    if isinstance(error, TimeoutError):  # sqlstate's own bound on a lookup ran out
        return None
    if isinstance(error, TopicAuthorizationFailedError):
        return _not_authorized(_first_arg(error))
    if isinstance(error, GroupAuthorizationFailedError):
        return KafkaRefusedError(
            f"Kafka refused sqlstate the consumer group {_first_arg(error)}"
            " (GroupAuthorizationFailed): grant this client's principal READ on the group, then"
            " start sqlstate again"
        )
    if isinstance(error, ClusterAuthorizationFailedError):
        return KafkaRefusedError(
            "Kafka refused a cluster request (ClusterAuthorizationFailed): grant this client's"
            " principal the cluster permission it lacks, then start sqlstate again"
        )
    if isinstance(error, CorruptRecordException):
        return KafkaRefusedError(
            f"a record batch Kafka returned failed its CRC check ({error}): the broker's copy of"
            " the log is damaged and sqlstate cannot count past it; the database stays at its"
            " last committed batch. Repair the partition on the broker, or step over the batch"
            " with kafka-delete-records (its records are then never counted), and start"
            " sqlstate again"
        )
    if isinstance(error, UnsupportedCodecError):
        return KafkaRefusedError(
            f"{error}: the records are compressed with a codec this Python cannot decompress;"
            " install its package (aiokafka's lz4, snappy or zstd extra) and start sqlstate"
            " again"
        )
    if isinstance(error, RecordTooLargeError):
        return KafkaRefusedError(
            f"Kafka returned part of a record larger than the fetch size ({error}); sqlstate"
            " stopped rather than skip it, and the database stays at its last committed batch."
            " Only brokers older than Kafka 0.10.1 do this: upgrade the broker"
        )
    if isinstance(error, KafkaError) and (error.retriable or isinstance(error, _TRANSIENT)):
        return None
    return SqlstateError(f"unexpected Kafka error: {error!r}")


def topic_gone(topic: str, unauthorized: bool) -> KafkaRefusedError:
    """The error of a subscribed topic that Kafka no longer lists while sqlstate runs."""
    if unauthorized:
        return _not_authorized(topic)
    return KafkaRefusedError(
        f"topic {topic} no longer exists in Kafka: it was deleted while sqlstate consumed it;"
        " the database keeps its counts up to the last committed batch. Remove it from --topic,"
        " or create it again, and start sqlstate again"
    )


def _not_authorized(topic: str) -> KafkaRefusedError:
    return KafkaRefusedError(
        f"Kafka refused to let sqlstate read topic {topic} (TopicAuthorizationFailed): grant"
        " this client's principal READ and DESCRIBE on the topic, then start sqlstate again"
    )


class Retrying:
    """An episode of transient Kafka errors: its backoff, and a line when it starts and ends."""

    def __init__(self) -> None:
        self._since: float | None = None
        self._errors = 0
        self._backoff_s = _FIRST_BACKOFF_S

    @property
    def active(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException, during: str) -> float:
        """Note a transient error; returns how many seconds to wait before trying again."""
        if self._since is None:
            self._since = time.monotonic()
            self._backoff_s = _FIRST_BACKOFF_S
            # sqlstate's own bound on a lookup raises a bare TimeoutError: say what it means.
            reason = "no answer in time" if type(error) is TimeoutError else repr(error)
            _RETRYING.log(reason=reason, during=during)
        self._errors += 1
        backoff_s = self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, _MAX_BACKOFF_S)
        return backoff_s

    def recovered(self) -> None:
        """Kafka answered: end the episode, if one is under way."""
        if self._since is None:
            return
        seconds = time.monotonic() - self._since
        _RECOVERED.log(errors=self._errors, outage_s=seconds)
        self._since = None
        self._errors = 0
