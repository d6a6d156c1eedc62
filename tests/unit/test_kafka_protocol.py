"""The Metadata request and response of versions 10-13 against bytes written out by hand from
Kafka's protocol description, as a broker would send and read them (the same requests against the
real broker: tests/integration/test_topic_ids.py)."""

from __future__ import annotations

import base64
import io
import struct

import pytest
from aiokafka.errors import TopicAuthorizationFailedError, UnknownError

from sqlstate.kafka.protocol import (
    MetadataRequest_v11,
    MetadataRequest_v12,
    MetadataRequest_v13,
    TopicsRequest,
    Uuid,
    topic_id_text,
    topics_of,
)

REQUESTS = {11: MetadataRequest_v11, 12: MetadataRequest_v12, 13: MetadataRequest_v13}

RAW_ID = bytes(range(1, 17))


def int16(value: int) -> bytes:
    return struct.pack(">h", value)


def int32(value: int) -> bytes:
    return struct.pack(">i", value)


def compact(text: str | None) -> bytes:
    """COMPACT_(NULLABLE_)STRING below 127 bytes: length + 1 in one varint byte, or 0 for null."""
    if text is None:
        return b"\x00"
    return bytes([len(text) + 1]) + text.encode()


NO_TAGS = b"\x00"


def test_the_request_of_version_13_with_its_flexible_header() -> None:
    request = TopicsRequest(["orders"]).prepare({3: (0, 13)})
    assert request.API_VERSION == 13
    header = request.build_request_header(correlation_id=7, client_id="sqlstate")
    assert header.encode() == (
        int16(3)  # api_key: Metadata
        + int16(13)  # api_version
        + int32(7)  # correlation_id
        + int16(8)  # client_id: a plain (not compact) string, even in header version 2
        + b"sqlstate"
        + NO_TAGS
    )
    assert request.encode() == (
        b"\x02"  # topics: a compact array of one
        + bytes(16)  # topic_id: none, the topic is named
        + compact("orders")
        + NO_TAGS
        + b"\x00"  # allow_auto_topic_creation: false
        + b"\x00"  # include_topic_authorized_operations: false
        + NO_TAGS
    )


def test_version_10_also_declines_the_cluster_operations() -> None:
    request = TopicsRequest(["a", "b"]).prepare({3: (0, 10)})
    assert request.API_VERSION == 10
    assert request.encode() == (
        b"\x03"
        + bytes(16)
        + compact("a")
        + NO_TAGS
        + bytes(16)
        + compact("b")
        + NO_TAGS
        + b"\x00\x00\x00"  # no auto creation, no cluster and no topic operations
        + NO_TAGS
    )


@pytest.mark.parametrize(
    ("broker_versions", "chosen"), [((0, 13), 13), ((1, 12), 12), ((0, 11), 11), ((4, 14), 13)]
)
def test_the_highest_version_both_sides_speak_is_chosen(
    broker_versions: tuple[int, int], chosen: int
) -> None:
    request = TopicsRequest(["t"]).prepare({3: broker_versions})
    assert isinstance(request, REQUESTS[chosen])


def test_a_broker_older_than_kafka_2_8_has_no_version_with_topic_ids() -> None:
    with pytest.raises(NotImplementedError):
        TopicsRequest(["t"]).prepare({3: (0, 9)})


def partition(index: int) -> bytes:
    return (
        int16(0)  # error_code
        + int32(index)
        + int32(1)  # leader_id
        + int32(0)  # leader_epoch
        + b"\x02"
        + int32(1)  # replica_nodes [1]
        + b"\x02"
        + int32(1)  # isr_nodes [1]
        + b"\x01"  # offline_replicas []
        + NO_TAGS
    )


def topic(error_code: int, name: str, raw_id: bytes, partitions: int) -> bytes:
    return (
        int16(error_code)
        + compact(name)
        + raw_id
        + b"\x00"  # is_internal
        + bytes([partitions + 1])
        + b"".join(partition(i) for i in range(partitions))
        + int32(-(2**31))  # topic_authorized_operations: not asked
        + NO_TAGS
    )


def response_frame(version: int, topics: bytes, count: int, error_code: int = 0) -> bytes:
    """A whole answer as it comes off the wire after its size: header version 1, then body."""
    body = (
        int32(0)  # throttle_time_ms
        + b"\x02"  # brokers: one
        + int32(1)
        + compact("localhost")
        + int32(9092)
        + compact(None)  # rack
        + NO_TAGS
        + compact("cluster-1")
        + int32(1)  # controller_id
        + bytes([count + 1])
        + topics
    )
    if version == 10:
        body += int32(-(2**31))  # cluster_authorized_operations
    if version >= 13:
        body += int16(error_code)
    return int32(7) + NO_TAGS + body + NO_TAGS


def decode(version: int, frame: bytes) -> object:
    """What aiokafka's connection does with a frame: header, then the response type's body."""
    request = TopicsRequest(["orders"]).prepare({3: (version, version)})
    data = io.BytesIO(frame)
    assert request.parse_response_header(data).correlation_id == 7
    response = request.RESPONSE_TYPE.decode(data)
    assert data.read() == b"", "the whole frame was read"
    return response


@pytest.mark.parametrize("version", [10, 11, 12, 13])
def test_the_response_gives_each_existing_topic_its_id(version: int) -> None:
    topics = (
        topic(0, "orders", RAW_ID, 2)
        + topic(3, "gone", bytes(16), 0)  # UNKNOWN_TOPIC_OR_PARTITION
        + topic(0, "old", bytes(16), 1)  # no ID
    )
    assert topics_of(decode(version, response_frame(version, topics, 3))) == {
        "orders": "AQIDBAUGBwgJCgsMDQ4PEA",
        "old": None,
    }


def test_a_topic_error_other_than_unknown_is_raised() -> None:
    frame = response_frame(13, topic(29, "secret", bytes(16), 0), 1)
    with pytest.raises(TopicAuthorizationFailedError):
        topics_of(decode(13, frame))


def test_the_top_level_error_of_version_13_is_raised() -> None:
    frame = response_frame(13, b"", 0, error_code=-1)
    with pytest.raises(UnknownError):
        topics_of(decode(13, frame))


def test_topic_ids_read_as_kafka_writes_them() -> None:
    # kafka-topics.sh prints a topic ID as URL-safe base64 without padding.
    assert topic_id_text(bytes(15) + b"\x01") == "AAAAAAAAAAAAAAAAAAAAAQ"
    assert topic_id_text(b"\xff" * 16) == "_____________________w"
    assert base64.urlsafe_b64decode(topic_id_text(RAW_ID) + "==") == RAW_ID


def test_a_uuid_is_sixteen_bytes() -> None:
    assert Uuid.encode(RAW_ID) == RAW_ID
    assert Uuid.decode(io.BytesIO(RAW_ID + b"rest")) == RAW_ID
    with pytest.raises(ValueError, match="16 bytes"):
        Uuid.encode(b"short")
    with pytest.raises(ValueError, match="underrun"):
        Uuid.decode(io.BytesIO(b"short"))
