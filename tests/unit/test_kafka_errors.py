"""Which Kafka errors are waited out and which stop sqlstate, with which code and words.

The broker-backed tests (tests/acceptance/test_kafka_errors.py) produce what a single test broker
can: a deleted topic, a corrupt record, a broker down. The test broker has no ACLs, so the
authorization errors are checked here, where they are classified, and only here.
"""

from __future__ import annotations

import logging
import time

import pytest
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    GroupAuthorizationFailedError,
    GroupCoordinatorNotAvailableError,
    IllegalGenerationError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    NodeNotReadyError,
    NotCoordinatorForGroupError,
    NotLeaderForPartitionError,
    RebalanceInProgressError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownMemberIdError,
    UnknownTopicOrPartitionError,
    UnsupportedCodecError,
)

from sqlstate.errors import KafkaRefusedError, SqlstateError
from sqlstate.kafka.errors import Retrying, permanent, topic_gone

TRANSIENT = [
    KafkaConnectionError(),
    NodeNotReadyError(),
    RequestTimedOutError(),
    KafkaTimeoutError(),
    TimeoutError(),
    NotLeaderForPartitionError(),
    LeaderNotAvailableError(),
    NotCoordinatorForGroupError(),
    GroupCoordinatorNotAvailableError(),
    RebalanceInProgressError(),
    IllegalGenerationError(),
    UnknownMemberIdError(),
    # A deleted topic is told apart by the topic check, not by this error.
    UnknownTopicOrPartitionError(),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda error: type(error).__name__)
def test_transient_errors_are_waited_out(error: BaseException) -> None:
    assert permanent(error) is None


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (TopicAuthorizationFailedError("orders"), "read topic orders"),
        (GroupAuthorizationFailedError("counts"), "consumer group counts"),
        (ClusterAuthorizationFailedError(), "ClusterAuthorizationFailed"),
        (CorruptRecordException("Invalid CRC - orders-0"), "failed its CRC check"),
        (UnsupportedCodecError("zstd"), "install"),
        (RecordTooLargeError("too large"), "rather than skip it"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "",
)
def test_permanent_errors_exit_7_saying_what_to_do(error: BaseException, words: str) -> None:
    stop = permanent(error)
    assert isinstance(stop, KafkaRefusedError)
    assert stop.exit_code == 7
    assert words in str(stop)
    assert "\n" not in str(stop)


def test_an_unknown_kafka_error_is_unexpected_not_refused() -> None:
    stop = permanent(KafkaError("something new"))
    assert stop is not None
    assert not isinstance(stop, KafkaRefusedError)
    assert stop.exit_code == 1
    assert "something new" in str(stop)


def test_a_topic_gone_says_deleted_or_not_authorized() -> None:
    deleted = topic_gone("orders", unauthorized=False)
    assert deleted.exit_code == 7
    assert "topic orders no longer exists" in str(deleted)
    refused = topic_gone("orders", unauthorized=True)
    assert refused.exit_code == 7
    assert "READ and DESCRIBE" in str(refused)


def test_exit_codes_are_distinct() -> None:
    assert KafkaRefusedError.exit_code == 7
    assert SqlstateError.exit_code == 1


def test_an_episode_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    retrying = Retrying()
    caplog.set_level(logging.INFO, logger="sqlstate.kafka_errors")
    retrying.recovered()  # nothing under way: nothing to say
    waits = [retrying.failed(KafkaConnectionError(), "fetching records") for _ in range(8)]
    assert retrying.active
    time.sleep(0.01)
    retrying.recovered()
    assert not retrying.active
    events = [record.__dict__["event"] for record in caplog.records]
    assert events == ["kafka_retrying", "kafka_recovered"]
    assert caplog.records[1].__dict__["errors"] == 8
    # The backoff grows, and stops growing.
    assert waits == sorted(waits)
    assert waits[0] == 0.5
    assert waits[-1] == 10.0
    # A new episode starts from the first backoff again.
    assert retrying.failed(KafkaConnectionError(), "fetching records") == 0.5
