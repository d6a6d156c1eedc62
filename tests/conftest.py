"""Fixtures for tests against a real Kafka broker.

The broker is whatever answers at ``KAFKA_BOOTSTRAP`` (default 127.0.0.1:9092):
``make test`` starts one for the run when nothing answers (tools/kafka_broker).
A missing broker stops the run with an error and the broker's log; it never skips
tests, so a green run always means the broker-backed tests ran.

Fixtures:
    kafka_bootstrap  (session) "host:port", once a broker serves requests there
    broker_control   AsyncBrokerControl: stop/kill/start the harness's broker; after the
                     test the broker is running again whatever the test did
    topic_factory    ``await topic_factory(partitions=3, config=None)`` -> a new topic
                     with a random name, deleted after the test
    topic            a new topic with 3 partitions
    group_id         a new consumer group id
    schema_registry_url (session) the schema registry's API (``SCHEMA_REGISTRY_URL``), once
                     it answers; ``make test`` starts one (tools/schema_registry); fails,
                     never skips, when nothing answers
    secure_listeners (session) SecureListeners: the harness broker's SASL_PLAINTEXT and
                     SSL listeners, users and certificates; fails (never skips) when the
                     broker is external or was started by a harness without them

Tests run in parallel (pytest-xdist, ``make test``): a test that uses the broker shares it with
the others, one that uses ``broker_control`` has it to itself (tests/support/broker_lock.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Generator, Mapping
from pathlib import Path

import pytest

from tests.support.broker import AsyncBrokerControl, SecureListeners
from tests.support.broker_lock import BrokerLock, BrokerUse
from tests.support.kafka import TopicFactory, create_topic, delete_topics
from tools.kafka_broker import (
    CLIENT_KEY_PASSWORD,
    DEFAULT_BOOTSTRAP,
    SASL_PASSWORD,
    SASL_USERNAME,
    BrokerControl,
    BrokerError,
    probe,
)
from tools.schema_registry import RegistryControl, RegistryError

BROKER_WAIT_SECONDS = 60.0
LOCK_DIRECTORY = Path(__file__).resolve().parents[1] / ".run" / "test-locks"
BROKER_LOCK = pytest.StashKey[BrokerLock]()


def bootstrap_from_environment() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP") or DEFAULT_BOOTSTRAP


def broker_use(item: pytest.Item) -> BrokerUse:
    """From the fixtures a test uses, directly or through others."""
    fixtures = getattr(item, "fixturenames", ())
    if "broker_control" in fixtures:
        return BrokerUse.EXCLUSIVE
    if "kafka_bootstrap" in fixtures:
        return BrokerUse.SHARED
    return BrokerUse.NONE


# The order tests are handed out in: those that stop the broker first, then those that do not
# use it (they keep the other workers busy meanwhile), then the rest.
RUN_ORDER = (BrokerUse.EXCLUSIVE, BrokerUse.NONE, BrokerUse.SHARED)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The tests that stop the broker run in one worker, one after the other: the other
    # workers then wait for the running tests to finish once, not once per such test.
    for item in items:
        if broker_use(item) is BrokerUse.EXCLUSIVE:
            item.add_marker(pytest.mark.xdist_group("broker_control"))
    items.sort(key=lambda item: RUN_ORDER.index(broker_use(item)))


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outside pytest-timeout's timer: waiting is no hang
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    lock = item.config.stash.get(BROKER_LOCK, None)
    if lock is None:
        lock = item.config.stash[BROKER_LOCK] = BrokerLock(
            LOCK_DIRECTORY, bootstrap_from_environment()
        )
    lock.acquire(broker_use(item))
    try:
        return (yield)
    finally:
        # An exclusive hold goes on to the next test if that one needs it too. A shared one
        # never does: a test waiting for the broker to itself would wait for the worker's
        # whole queue.
        exclusive = BrokerUse.EXCLUSIVE
        if not (lock.held is exclusive and nextitem and broker_use(nextitem) is exclusive):
            lock.release()


def pytest_unconfigure(config: pytest.Config) -> None:
    lock = config.stash.get(BROKER_LOCK, None)
    if lock is not None:
        lock.close()


def pytest_report_header(config: pytest.Config) -> str:
    control = BrokerControl(bootstrap_from_environment())
    whose = control.describe() if control.owned() else "external, or none yet"
    return f"kafka: {control.bootstrap} ({whose})"


@pytest.fixture(autouse=True)
def _log_levels_restored() -> Generator[None, None, None]:
    """A test that runs the CLI in this process (CliRunner) configures logging as the command
    does: with -q, sqlstate's logger stays at WARNING, and a later test on this worker that
    reads INFO lines through caplog would find none. Each test gets the levels it started with.
    """
    loggers = [logging.getLogger(), logging.getLogger("sqlstate")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The broker's address, once it answers a real request (ApiVersions and Metadata)."""
    control = BrokerControl(bootstrap_from_environment())
    try:
        control.wait_ready(BROKER_WAIT_SECONDS)
    except BrokerError as exc:
        hint = (
            ""
            if control.owned()
            else "\nStart one with `make broker-up`, or run the tests with `make test`."
        )
        pytest.exit(f"no usable Kafka broker: {exc}{hint}", returncode=pytest.ExitCode.TESTS_FAILED)
    return control.bootstrap


@pytest.fixture
async def broker_control(kafka_bootstrap: str) -> AsyncIterator[AsyncBrokerControl]:
    """Control of the broker this harness started; restored to running after the test."""
    control = BrokerControl(kafka_bootstrap)
    if not control.owned():
        pytest.fail(
            f"broker_control needs the broker started by this harness, but the one at "
            f"{kafka_bootstrap} is external (not in .run/kafka/state.json), and an external "
            f"broker is never stopped from here. Run `make test` with nothing at "
            f"{kafka_bootstrap}, or `make broker-up` first.",
            pytrace=False,
        )
    handle = AsyncBrokerControl(control)
    yield handle
    # Whatever the test did (stop, kill, or failed half-way), the next test gets a
    # broker that serves requests. start() only waits when it is running already.
    await handle.start()


@pytest.fixture(scope="session")
def secure_listeners(kafka_bootstrap: str) -> SecureListeners:
    """The secure listeners that tools/kafka_broker recorded for the broker it started."""
    control = BrokerControl(kafka_bootstrap)
    state = control.load_state()
    if state is None or not (state.sasl_bootstrap and state.ssl_bootstrap and state.tls_dir):
        whose = (
            "external (not in .run/kafka/state.json)"
            if state is None
            else (
                "run by Docker, whose compose file has no secure listeners; use KAFKA_RUNNER=native"
                if state.runner == "docker"
                else "from a harness without secure listeners"
            )
        )
        pytest.fail(
            f"the security tests need the SASL_PLAINTEXT and SSL listeners of the broker "
            f"this harness starts, but the broker at {kafka_bootstrap} is {whose}. Run "
            f"`make test` with nothing at {kafka_bootstrap}, or `make broker-down broker-up`.",
            pytrace=False,
        )
    tls = Path(state.tls_dir)
    return SecureListeners(
        sasl_bootstrap=state.sasl_bootstrap,
        ssl_bootstrap=state.ssl_bootstrap,
        username=SASL_USERNAME,
        password=SASL_PASSWORD,
        ca_file=tls / "ca.pem",
        client_cert=tls / "client.pem",
        client_key=tls / "client.key",
        client_key_password=CLIENT_KEY_PASSWORD,
    )


def _name_part(node_name: str) -> str:
    # Topic names allow [a-zA-Z0-9._-] and up to 249 characters; the test's name in
    # the topic's name tells whose topic it is in the broker log.
    return re.sub(r"[^a-zA-Z0-9._-]+", "-", node_name).strip("-")[:80]


@pytest.fixture
async def topic_factory(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> AsyncIterator[TopicFactory]:
    """Create topics with random names; they are deleted after the test."""
    created: list[str] = []

    async def create(partitions: int = 3, *, config: Mapping[str, str] | None = None) -> str:
        name = f"test-{_name_part(request.node.name)}-{uuid.uuid4().hex[:8]}"
        created.append(name)
        return await create_topic(kafka_bootstrap, name, partitions, config)

    yield create
    # Deleting keeps a long-lived broker small. Not worth failing or waiting for: when
    # the broker is down (a fault test that failed), the topics simply stay.
    answer = await asyncio.to_thread(probe, kafka_bootstrap, 1.0)
    if created and answer.state == "ready":
        with contextlib.suppress(Exception):
            await delete_topics(kafka_bootstrap, created)


@pytest.fixture
async def topic(topic_factory: TopicFactory) -> str:
    """A new topic with 3 partitions."""
    return await topic_factory(3)


@pytest.fixture
def group_id(request: pytest.FixtureRequest) -> str:
    """A consumer group id no other test uses."""
    return f"group-{_name_part(request.node.name)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def schema_registry_url() -> str:
    """The schema registry's API, once it answers."""
    control = RegistryControl()
    try:
        control.wait_ready(BROKER_WAIT_SECONDS)
    except RegistryError as exc:
        pytest.exit(
            f"no schema registry at {control.url}: {exc}\nStart one with"
            " `python3 -m tools.schema_registry up`, or run the tests with `make test`.",
            returncode=pytest.ExitCode.TESTS_FAILED,
        )
    return control.url
