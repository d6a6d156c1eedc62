"""Kafka's Metadata request and response from version 10 on: the versions that carry topic IDs.

Every topic has an ID (KIP-516, Kafka 2.8): a UUID given when the topic is created, so a topic
deleted and created again under the same name has a new one. aiokafka 0.14 speaks Metadata only
up to version 5, which has no IDs, so sqlstate describes versions 10 to 13 here and sends them
over aiokafka's own connections (``sqlstate.kafka.describe_topics``).

They are written in aiokafka's request/response framework (``aiokafka.protocol``), which already
handles "flexible" versions (Metadata 9 and later): a request header with tagged fields, compact
strings and arrays (lengths as unsigned varints, plus one), and tagged fields after each
structure. The one type it lacks is the UUID, added below. The layouts follow Kafka's
``MetadataRequest.json`` and ``MetadataResponse.json``:

* version 10 adds ``topic_id`` to the request's topics and to the response's;
* version 11 drops ``include_cluster_authorized_operations`` and its answer;
* version 12 lets a request name a topic by ID alone (sqlstate names them, as before);
* version 13 adds a top-level ``error_code`` to the response.

aiokafka chooses the highest version both sides speak, per connection; a broker older than Kafka
2.8 speaks none of them, and ``TopicsRequest.prepare`` then raises ``NotImplementedError``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import UnknownTopicOrPartitionError, for_code
from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

API_KEY = 3  # Metadata
# A topic that has no ID (a broker older than Kafka 2.8 writing version 10+, which cannot happen,
# or a request entry naming the topic by name): Kafka's Uuid.ZERO_UUID.
_NO_ID = bytes(16)


class Uuid(AbstractType[bytes]):  # type: ignore[misc]
    """Kafka's ``uuid`` type: 16 bytes, most significant first."""

    @classmethod
    def encode(cls, value: bytes) -> bytes:
        if len(value) != 16:
            raise ValueError(f"a UUID is 16 bytes, not {len(value)}")
        return bytes(value)

    @classmethod
    def decode(cls, data: io.BytesIO) -> bytes:
        value = data.read(16)
        if len(value) != 16:
            raise ValueError("buffer underrun decoding a UUID")
        return value


def topic_id_text(raw: bytes) -> str:
    """A topic ID as Kafka writes it (``kafka-topics.sh --describe``): URL-safe base64, no
    padding, 22 characters."""
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


_STRING = CompactString("utf-8")

_BROKER = (
    ("node_id", Int32),
    ("host", _STRING),
    ("port", Int32),
    ("rack", _STRING),
    ("tags", TaggedFields),
)
_PARTITION = (
    ("error_code", Int16),
    ("partition_index", Int32),
    ("leader_id", Int32),
    ("leader_epoch", Int32),
    ("replica_nodes", CompactArray(Int32)),
    ("isr_nodes", CompactArray(Int32)),
    ("offline_replicas", CompactArray(Int32)),
    ("tags", TaggedFields),
)
_TOPIC = (
    ("error_code", Int16),
    ("name", _STRING),
    ("topic_id", Uuid),
    ("is_internal", Boolean),
    ("partitions", CompactArray(*_PARTITION)),
    ("topic_authorized_operations", Int32),
    ("tags", TaggedFields),
)
_RESPONSE_HEAD = (
    ("throttle_time_ms", Int32),
    ("brokers", CompactArray(*_BROKER)),
    ("cluster_id", _STRING),
    ("controller_id", Int32),
    ("topics", CompactArray(*_TOPIC)),
)


class MetadataResponse_v10(Response):  # type: ignore[misc]
    API_KEY = API_KEY
    API_VERSION = 10
    SCHEMA = Schema(
        *_RESPONSE_HEAD, ("cluster_authorized_operations", Int32), ("tags", TaggedFields)
    )


class MetadataResponse_v11(Response):  # type: ignore[misc]
    API_KEY = API_KEY
    API_VERSION = 11
    SCHEMA = Schema(*_RESPONSE_HEAD, ("tags", TaggedFields))


class MetadataResponse_v12(Response):  # type: ignore[misc]
    API_KEY = API_KEY
    API_VERSION = 12
    SCHEMA = MetadataResponse_v11.SCHEMA


class MetadataResponse_v13(Response):  # type: ignore[misc]
    API_KEY = API_KEY
    API_VERSION = 13
    SCHEMA = Schema(*_RESPONSE_HEAD, ("error_code", Int16), ("tags", TaggedFields))


_REQUEST_TOPICS = (
    "topics",
    CompactArray(("topic_id", Uuid), ("name", _STRING), ("tags", TaggedFields)),
)


class MetadataRequest_v10(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = API_KEY
    API_VERSION = 10
    RESPONSE_TYPE = MetadataResponse_v10
    SCHEMA = Schema(
        _REQUEST_TOPICS,
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class MetadataRequest_v11(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = API_KEY
    API_VERSION = 11
    RESPONSE_TYPE = MetadataResponse_v11
    SCHEMA = Schema(
        _REQUEST_TOPICS,
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class MetadataRequest_v12(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = API_KEY
    API_VERSION = 12
    RESPONSE_TYPE = MetadataResponse_v12
    SCHEMA = MetadataRequest_v11.SCHEMA


class MetadataRequest_v13(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = API_KEY
    API_VERSION = 13
    RESPONSE_TYPE = MetadataResponse_v13
    SCHEMA = MetadataRequest_v11.SCHEMA


class TopicsRequest(
    Request[  # type: ignore[misc]
        MetadataRequest_v10 | MetadataRequest_v11 | MetadataRequest_v12 | MetadataRequest_v13
    ]
):
    """Metadata of the named topics, in the highest of versions 10-13 the broker speaks.

    Never creates a topic: sqlstate only reads topics that exist.
    """

    API_KEY = API_KEY

    def __init__(self, topics: Sequence[str]) -> None:
        self._topics = list(topics)

    def build(self, request_struct_class: type[Any]) -> Any:
        topics: list[tuple[bytes, str, dict[int, bytes]]] = [
            (_NO_ID, name, {}) for name in self._topics
        ]
        if request_struct_class.API_VERSION == 10:
            return request_struct_class(topics, False, False, False, {})
        return request_struct_class(topics, False, False, {})


def topics_of(response: Any) -> dict[str, str | None]:
    """The topics of a Metadata response (versions 10-13) that exist, with their IDs in Kafka's
    text form (None for a topic without one).

    A topic that does not exist is left out. Any other error of the response or of a topic
    (authorization, say) raises it as aiokafka's error class for its code.
    """
    if response.API_VERSION >= 13 and response.error_code:
        raise for_code(response.error_code)("Metadata request failed")
    topics: dict[str, str | None] = {}
    for error_code, name, raw_id, *_rest in response.topics:
        error = for_code(error_code)
        if error is UnknownTopicOrPartitionError:
            continue
        if error_code:
            raise error(f"Metadata of topic {name}")
        topics[name] = None if raw_id == _NO_ID else topic_id_text(raw_id)
    return topics
