"""Everything sqlstate asks of aiokafka beyond its plain public calls, kept in one module.

Every Kafka client sqlstate makes is built here: the daemon's group consumer (``build_consumer``)
and the end-offset lookup of ``sqlstate offsets`` (``build_offsets_consumer``). aiokafka is
pinned to 0.14.x; the internal reads here (``consumed_position``, ``log_end``'s assignment check
and ``in_group``) are checked by the tests against the real broker. The security options and
``refusal`` serve every client; they are tested against the test broker's SASL and SSL listeners
(tests/acceptance/test_security.py).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.record import default_records

from sqlstate.settings import Security, Settings

logger = logging.getLogger(__name__)


def c_parser_loaded() -> bool:
    """Whether aiokafka parses records with its C extension (about 20x faster than pure Python)."""
    module: str = default_records.DefaultRecordBatch.__module__
    return "._crecords" in module


def build_consumer(
    settings: Settings,
    key_deserializer: Callable[[bytes | None], Any] | None = None,
    value_deserializer: Callable[[bytes | None], Any] | None = None,
) -> AIOKafkaConsumer:
    """A group consumer whose positions come only from the database.

    No auto commit and ``auto_offset_reset="none"``: a stored position that Kafka no longer has
    must raise OffsetOutOfRangeError so our policy decides, never silently jump. Keys and values
    stay raw bytes unless deserializers are given (``--key-format``/``--value-format``):
    counting keys needs none. aiokafka calls them for every record, a null key or value included.
    """
    return AIOKafkaConsumer(
        key_deserializer=key_deserializer,
        value_deserializer=value_deserializer,
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
        metadata_max_age_ms=max(1, round(settings.metadata_max_age_s * 1000)),
        # The roundrobin assignor: aiokafka's sticky assignor can give one partition to two
        # members (aio-libs/aiokafka#1175); fencing would keep counts exact, but churn is waste.
        **security_options(settings.security),
    )


def build_offsets_consumer(
    bootstrap_servers: str, isolation_level: str, security: Security
) -> AIOKafkaConsumer:
    """A consumer outside any group, for end-offset lookups only (``sqlstate offsets``).

    No group and no auto commit: it only asks, so it never joins or moves the daemon's group.
    """
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        isolation_level=isolation_level,
        enable_auto_commit=False,
        **security_options(security),
    )


def security_options(security: Security) -> dict[str, Any]:
    """The keyword arguments of an aiokafka client (or connection) for ``security``."""
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=str(security.ssl_cafile) if security.ssl_cafile else None,
            certfile=str(security.ssl_certfile) if security.ssl_certfile else None,
            keyfile=str(security.ssl_keyfile) if security.ssl_keyfile else None,
            password=security.ssl_password,
        )
    if security.protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=security.sasl_mechanism,
            sasl_plain_username=security.sasl_username,
            sasl_plain_password=security.sasl_password,
        )
    return options


async def refusal(bootstrap_servers: str, security: Security, timeout_s: float) -> str | None:
    """Why the bootstrap servers refused us, if they did: a failed SASL login or TLS handshake.

    When no bootstrap server can be used, aiokafka logs each one's reason and raises only
    "Unable to bootstrap from [...]", which reads like a network problem. One more connection
    per server with the same settings tells a wrong password or an untrusted certificate apart
    from a broker that is not there, so that the error can say what to fix. None: no server
    refused us (they are down, unreachable or slow).
    """
    for host, port, _family in collect_hosts(bootstrap_servers, randomize=False):
        try:
            connection = await asyncio.wait_for(
                create_conn(host, port, client_id="sqlstate", **security_options(security)),
                timeout_s,
            )
        except (
            SaslAuthenticationFailed,
            UnsupportedSaslMechanismError,
            IllegalSaslStateError,
        ) as error:
            return (
                f"Kafka at {host}:{port} refused the SASL login of {security.sasl_username!r}"
                f" with {security.sasl_mechanism}: {error}; check --sasl-mechanism,"
                " --sasl-username and SQLSTATE_SASL_PASSWORD"
            )
        except ssl.SSLError as error:  # before OSError, its base class
            return (
                f"the TLS handshake with Kafka at {host}:{port} failed: {error}; check"
                " --security-protocol, --ssl-cafile and the client certificate"
            )
        except (TimeoutError, KafkaError, OSError):
            continue
        connection.close()
    return None


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
