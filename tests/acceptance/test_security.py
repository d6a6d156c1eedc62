"""``sqlstate run`` and ``sqlstate offsets`` over the test broker's SASL and SSL listeners.

The messages are produced over PLAINTEXT (the tests' helpers speak nothing else); only the
command under test connects securely. Every daemon here logs with -vv and JSON, so aiokafka's
own debug lines (the SASL exchange among them) are in the output searched for the password.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.broker import SecureListeners
from tests.support.daemon import Daemon, wait_for_positions
from tests.support.db import writing
from tests.support.kafka import TopicFactory
from tests.support.workload import db_counts, end_offsets, expected, keyed_messages, produce_keyed

VERBOSE_JSON = ("-vv", "--log-format", "json")


def assert_secret_absent(output: str, secret: str) -> None:
    """Not the password, nor its hex or base64 (how a debug line would show raw auth bytes)."""
    assert secret not in output
    assert secret.encode().hex() not in output
    assert base64.b64encode(secret.encode()).decode().rstrip("=") not in output


def sasl_args(secure: SecureListeners, mechanism: str) -> list[str]:
    return [
        "--security-protocol",
        "SASL_PLAINTEXT",
        "--sasl-mechanism",
        mechanism,
        "--sasl-username",
        secure.username,
    ]


async def sqlstate(
    args: Sequence[str], env: dict[str, str], timeout: float = 30
) -> tuple[int, str, str]:
    """Run the sqlstate command; (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sqlstate",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def consume_exactly(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
    bootstrap: str,
    security: Sequence[str],
    env: dict[str, str],
) -> Daemon:
    """Produce, run the daemon with ``security`` until caught up, stop it, check the counts."""
    topic = await topic_factory(2)
    messages = keyed_messages(400, partitions=2, keys=40)
    await produce_keyed(kafka_bootstrap, topic, messages)
    database = tmp_path / "state.db"
    daemon = Daemon(
        bootstrap, [topic], group_id, database, *security, env=env, options=VERBOSE_JSON
    )
    daemons.append(daemon.start())
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 30, [daemon])
    assert await daemon.terminate() == 0, daemon.log()[-3000:]
    assert db_counts(database, topic) == expected(messages)
    # `offsets` connects with the same flags and sees the daemon caught up.
    code, output, errors = await sqlstate(
        [
            "offsets",
            "--database",
            str(database),
            "--bootstrap-servers",
            bootstrap,
            "--json",
            *security,
        ],
        env,
    )
    assert code == 0, errors
    assert {(row["partition"], row["lag"]) for row in json.loads(output)} == {(0, 0), (1, 0)}
    return daemon


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_the_daemon_consumes_exactly_over_sasl(
    mechanism: str,
    secure_listeners: SecureListeners,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    daemon = await consume_exactly(
        kafka_bootstrap,
        topic_factory,
        group_id,
        tmp_path,
        daemons,
        secure_listeners.sasl_bootstrap,
        sasl_args(secure_listeners, mechanism),
        {"SQLSTATE_SASL_PASSWORD": secure_listeners.password},
    )
    log = daemon.log()
    assert f"Authenticated as {secure_listeners.username} via {mechanism}" in log
    assert '"level": "DEBUG", "logger": "aiokafka' in log  # -vv really logged aiokafka's lines
    assert_secret_absent(log, secure_listeners.password)


@pytest.mark.parametrize("mutual", [False, True], ids=["server-cert", "mutual-tls"])
async def test_the_daemon_consumes_exactly_over_ssl(
    mutual: bool,
    secure_listeners: SecureListeners,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    security = ["--security-protocol", "SSL", "--ssl-cafile", str(secure_listeners.ca_file)]
    env: dict[str, str] = {}
    if mutual:
        security += [
            "--ssl-certfile",
            str(secure_listeners.client_cert),
            "--ssl-keyfile",
            str(secure_listeners.client_key),
        ]
        env["SQLSTATE_SSL_PASSWORD"] = secure_listeners.client_key_password
    daemon = await consume_exactly(
        kafka_bootstrap,
        topic_factory,
        group_id,
        tmp_path,
        daemons,
        secure_listeners.ssl_bootstrap,
        security,
        env,
    )
    if mutual:
        assert_secret_absent(daemon.log(), secure_listeners.client_key_password)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("sqlstate: error:")]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_a_wrong_password_exits_4_at_once_with_a_clear_error(
    mechanism: str,
    secure_listeners: SecureListeners,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
) -> None:
    topic = await topic_factory(1)
    wrong = "not-the-password-5c1e"
    started = time.monotonic()
    code, out, err = await sqlstate(
        [
            *VERBOSE_JSON,
            "run",
            "--bootstrap-servers",
            secure_listeners.sasl_bootstrap,
            "--topic",
            topic,
            "--group-id",
            group_id,
            "--database",
            str(tmp_path / "state.db"),
            "--connect-timeout",
            "20",
            *sasl_args(secure_listeners, mechanism),
        ],
        {"SQLSTATE_SASL_PASSWORD": wrong},
    )
    elapsed = time.monotonic() - started
    output = out + err

    assert code == 4, output
    # A refused login is an answer, not a timeout: no waiting for --connect-timeout.
    assert elapsed < 15, output
    [line] = error_lines(output)
    assert "refused the SASL login" in line, line
    assert mechanism in line, line
    assert secure_listeners.username in line, line
    assert "SQLSTATE_SASL_PASSWORD" in line, line  # says what to fix
    assert_secret_absent(output, wrong)


async def test_an_untrusted_broker_certificate_exits_4_with_a_clear_error(
    secure_listeners: SecureListeners,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
) -> None:
    """Without --ssl-cafile only the system's CAs are trusted, and they never signed ours."""
    topic = await topic_factory(1)
    code, _, output = await sqlstate(
        [
            "run",
            "--bootstrap-servers",
            secure_listeners.ssl_bootstrap,
            "--topic",
            topic,
            "--group-id",
            group_id,
            "--database",
            str(tmp_path / "state.db"),
            "--connect-timeout",
            "20",
            "--security-protocol",
            "SSL",
        ],
        {},
    )
    assert code == 4, output
    [line] = error_lines(output)
    assert "TLS handshake" in line, line
    assert "certificate verify failed" in line, line
    assert "--ssl-cafile" in line, line


async def test_offsets_reports_a_refused_login_like_run(
    secure_listeners: SecureListeners,
    tmp_path: Path,
) -> None:
    database = tmp_path / "state.db"
    code, _, output = await sqlstate(["migrate", "--database", str(database)], {})
    assert code == 0, output
    # An empty database asks Kafka nothing, so give it a position to look up.
    with writing(database) as conn:
        conn.execute(
            "INSERT INTO positions (topic, partition, next_offset, epoch, owner, updated_at)"
            " VALUES ('some-topic', 0, 0, 1, 'test', '2026-01-01T00:00:00Z')"
        )
    code, _, output = await sqlstate(
        [
            "offsets",
            "--database",
            str(database),
            "--bootstrap-servers",
            secure_listeners.sasl_bootstrap,
            *sasl_args(secure_listeners, "SCRAM-SHA-256"),
        ],
        {"SQLSTATE_SASL_PASSWORD": "wrong-password-9a0b"},
    )
    assert code == 4, output
    [line] = error_lines(output)
    assert "refused the SASL login" in line, line


async def test_the_daemons_database_files_are_readable_by_their_owner_only(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    group_id: str,
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """They hold record payloads: the file the daemon creates, and the -wal and -shm beside it
    while it runs, are 0600 whatever the umask lets through (0644 with the usual 022)."""
    topic = await topic_factory(1)
    messages = keyed_messages(50, partitions=1, keys=5)
    await produce_keyed(kafka_bootstrap, topic, messages)
    database = tmp_path / "state.db"
    daemon = Daemon(kafka_bootstrap, [topic], group_id, database, env={})
    daemons.append(daemon.start())
    await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 30, [daemon])
    files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    assert {path.name: path.stat().st_mode & 0o777 for path in files} == {
        "state.db": 0o600,
        "state.db-wal": 0o600,
        "state.db-shm": 0o600,
    }
    assert await daemon.terminate() == 0, daemon.log()[-3000:]
    assert db_counts(database, topic) == expected(messages)
