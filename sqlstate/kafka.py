"""Everything sqlstate asks of aiokafka beyond its plain public calls, kept in one module.

aiokafka is pinned to 0.14.x; the internal reads here (``consumed_position``, ``log_end``'s
assignment check and ``in_group``) are checked by the tests against the real broker.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.helpers import create_ssl_context
from aiokafka.record import default_records

from sqlstate.settings import Settings

logger = logging.getLogger(__name__)


def c_parser_loaded() -> bool:
    """Whether aiokafka parses records with its C extension (about 20x faster than pure Python)."""
    module: str = default_records.DefaultRecordBatch.__module__
    return "._crecords" in module


def build_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A group consumer whose positions come only from the database.

    No auto commit and ``auto_offset_reset="none"``: a stored position that Kafka no longer has
    must raise OffsetOutOfRangeError so our policy decides, never silently jump. Keys and values
    stay raw bytes: counting keys needs no deserializer.
    """
    security: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        security["ssl_context"] = create_ssl_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None,
            certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
            keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
            password=settings.ssl_password,
        )
    if settings.security_protocol.startswith("SASL"):
        security.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password,
        )
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        client_id=settings.client_id,
        enable_auto_commit=False,
        auto_offset_reset="none",
        isolation_level=settings.isolation_level,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        rebalance_timeout_ms=settings.rebalance_timeout_ms,
        fetch_max_bytes=settings.fetch_max_bytes,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        # The roundrobin assignor: aiokafka's sticky assignor can give one partition to two
        # members (aio-libs/aiokafka#1175); fencing would keep counts exact, but churn is waste.
        **security,
    )


def consumed_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The offset after the last record ``getmany()`` handed out for ``tp``, without awaiting.

    ``consumer.position()`` may wait for a position; this never does, so it can run right after
    ``getmany()`` with no chance for a rebalance to slip in between. It also counts transaction
    markers and aborted records that the fetcher stepped over. None: not assigned or no position.
    """
    subscription = consumer._subscription.subscription
    if subscription is None or subscription.assignment is None:
        return None
    assignment = subscription.assignment
    if tp not in assignment.tps:
        return None
    state = assignment.state_value(tp)
    if not state.has_valid_position:
        return None
    position: int = state.position
    return position


def log_end(consumer: AIOKafkaConsumer, tp: TopicPartition, isolation_level: str) -> int | None:
    """The end of the partition as seen by the last fetch: what lag is measured against.

    Under read_committed that is the last stable offset: records of open transactions are not yet
    readable, so they are not lag. None: not fetched yet, or no longer assigned (aiokafka asserts
    on an unassigned partition, and the observers may ask while a rebalance changes the
    assignment).
    """
    if not consumer._subscription.is_assigned(tp):
        return None
    end: int | None
    if isolation_level == "read_committed":
        end = consumer.last_stable_offset(tp)
    else:
        end = consumer.highwater(tp)
    return end if end is not None and end >= 0 else None


def in_group(consumer: AIOKafkaConsumer) -> bool:
    """Whether the consumer is a member of its group right now, by aiokafka's coordinator state.

    aiokafka has no public flag for this. A member is in its group when it knows the group's
    coordinator, holds the member id and generation of a completed join, and no rejoin is pending.
    A rebalance, an unreachable coordinator (aiokafka marks it dead on the first failed heartbeat
    or commit) and a removal from the group (session or poll timeout) each make this False until
    the next join completes. An empty assignment is still membership: a group can have more
    members than partitions.
    """
    coordinator = consumer._coordinator
    subscription = consumer._subscription.subscription
    if coordinator is None or subscription is None or subscription.assignment is None:
        return False
    return (
        getattr(coordinator, "coordinator_id", None) is not None
        and getattr(coordinator, "generation", -1) >= 0
        and bool(getattr(coordinator, "member_id", ""))
        and not coordinator.need_rejoin(subscription)
    )
