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
from tests.support.db import writing
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


async def test_expiring_tokens_are_replaced_and_an_outage_of_tokens_is_waited_out(
    oauth_bootstrap: str,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """Tokens of 3 s in a file that a "sidecar" rewrites every second: the broker closes each
    connection when its token expires, and the daemon logs in again with the file's new token.
    Then the file is gone for 3.5 s, longer than any token lasts: connections fail meanwhile and
    are tried again, as for an unreachable broker, and consuming goes on once a token is back,
    without losing or repeating a record."""
    topic = await topic_factory(2)
    token_file = tmp_path / "token"
    tokens: list[str] = []
    sidecar_on = asyncio.Event()

    async def sidecar() -> None:
        while True:
            await sidecar_on.wait()
            tokens.append(unsecured_jwt(lifetime_s=3))
            (tmp_path / "token.new").write_text(tokens[-1])
            (tmp_path / "token.new").replace(token_file)
            await asyncio.sleep(1)

    sidecar_on.set()
    writing = asyncio.create_task(sidecar())
    try:
        await asyncio.sleep(0.1)
        database = tmp_path / "state.db"
        daemon = Daemon(
            oauth_bootstrap,
            [topic],
            group_id,
            database,
            *OAUTHBEARER,
            "--oauth-token-file",
            str(token_file),
            options=VERBOSE_JSON,
        )
        daemons.append(daemon.start())
        first = keyed_messages(300, partitions=2, keys=30)
        await produce_keyed(kafka_bootstrap, topic, first)
        await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 30, [daemon])
        await asyncio.sleep(3.5)  # the first token expires: the daemon logs in with a later one
        sidecar_on.clear()
        await asyncio.sleep(0.1)
        token_file.unlink()
        await asyncio.sleep(3.5)  # every token the daemon had has expired
        second = keyed_messages(300, partitions=2, keys=30)
        await produce_keyed(kafka_bootstrap, topic, second)
        sidecar_on.set()
        await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 30, [daemon])
        assert await daemon.terminate() == 0, daemon.log()[-3000:]
    finally:
        writing.cancel()

    assert db_counts(database, topic) == expected(first + second)
    log = daemon.log()
    assert log.count('"event": "oauth_token_obtained"') >= 3, log[-3000:]
    # The broker really ended the expired sessions, and logging in failed while the file was
    # gone: aiokafka saw its connections closed and could not open new ones.
    assert f"KafkaConnectionError: Connection at {oauth_bootstrap} closed" in log
    assert f"--oauth-token-file {token_file}: no such file" in log
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
        # `offsets` says the same, as quickly. run migrated the file; give it a position to
        # look up, since an empty database asks Kafka nothing.
        with writing(tmp_path / "state.db") as conn:
            conn.execute(
                "INSERT INTO positions (topic, partition, next_offset, epoch, owner, updated_at)"
                " VALUES (?, 0, 0, 1, 'test', '2026-01-01T00:00:00Z')",
                (topic,),
            )
        started = time.monotonic()
        code, _, errors = await sqlstate(
            [
                "offsets",
                "--database",
                str(tmp_path / "state.db"),
                "--bootstrap-servers",
                oauth_bootstrap,
                *OAUTHBEARER,
                *flags,
            ],
            {},
        )
        assert code == 4, errors
        assert time.monotonic() - started < 15, errors
        [line] = error_lines(errors)
        assert "refused the OAUTHBEARER token from --oauth-token-file" in line, line
    else:
        assert line.endswith(
            f"no OAuth token to log in to Kafka with: --oauth-token-command exited with"
            f" status 3: no credentials for {token[:6]}"
        ), line
