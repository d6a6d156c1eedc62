"""``sqlstate run`` and ``sqlstate offsets`` over SASL OAUTHBEARER, against the real broker.

The test broker's SASL_PLAINTEXT listener takes OAUTHBEARER with Kafka's unsecured validator
(broker/server.properties), with re-authentication on: it closes a connection when its token
expires. Tokens are unsigned JWTs (tests/support/oauth.py), each one distinct, so that the
daemon's whole output at -vv (aiokafka's debug lines included) can be searched for every token
it was given.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import create_conn
from aiokafka.errors import UnsupportedSaslMechanismError

from tests.acceptance.test_security import (
    VERBOSE_JSON,
    assert_secret_absent,
    consume_exactly,
    error_lines,
    sqlstate,
)
from tests.support.broker import SecureListeners
from tests.support.daemon import Daemon, wait_for_positions
from tests.support.kafka import TopicFactory
from tests.support.oauth import TokenEndpoint, issued_tokens, token_command, unsecured_jwt
from tests.support.workload import db_counts, end_offsets, expected, keyed_messages, produce_keyed

OAUTHBEARER = ["--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "OAUTHBEARER"]
CLIENT_SECRET = "client-secret-77c0a9e1"


class _Fixed(AbstractTokenProvider):  # type: ignore[misc]
    async def token(self) -> str:
        return unsecured_jwt()


@pytest.fixture(scope="session")
async def oauth_bootstrap(secure_listeners: SecureListeners) -> str:
    """The SASL listener, checked to take OAUTHBEARER (a broker started before it did not)."""
    host, port = secure_listeners.sasl_bootstrap.rsplit(":", 1)
    try:
        connection = await create_conn(
            host,
            int(port),
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="OAUTHBEARER",
            sasl_oauth_token_provider=_Fixed(),
        )
    except UnsupportedSaslMechanismError:
        pytest.fail(
            f"the broker's SASL listener at {secure_listeners.sasl_bootstrap} does not take"
            " OAUTHBEARER: it was started from an older broker/server.properties. Restart it"
            " (`make broker-down broker-up`).",
            pytrace=False,
        )
    connection.close()
    return secure_listeners.sasl_bootstrap


def assert_tokens_absent(output: str, tokens: list[str]) -> None:
    assert tokens
    for token in tokens:
        assert_secret_absent(output, token)
        # The part a shortened line would still show: the claims, with the random jti.
        assert token.split(".")[1] not in output


@pytest.mark.parametrize("source", ["command", "file", "endpoint"])
async def test_the_daemon_consumes_exactly_over_oauthbearer(
    source: str,
    oauth_bootstrap: str,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    env: dict[str, str] = {}
    endpoint = TokenEndpoint("sqlstate", CLIENT_SECRET)
    if source == "command":
        command, issued = token_command(tmp_path, lifetime_s=3600)
        flags = ["--oauth-token-command", command]
        # With the changelog, so that every kind of client logs in this way: the admin client
        # that creates the changelog, its producers and its reader (and `offsets`' consumer).
        env["SQLSTATE_CHANGELOG"] = "true"
    elif source == "file":
        token_file = tmp_path / "token"
        token_file.write_text(unsecured_jwt() + "\n")
        flags = ["--oauth-token-file", str(token_file)]
    else:
        flags = ["--oauth-token-endpoint", endpoint.url, "--oauth-client-id", "sqlstate"]
        flags += ["--oauth-scope", "kafka"]
        env["SQLSTATE_OAUTH_CLIENT_SECRET"] = CLIENT_SECRET
    with endpoint:
        daemon = await consume_exactly(
            kafka_bootstrap,
            topic_factory,
            group_id,
            tmp_path,
            daemons,
            oauth_bootstrap,
            [*OAUTHBEARER, *flags],
            env,
        )
    log = daemon.log()
    assert "Authenticated via OAUTHBEARER" in log
    if source == "command":
        assert '"event": "changelog_ready"' in log
        assert '"event": "changelog_producer_started"' in log
    assert '"event": "oauth_token_obtained"' in log
    assert '"level": "DEBUG", "logger": "aiokafka' in log  # -vv really logged aiokafka's lines
    if source == "command":
        tokens = issued_tokens(issued)
    elif source == "file":
        tokens = [token_file.read_text().strip()]
    else:
        tokens = endpoint.issued
        assert set(endpoint.scopes) == {"kafka"}
        assert_secret_absent(log, CLIENT_SECRET)
    assert_tokens_absent(log, tokens)


async def test_a_token_that_expires_is_replaced_and_consuming_goes_on(
    oauth_bootstrap: str,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """Tokens of 4 s: the broker closes each connection when its token expires, and the daemon
    logs in again with a new one, several times over, without losing or repeating a record."""
    topic = await topic_factory(2)
    command, issued = token_command(tmp_path, lifetime_s=4)
    database = tmp_path / "state.db"
    daemon = Daemon(
        oauth_bootstrap,
        [topic],
        group_id,
        database,
        *OAUTHBEARER,
        "--oauth-token-command",
        command,
        options=VERBOSE_JSON,
    )
    daemons.append(daemon.start())
    first = keyed_messages(300, partitions=2, keys=30)
    await produce_keyed(kafka_bootstrap, topic, first)
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 30, [daemon])
    started = time.monotonic()
    await asyncio.sleep(6)  # every token the daemon had by then has expired
    second = keyed_messages(300, partitions=2, keys=30)
    await produce_keyed(kafka_bootstrap, topic, second)
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 30, [daemon])
    assert time.monotonic() - started > 6
    assert await daemon.terminate() == 0, daemon.log()[-3000:]

    assert db_counts(database, topic) == expected(first + second)
    log = daemon.log()
    tokens = issued_tokens(issued)
    assert len(tokens) >= 3, log[-3000:]  # fetched again, more than once
    # The broker really ended the expired sessions: aiokafka saw its connections closed.
    assert f"KafkaConnectionError: Connection at {oauth_bootstrap} closed" in log
    assert_tokens_absent(log, tokens)


@pytest.mark.parametrize("fault", ["expired-token", "failing-command"])
async def test_a_refused_or_missing_token_exits_4_with_a_clear_error(
    fault: str,
    oauth_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
) -> None:
    topic = await topic_factory(1)
    token = unsecured_jwt(lifetime_s=-60)
    if fault == "expired-token":
        (tmp_path / "token").write_text(token)
        flags = ["--oauth-token-file", str(tmp_path / "token")]
    else:
        flags = ["--oauth-token-command", f"echo 'no credentials for {token[:6]}' >&2; exit 3"]
    started = time.monotonic()
    code, out, err = await sqlstate(
        [
            *VERBOSE_JSON,
            "run",
            "--bootstrap-servers",
            oauth_bootstrap,
            "--topic",
            topic,
            "--group-id",
            group_id,
            "--database",
            str(tmp_path / "state.db"),
            "--connect-timeout",
            "20",
            *OAUTHBEARER,
            *flags,
        ],
        {},
    )
    output = out + err
    assert code == 4, output
    assert time.monotonic() - started < 15, output  # an answer, not a wait for the timeout
    [line] = error_lines(output)
    if fault == "expired-token":
        assert "refused the OAUTHBEARER token from --oauth-token-file" in line, line
        assert "has not expired" in line, line  # says what to check
        assert_tokens_absent(output, [token])
    else:
        assert line.endswith(
            f"no OAuth token to log in to Kafka with: --oauth-token-command exited with"
            f" status 3: no credentials for {token[:6]}"
        ), line
