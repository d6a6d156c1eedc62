"""Everything sqlstate asks of aiokafka beyond its plain public calls, kept in one module.

Every Kafka client sqlstate makes is built here: the daemon's group consumer (``build_consumer``),
the end-offset lookup of ``sqlstate offsets`` (``build_offsets_consumer``), the reader of
``sqlstate verify`` (``build_range_reader``), and the changelog's
clients (``build_admin_client``, ``build_changelog_producer``, ``build_changelog_consumer``).
aiokafka is pinned to 0.14.x; the internal reads here (``consumed_position``, ``log_end``'s
assignment check, ``in_group`` and ``transaction_fatal_error``) and the requests sent around
aiokafka's API (``commit_group_offsets`` and the lookups below) are checked by the tests against
the real broker. The security options and ``refusal`` serve every client; they are tested
against the test broker's SASL and SSL listeners (tests/acceptance/test_security.py, and
test_oauth.py for OAUTHBEARER, whose one token provider per process every client shares:
``oauth.py``).

The daemon's consumer, when it needs nothing else, and the changelogs' consumers are given
aiokafka's *bare records* (``build_consumer``'s ``bare_records``): the objects its record parser
makes, with ``offset``, ``timestamp``, ``key``, ``value`` and ``headers`` (a list), instead of a
``ConsumerRecord`` copied from each, which costs more than parsing the record
(``docs/performance.md``, "Bare records"). aiokafka builds each copy in its
``PartitionRecords``; a subclass of it, put in its place in aiokafka's fetcher module, skips the
copy for a consumer that carries the mark ``_bare_key`` as its key deserializer, and leaves every
other consumer's records as aiokafka makes them. Where aiokafka's fetcher is not as this
subclass knows it, nothing is replaced and no consumer marked: the records are then
``ConsumerRecord``s, as correct and slower, and the ``records_copied`` warning says so.

The lookups a claim makes are sent around aiokafka's API, over connections of their own
(``_LOOKUPS``): Metadata in a version that carries topic IDs (``topic_ids``, with its layout in
``protocol.py``), and ListOffsets (``list_offsets``: a log's start, its end as either isolation
level reads, the first offset at a time). A retriable error is asked again until the request
timeout (tests/integration/test_topic_ids.py runs them against the real broker, behind a held
fetch too); ``on_metadata_update`` hears of each metadata refresh of the consumer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import ssl
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import ConnectionGroup
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.consumer import fetcher
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    LeaderNotAvailableError,
    SaslAuthenticationFailed,
    StaleMetadata,
    UnknownTopicOrPartitionError,
    UnsupportedForMessageFormatError,
    UnsupportedSaslMechanismError,
    for_code,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.commit import OffsetCommitRequest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.record import default_records
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord

from sqlstate.kafka.assignor import FollowPlan, assignment_strategy
from sqlstate.kafka.oauth import TokenError, provider_for
from sqlstate.kafka.protocol import TopicsRequest, topics_of
from sqlstate.observe.logs import LogEvent
from sqlstate.settings import Security, Settings

logger = logging.getLogger("sqlstate.kafka")  # its documented name
_NO_TOPIC_IDS = LogEvent(
    logger,
    logging.WARNING,
    "topic_ids_unsupported",
    "Kafka gives no topic IDs (brokers older than 2.8): a topic deleted and created again is"
    " noticed only when a stored position falls outside its new log",
)

_COPIED_RECORDS = LogEvent(
    logger,
    logging.WARNING,
    "records_copied",
    "aiokafka %(aiokafka_version)s does not build its records as sqlstate expects: each record"
    " is copied into a ConsumerRecord, which is slower (sqlstate is tested with aiokafka 0.14)",
)

T = TypeVar("T")

# ListOffsets' two special times: the log's first offset, and the offset after its last record.
EARLIEST = -2
LATEST = -1
_ISOLATION_LEVELS = {"read_uncommitted": 0, "read_committed": 1}
# The connection group of the lookups, one connection per broker beside aiokafka's two (its
# ConnectionGroup: 0 for fetches and lookups, 1 for the group coordinator). A broker answers
# one connection's requests in order, and holds a fetch that finds nothing new for up to
# fetch_max_wait_ms (500 ms): each lookup sent on the fetch connection waited behind one. A
# claim's four lookups, one after the other, took 2 s while its partitions were idle: past a
# rebalance callback's budget, so the claim timed out at every try. The coordinator's
# connection is no better: a JoinGroup waits there for the whole rebalance.
_LOOKUPS = 2
# Whether the warning that the brokers give no topic IDs was logged: once a process is enough.
_no_topic_ids_said: list[bool] = []
# A changelog transaction's record batch and produce request (see build_changelog_producer).
_CHANGELOG_BATCH_BYTES = 1_000_000
_CHANGELOG_REQUEST_BYTES = 1_048_576


def c_parser_loaded() -> bool:
    """Whether aiokafka parses records with its C extension (about 20x faster than pure Python)."""
    module: str = default_records.DefaultRecordBatch.__module__
    return "._crecords" in module


def _bare_key(raw: bytes | None) -> bytes | None:
    """The key as Kafka has it. As a consumer's key deserializer, the mark of bare records
    (``_BareRecords``), which never call it."""
    return raw


def _as_is(tp: TopicPartition, record: T) -> T:
    return record


class _BareRecords(fetcher.PartitionRecords):  # type: ignore[misc]
    """The records of one fetched partition; for a consumer marked by ``_bare_key``, the
    objects aiokafka's parser makes, without the ``ConsumerRecord`` aiokafka copies from each.

    Only the copy is skipped: which batches are read, aborted transactions and control batches
    left out, CRCs checked, positions moved, stays aiokafka's own code.
    """

    def __init__(
        self,
        tp: TopicPartition,
        records: Any,
        aborted_transactions: Any,
        fetch_offset: int,
        key_deserializer: Any,
        value_deserializer: Any,
        check_crcs: bool,
        isolation_level: int,
    ) -> None:
        super().__init__(
            tp,
            records,
            aborted_transactions,
            fetch_offset,
            key_deserializer,
            value_deserializer,
            check_crcs,
            isolation_level,
        )
        if key_deserializer is _bare_key:
            # The instance's attribute comes before the class's method where aiokafka calls
            # self._consumer_record(tp, record) for each record.
            self._consumer_record = _as_is


def in_memory(
    contents: Iterable[tuple[bytes | None, bytes | None, int]], first_offset: int = 0
) -> MemoryRecords:
    """``contents`` (key, value, timestamp) as one record batch from ``first_offset``, as a
    fetch response holds it: what aiokafka's parser reads, without Kafka."""
    builder = default_records.DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for delta, (key, value, timestamp) in enumerate(contents):
        builder.append(delta, timestamp=timestamp, key=key, value=value, headers=[])
    # The batch's base offset is its first eight bytes, outside its CRC.
    return MemoryRecords(first_offset.to_bytes(8, "big") + bytes(builder.build())[8:])


def _skips_the_copy() -> bool:
    """Whether ``_BareRecords`` hands a marked consumer the parser's own records: one record
    made in memory, read through it as the fetcher would."""
    try:
        records = in_memory([(b"k", b"v", 1)])
        (read,) = _BareRecords(TopicPartition("probe", 0), records, [], 0, _bare_key, None, True, 0)
        seen = (isinstance(read, ConsumerRecord), read.offset, read.key, read.value)
    except Exception:  # an aiokafka this subclass does not fit: its records are copied
        return False
    return seen == (False, 0, b"k", b"v")


@functools.cache
def _bare_records_installed() -> bool:
    """Put ``_BareRecords`` in aiokafka's fetcher, once, if its ``PartitionRecords`` is still the
    one it subclasses and reading through it skips the copy."""
    known = (_BareRecords.__mro__[1], _BareRecords)
    if fetcher.PartitionRecords not in known or not _skips_the_copy():
        _COPIED_RECORDS.log(aiokafka_version=aiokafka.__version__)
        return False
    fetcher.PartitionRecords = _BareRecords
    return True


def reads_bare_records(consumer: AIOKafkaConsumer) -> bool:
    """Whether ``consumer`` is given aiokafka's bare records (``build_consumer``)."""
    return getattr(consumer, "_key_deserializer", None) is _bare_key


def build_consumer(
    settings: Settings,
    key_deserializer: Callable[[bytes | None], Any] | None = None,
    value_deserializer: Callable[[bytes | None], Any] | None = None,
    plan: FollowPlan | None = None,
    *,
    bare_records: bool = False,
) -> AIOKafkaConsumer:
    """A group consumer whose positions come only from the database (``plan``: under
    ``--standby N``, where its assignments say what its standby follows).

    No auto commit and ``auto_offset_reset="none"``: a stored position that Kafka no longer has
    must raise OffsetOutOfRangeError so our policy decides, never silently jump. Keys and values
    stay raw bytes unless deserializers are given (``--key-format``/``--value-format``):
    counting keys needs none. aiokafka calls them for every record, a null key or value included.
    ``bare_records`` (no deserializers): aiokafka's bare records, not ``ConsumerRecord``s.
    """
    if bare_records:
        if key_deserializer is not None or value_deserializer is not None:
            raise ValueError("bare records are Kafka's bytes: no deserializer goes with them")
        if _bare_records_installed():
            key_deserializer = _bare_key
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
        # Our own sticky assignor, round robin's shares (``assignor.py``). Not aiokafka's
        # sticky one: it can give one partition to two members (aio-libs/aiokafka#1175).
        partition_assignment_strategy=assignment_strategy(plan),
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


def build_range_reader(
    settings: Settings,
    key_deserializer: Callable[[bytes | None], Any] | None = None,
    value_deserializer: Callable[[bytes | None], Any] | None = None,
) -> AIOKafkaConsumer:
    """A consumer outside any group that reads input partitions assigned and sought by hand
    (``sqlstate verify``), as ``settings.isolation_level`` reads them.

    No group, so it never joins or moves the daemon's; no automatic reset, so a record deleted
    while it reads raises OffsetOutOfRangeError rather than a silent jump. Keys and values are
    decoded as the daemon's consumer decodes them (``build_consumer``).
    """
    return AIOKafkaConsumer(
        key_deserializer=key_deserializer,
        value_deserializer=value_deserializer,
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.client_id,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        isolation_level=settings.isolation_level,
        fetch_max_bytes=settings.fetch_max_bytes,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        **security_options(settings.security),
    )


def build_admin_client(settings: Settings) -> AIOKafkaAdminClient:
    """An admin client, for creating and checking the changelog topics."""
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.client_id,
        **security_options(settings.security),
    )


def build_changelog_producer(
    settings: Settings, transactional_id: str, transaction_timeout_ms: int
) -> AIOKafkaProducer:
    """A transactional producer for one changelog partition.

    One transaction per batch goes to one partition, so a batch is one produce request when its
    records fit in one record batch: aiokafka sends one record batch per partition and request,
    and waits for its answer before the next, so the default 16 KiB batches would cost a round
    trip per 16 KiB. 1 MB stays within the broker's default ``message.max.bytes`` (1 MiB + 12).
    No linger: the commit flushes at once anyway.
    """
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.client_id,
        transactional_id=transactional_id,
        transaction_timeout_ms=transaction_timeout_ms,
        enable_idempotence=True,
        acks="all",
        linger_ms=0,
        max_batch_size=_CHANGELOG_BATCH_BYTES,
        max_request_size=_CHANGELOG_REQUEST_BYTES,
        **security_options(settings.security),
    )


def build_changelog_consumer(
    settings: Settings, *, fetch_max_wait_ms: int = 500, max_partition_fetch_bytes: int = 0
) -> AIOKafkaConsumer:
    """A consumer outside any group that reads changelog partitions it is assigned by hand.

    read_committed whatever the input's isolation level: an aborted changelog transaction is a
    batch whose SQLite transaction rolled back (or a zombie's), and must never be applied. No
    automatic reset: a position Kafka no longer has raises OffsetOutOfRangeError, so the reader
    decides and says so. ``fetch_max_wait_ms``: how long the broker holds a fetch that finds
    nothing new (aiokafka's default, 500); ``max_partition_fetch_bytes``: at least the
    settings' (a restore reads more of its one partition at a time).
    """
    return AIOKafkaConsumer(
        # What a changelog record needs is its key, value and offset: bare records have them.
        key_deserializer=_bare_key if _bare_records_installed() else None,
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.client_id,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        isolation_level="read_committed",
        fetch_max_bytes=settings.fetch_max_bytes,
        max_partition_fetch_bytes=max(
            settings.max_partition_fetch_bytes, max_partition_fetch_bytes
        ),
        fetch_max_wait_ms=fetch_max_wait_ms,
        metadata_max_age_ms=max(1, round(settings.metadata_max_age_s * 1000)),
        **security_options(settings.security),
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
    if security.protocol.startswith("SASL") and security.sasl_mechanism == "OAUTHBEARER":
        options.update(
            sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=provider_for(security)
        )
    elif security.protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=security.sasl_mechanism,
            sasl_plain_username=security.sasl_username,
            sasl_plain_password=security.sasl_password,
        )
    return options


def worth_asking_why(error: BaseException, security: Security) -> bool:
    """Whether ``refusal`` may explain ``error``, an error of a client's start.

    aiokafka reports a refused SASL login or TLS handshake like an unreachable broker, with a
    KafkaConnectionError. A broker that rejects an OAUTHBEARER token lets the login seem to
    succeed and then answers no metadata, which aiokafka reports with a plain KafkaError, or
    waits for until the caller's timeout.
    """
    if isinstance(error, KafkaConnectionError):
        return True
    return security.sasl_mechanism == "OAUTHBEARER" and isinstance(error, KafkaError | TimeoutError)


async def refusal(bootstrap_servers: str, security: Security, timeout_s: float) -> str | None:
    """Why the bootstrap servers refused us, if they did: a failed SASL login or TLS handshake,
    or no OAuth token to log in with.

    When no bootstrap server can be used, aiokafka logs each one's reason and raises only
    "Unable to bootstrap from [...]", which reads like a network problem. One more connection
    per server with the same settings tells a wrong password or an untrusted certificate apart
    from a broker that is not there, so that the error can say what to fix. None: no server
    refused us (they are down, unreachable or slow).
    """
    oauth = security.protocol.startswith("SASL") and security.sasl_mechanism == "OAUTHBEARER"
    for host, port, _family in collect_hosts(bootstrap_servers, randomize=False):
        try:
            connection = await asyncio.wait_for(
                create_conn(host, port, client_id="sqlstate", **security_options(security)),
                timeout_s,
            )
            if oauth:  # _serves closes the connection
                if not await _serves(connection, timeout_s):
                    return oauth_refusal(host, port, security, "it closed the connection")
                continue
        except TokenError as error:
            if not error.retriable:
                return f"no OAuth token to log in to Kafka with: {error}"
            continue
        except (
            SaslAuthenticationFailed,
            UnsupportedSaslMechanismError,
            IllegalSaslStateError,
        ) as error:
            if oauth:
                return oauth_refusal(host, port, security, str(error))
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


async def _serves(connection: Any, timeout_s: float) -> bool:
    """Whether a connection that logged in with OAUTHBEARER answers a Metadata request.

    aiokafka takes an OAUTHBEARER login as done once it has sent the token, but a broker that
    rejects the token answers with an error challenge (RFC 7628) and, at the next request, closes
    the connection; the answer aiokafka reads then lists no broker.
    """
    try:
        response = await asyncio.wait_for(connection.send(MetadataRequest([])), timeout_s)
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        connection.close()
    return bool(response.brokers)


def oauth_refusal(host: str, port: int, security: Security, reason: str) -> str:
    """The message of a broker that refused our OAuth token."""
    return (
        f"Kafka at {host}:{port} refused the OAUTHBEARER token from"
        f" {provider_for(security).source.name} ({reason}); check that the token is meant for"
        " this cluster (its issuer, audience, subject and scope) and has not expired"
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


def transaction_fatal_error(producer: AIOKafkaProducer) -> BaseException | None:
    """The error that ended a transactional producer for good, or None while it can still
    run transactions.

    When the broker answers that a newer producer took the transactional id (fenced), aiokafka's
    sender task raises and stops, and every later ``begin_transaction`` or
    ``abort_transaction`` fails on an internal assertion rather than with that error; this reads
    it first.
    """
    manager = producer._txn_manager
    if manager is None or not manager.is_fatal_error():
        return None
    # The stopped sender failed every queued batch, also setting the error on each batch's
    # "drained" future, which only aiokafka's own waits read: unread, each would be logged as
    # "Future exception was never retrieved" (an ERROR line per batch) when collected.
    for batches in producer._message_accumulator._batches.values():
        for batch in batches:
            drained = batch._drain_waiter
            if drained.done() and not drained.cancelled():
                drained.exception()
    waiter = manager.wait_for_transaction_end()
    error: BaseException | None = None
    if waiter is not None and waiter.done() and not waiter.cancelled():
        error = waiter.exception()
    return error or KafkaError("the transactional producer stopped")


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


def absent_topics(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> list[tuple[str, bool]]:
    """The topics of ``topics`` that the consumer's metadata does not list now, each with
    whether Kafka said it is not authorized; no network call.

    A topic is missing from it once a metadata refresh no longer found it (deleted, or no longer
    authorized), but also for a moment when a refresh caught it without a leader: ask Kafka
    before taking it as gone.
    """
    cluster = consumer._client.cluster
    unauthorized: set[str] = cluster.unauthorized_topics
    return [
        (topic, topic in unauthorized)
        for topic in topics
        if topic in unauthorized or not cluster.partitions_for_topic(topic)
    ]


async def partition_counts(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> dict[str, int]:
    """How many partitions each of ``topics`` has, from a metadata request of its own: before
    the consumer subscribes, its own metadata holds no topic. 0 for a topic Kafka does not
    list."""
    cluster = await consumer._client.fetch_all_metadata()
    return {topic: len(cluster.partitions_for_topic(topic) or ()) for topic in topics}


def group_generation(consumer: AIOKafkaConsumer) -> int | None:
    """The generation of the group join the consumer last completed; None before the first.

    Inside ``on_partitions_assigned`` it is the generation of that assignment: a member expelled
    and rejoined, or a group that rebalanced once more, shows as a generation further on.
    """
    generation = getattr(getattr(consumer, "_coordinator", None), "generation", -1)
    return generation if isinstance(generation, int) and generation >= 0 else None


def joined(consumer: AIOKafkaConsumer) -> tuple[int | None, str | None]:
    """``group_generation`` and the member id of the group join the consumer last completed."""
    member = getattr(getattr(consumer, "_coordinator", None), "member_id", None)
    return group_generation(consumer), member if isinstance(member, str) and member else None


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


async def commit_group_offsets(
    consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, int], metadata: str
) -> list[TopicPartition]:
    """Commit ``offsets`` to the consumer's group in Kafka: one OffsetCommit request, sent in
    the generation the consumer is a member of right now. Returns the partitions sent.

    Nothing is sent (an empty list) when the consumer is not a member of its group at this
    moment, and only partitions of its current assignment are. The generation and member id are
    read and the request built with no await in between, so the request carries the membership
    that was checked; the coordinator rejects it if that generation is over by the time it
    arrives (UnknownMemberIdError, IllegalGenerationError, RebalanceInProgressError), so a
    member that lost a partition can never overwrite what its new owner committed.

    Not ``consumer.commit()``: that retries a failed commit by itself, each time with whatever
    generation the consumer holds by then, which may be a later one in which the partition
    belongs to another member (and with generation -1, after a reset, the coordinator accepts a
    commit whenever the group happens to be empty). It also resets the member's generation
    or marks the coordinator dead on some errors; this request changes nothing in the consumer,
    whose heartbeat finds out about its membership by itself. Raises the first error the
    coordinator answered for a partition, or the KafkaError of a failed request.
    """
    if not in_group(consumer):
        return []
    coordinator = consumer._coordinator
    assignment = consumer._subscription.subscription.assignment
    by_topic: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    sent = []
    for tp, offset in sorted(offsets.items()):
        if tp in assignment.tps:
            by_topic[tp.topic].append((tp.partition, offset, metadata))
            sent.append(tp)
    if not sent:
        return []
    request = OffsetCommitRequest(
        coordinator.group_id,
        coordinator.generation,
        coordinator.member_id,
        OffsetCommitRequest.DEFAULT_RETENTION_TIME,
        list(by_topic.items()),
    )
    response = await consumer._client.send(
        coordinator.coordinator_id, request, group=ConnectionGroup.COORDINATION
    )
    for topic, partitions in response.topics:
        for partition, error_code in partitions:
            if error_code:
                raise for_code(error_code)(f"committing the offset of {topic}-{partition}")
    return sent


async def topic_ids(
    consumer: AIOKafkaConsumer, topics: Iterable[str], *, all_exist: bool = False
) -> dict[str, str | None]:
    """Each of ``topics`` that exists, with its topic ID as Kafka writes it.

    A topic deleted and created again under the same name has a new ID. The ID is None for
    every topic when the brokers are older than Kafka 2.8, which have no topic IDs. Asked of any
    broker with a Metadata request of version 10 or later, over a lookup connection.
    ``all_exist``: the topics are known to exist (they were just assigned), so a broker that
    does not know one yet is asked again, like any retriable error, until the request timeout.
    """
    names = sorted(set(topics))
    if not names:
        return {}
    client = consumer._client
    request = TopicsRequest(names)

    async def ask() -> dict[str, str | None]:
        node = client.get_random_node()
        if node is None:
            raise KafkaConnectionError("no broker is known yet")
        try:
            response = await client.send(node, request, group=_LOOKUPS)
        except NotImplementedError:  # the broker speaks Metadata only below version 10
            if not _no_topic_ids_said:
                _no_topic_ids_said.append(True)
                _NO_TOPIC_IDS.log()
            return dict.fromkeys(names)
        found = topics_of(response)
        missing = set(names) - set(found)
        if all_exist and missing:
            raise UnknownTopicOrPartitionError(f"topic {', '.join(sorted(missing))}")
        return found

    return await _retried(client, ask)


async def high_watermarks(
    consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """The end of each partition's log, whatever the consumer's isolation level: the offset
    after its last replicated record (the high watermark), as a read_uncommitted consumer reads
    to. Under read_committed, ``end_offsets()`` answers the last stable offset instead, which
    stops before an open transaction."""
    return await list_offsets(consumer, tps, LATEST)


async def list_offsets(
    consumer: AIOKafkaConsumer,
    tps: Iterable[TopicPartition],
    at: int,
    isolation_level: str = "read_uncommitted",
) -> dict[TopicPartition, int]:
    """What ListOffsets answers for each partition at ``at``: EARLIEST, the log's first
    offset; LATEST, its end as ``isolation_level`` reads it (the high watermark, or the last
    stable offset under read_committed); or a time in ms, the first offset whose record is at
    or after it, -1 when none is (under read_committed, none past the last stable offset).

    One request per partition leader, over the lookup connections (``_LOOKUPS``), all at once:
    the answer costs a round trip, never a fetch's wait.
    """
    tps = sorted(set(tps))
    if not tps:
        return {}
    client = consumer._client
    level = _ISOLATION_LEVELS[isolation_level]

    async def ask() -> dict[TopicPartition, int]:
        by_leader: dict[int, dict[str, list[tuple[int, int]]]] = collections.defaultdict(
            lambda: collections.defaultdict(list)
        )
        for tp in tps:
            leader = client.cluster.leader_for_partition(tp)
            if leader is None:
                client.add_topic(tp.topic)
                raise StaleMetadata(tp)
            if leader == -1:
                raise LeaderNotAvailableError(tp)
            by_leader[leader][tp.topic].append((tp.partition, at))
        answers = await asyncio.gather(
            *(
                client.send(leader, OffsetRequest(-1, level, list(topics.items())), group=_LOOKUPS)
                for leader, topics in by_leader.items()
            )
        )
        offsets: dict[TopicPartition, int] = {}
        for response in answers:
            for topic, partitions in response.topics:
                for partition, error_code, *answer in partitions:
                    tp = TopicPartition(topic, partition)
                    if at >= 0 and error_code == UnsupportedForMessageFormatError.errno:
                        # Records older than Kafka 0.10 carry no time: none is found by one.
                        offsets[tp] = -1
                    elif error_code:
                        raise for_code(error_code)(tp)
                    else:
                        # Version 0 answers a list of offsets; later ones (timestamp, offset).
                        offsets[tp] = answer[0][0] if response.API_VERSION == 0 else answer[-1]
        return offsets

    return await _retried(client, ask)


async def _retried(client: Any, ask: Callable[[], Awaitable[T]]) -> T:
    """``ask()`` again after a retriable Kafka error (a broker not reachable for a moment, a
    leader that moved), refreshing the metadata when it is stale, up to the client's request
    timeout: how aiokafka retries its own offset lookups."""
    deadline = time.monotonic() + client._request_timeout_ms / 1000
    while True:
        try:
            return await ask()
        except KafkaError as error:
            if not error.retriable or time.monotonic() >= deadline:
                raise
            if error.invalid_metadata:
                client.force_metadata_update()
            await asyncio.sleep(client._retry_backoff)


@contextlib.asynccontextmanager
async def after_each_refresh(
    consumer: AIOKafkaConsumer, handle: Callable[[], Awaitable[None]], name: str
) -> AsyncIterator[None]:
    """While inside: ``handle()`` after each refresh of the consumer's metadata, in a task of
    its own (``name``), one call at a time; refreshes during a call make one more call."""
    refreshed = asyncio.Event()

    async def follow() -> None:
        while True:
            await refreshed.wait()
            refreshed.clear()
            await handle()

    stop_listening = on_metadata_update(consumer, refreshed.set)
    task = asyncio.create_task(follow(), name=name)
    try:
        yield
    finally:
        stop_listening()
        task.cancel()
        # wait() rather than awaiting the task: its CancelledError is not ours to re-raise.
        await asyncio.wait([task])


def on_metadata_update(
    consumer: AIOKafkaConsumer, callback: Callable[[], None]
) -> Callable[[], None]:
    """Call ``callback`` after each refresh of the consumer's metadata; returns the call that
    stops it.

    aiokafka refreshes every ``metadata_max_age_ms`` and at once after a fetch fails with an
    unknown topic or partition, or a leader that moved: the moments a topic deleted and created
    again can show. The callback runs inside aiokafka's refresh, so it must only take note.
    """
    cluster = consumer._client.cluster

    def listener(_cluster: Any) -> None:
        callback()

    cluster.add_listener(listener)
    return lambda: cluster.remove_listener(listener)
