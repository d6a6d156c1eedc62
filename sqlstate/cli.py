"""The ``sqlstate`` command: parses flags (each also a SQLSTATE_* variable), calls, prints.

Exit codes: 0 success; 1 unexpected error; 2 bad flags or settings; 3 database unusable (not
SQLite, corrupt, newer schema, missing folder, locked); 4 Kafka unreachable, refusing the SASL
login or TLS handshake, or topic missing;
5 stored position out of range with ``--out-of-range fail``; 6 rebalance failure; 130 forced exit
on a second signal.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sqlstate import __version__, daemon, logs, lookups, output
from sqlstate.errors import SqlstateError
from sqlstate.settings import SASL_MECHANISMS, SECURITY_PROTOCOLS, Security, Settings

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(command: F) -> F:
    """Turn a SqlstateError into one line on stderr and its exit code (traceback with -v)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SqlstateError as error:
            if click.get_current_context().find_root().params.get("verbose", 0) > 0:
                logger.exception("failed")
            click.echo(f"sqlstate: error: {error}", err=True)
            sys.exit(error.exit_code)

    return wrapper  # type: ignore[return-value]


def _option(*names: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*names, envvar=f"SQLSTATE_{env}", show_envvar=True, **kwargs)


database_option = _option(
    "--database",
    env="DATABASE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("sqlstate.db"),
    show_default=True,
    help="SQLite database file.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
# How to connect to Kafka, for every command that does. Passwords come only from the environment
# (SQLSTATE_SASL_PASSWORD, SQLSTATE_SSL_PASSWORD), never from a flag that `ps` would show.
_security_options = [
    _option(
        "--security-protocol",
        env="SECURITY_PROTOCOL",
        type=click.Choice(SECURITY_PROTOCOLS),
        default="PLAINTEXT",
        show_default=True,
        help="Kafka security protocol.",
    ),
    _option(
        "--sasl-mechanism",
        env="SASL_MECHANISM",
        type=click.Choice(SASL_MECHANISMS),
        help="SASL mechanism. The password is read from SQLSTATE_SASL_PASSWORD only.",
    ),
    _option("--sasl-username", env="SASL_USERNAME", help="SASL user name."),
    _option(
        "--ssl-cafile",
        env="SSL_CAFILE",
        type=click.Path(dir_okay=False, path_type=Path),
        help="CA certificates to verify the brokers (PEM).",
    ),
    _option(
        "--ssl-certfile",
        env="SSL_CERTFILE",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Client certificate (PEM). Its key password: SQLSTATE_SSL_PASSWORD.",
    ),
    _option(
        "--ssl-keyfile",
        env="SSL_KEYFILE",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Client private key (PEM).",
    ),
]


def _security(options: dict[str, Any]) -> Security:
    """Take the security flags out of a command's options; the secrets come from the
    environment only."""
    return Security(
        protocol=options.pop("security_protocol"),
        sasl_mechanism=options.pop("sasl_mechanism"),
        sasl_username=options.pop("sasl_username"),
        sasl_password=_secret("SASL_PASSWORD"),
        ssl_cafile=options.pop("ssl_cafile"),
        ssl_certfile=options.pop("ssl_certfile"),
        ssl_keyfile=options.pop("ssl_keyfile"),
        ssl_password=_secret("SSL_PASSWORD"),
    )


def security_options(command: F) -> F:
    """Add the flags of ``_security_options`` to a command, in their order."""
    for option in reversed(_security_options):
        command = option(command)
    return command


def _secret(name: str) -> str | None:
    """A password, from SQLSTATE_<name> only."""
    return os.environ.get(f"SQLSTATE_{name}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sqlstate")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: aiokafka's too).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@_option(
    "--log-format",
    env="LOG_FORMAT",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text, or one JSON object per line.",
)
def main(verbose: int, quiet: bool, log_format: logs.LogFormat) -> None:
    """Consume Kafka topics into SQLite state, exactly once."""
    logs.configure(-1 if quiet else verbose, log_format)


@main.command()
@_option(
    "--bootstrap-servers",
    "-b",
    env="BOOTSTRAP_SERVERS",
    default="127.0.0.1:9092",
    show_default=True,
    help="Kafka bootstrap servers, comma-separated.",
)
@_option(
    "--topic",
    "-t",
    "topics",
    env="TOPIC",
    multiple=True,
    required=True,
    help="Topic to consume; repeat, or separate with commas or spaces.",
)
@_option("--group-id", "-g", env="GROUP_ID", required=True, help="Kafka consumer group.")
@database_option
@_option(
    "--out-of-range",
    env="OUT_OF_RANGE",
    type=click.Choice(["reset", "fail"]),
    default="reset",
    show_default=True,
    help="When a stored position is gone from Kafka: rebuild that partition from the earliest"
    " offset, or stop with exit code 5.",
)
@_option(
    "--isolation-level",
    env="ISOLATION_LEVEL",
    type=click.Choice(["read_committed", "read_uncommitted"]),
    default="read_committed",
    show_default=True,
    help="read_committed never counts records of aborted transactions.",
)
@_option(
    "--max-records",
    env="MAX_RECORDS",
    type=click.IntRange(min=1),
    default=30_000,
    show_default=True,
    help="Most records per batch (one transaction each).",
)
@_option(
    "--client-id",
    env="CLIENT_ID",
    default="sqlstate",
    show_default=True,
    help="Kafka client id; also names the owner in the positions table.",
)
@_option(
    "--session-timeout-ms",
    env="SESSION_TIMEOUT_MS",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Kafka group session timeout.",
)
@_option(
    "--max-poll-interval-ms",
    env="MAX_POLL_INTERVAL_MS",
    type=click.IntRange(min=1),
    default=300_000,
    show_default=True,
    help="Kafka max poll interval.",
)
@_option(
    "--busy-timeout",
    env="BUSY_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for a locked database each try.",
)
@_option(
    "--connect-timeout",
    env="CONNECT_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to reach Kafka at start.",
)
@_option(
    "--shutdown-timeout",
    env="SHUTDOWN_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to leave the group on stop.",
)
@_option(
    "--integrity-check/--no-integrity-check",
    env="INTEGRITY_CHECK",
    default=True,
    show_default=True,
    help="Run PRAGMA quick_check on the database at start.",
)
@security_options
@_option(
    "--metrics-port",
    env="METRICS_PORT",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus /metrics and /healthz on this port (0: any free port).",
)
@_option(
    "--metrics-host",
    env="METRICS_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address for --metrics-port; 0.0.0.0 for every interface.",
)
@_option(
    "--progress-interval",
    env="PROGRESS_INTERVAL",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds between progress lines while catching up.",
)
@_option(
    "--stall-timeout",
    env="STALL_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds of lag without progress, or out of the group, before /healthz fails.",
)
@reports_errors
def run(topics: tuple[str, ...], **options: Any) -> None:
    """Consume TOPICs into the database until SIGTERM or SIGINT."""
    settings = Settings(
        topics=tuple(t for value in topics for t in value.replace(",", " ").split()),
        check_integrity=options.pop("integrity_check"),
        busy_timeout_s=options.pop("busy_timeout"),
        connect_timeout_s=options.pop("connect_timeout"),
        shutdown_timeout_s=options.pop("shutdown_timeout"),
        progress_interval_s=options.pop("progress_interval"),
        stall_timeout_s=options.pop("stall_timeout"),
        security=_security(options),
        **options,
    )
    asyncio.run(daemon.run(settings))


@main.command()
@database_option
@click.option("--list", "list_only", is_flag=True, help="Show applied and pending migrations only.")
@json_option
@reports_errors
def migrate(database: Path, list_only: bool, as_json: bool) -> None:
    """Apply pending schema migrations (``run`` also does this at start)."""
    applied, statuses = asyncio.run(lookups.migrations(database, apply=not list_only))
    rows = [{"name": s.name, "applied_at": s.applied_at} for s in statuses]
    if as_json:
        click.echo(output.as_json(rows))
        return
    click.echo(
        output.table(
            ["migration", "status"],
            [
                [r["name"], f"applied {r['applied_at']}" if r["applied_at"] else "pending"]
                for r in rows
            ],
        )
    )
    if not list_only:
        click.echo(f"applied {len(applied)} migration(s)", err=True)


@main.command()
@database_option
@click.option("--topic", "-t", help="Only this topic.")
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many keys, highest counts first.",
)
@json_option
@reports_errors
def counts(database: Path, topic: str | None, top: int, as_json: bool) -> None:
    """Show the highest message counts per key (from the ``counts`` view)."""
    rows = asyncio.run(lookups.top_counts(database, topic, top))
    if as_json:
        click.echo(
            output.as_json(
                [{"topic": r.topic, "key": output.key_json(r.key), "count": r.count} for r in rows]
            )
        )
        return
    click.echo(
        output.table(
            ["topic", "key", "count"], [[r.topic, output.key_text(r.key), r.count] for r in rows]
        )
    )


@main.command()
@database_option
@_option(
    "--bootstrap-servers",
    "-b",
    env="OFFSETS_BOOTSTRAP_SERVERS",
    help="Also ask Kafka for log-end offsets and show the lag.",
)
@click.option(
    "--isolation-level",
    type=click.Choice(["read_committed", "read_uncommitted"]),
    default="read_committed",
    show_default=True,
    help="End offsets as seen this way.",
)
@security_options
@json_option
@reports_errors
def offsets(
    database: Path,
    bootstrap_servers: str | None,
    isolation_level: str,
    as_json: bool,
    **security: Any,
) -> None:
    """Show each partition's stored position, owner and last update."""
    connection = _security(security)
    reports = asyncio.run(
        lookups.positions(database, bootstrap_servers, isolation_level, connection)
    )
    rows = [
        {
            "topic": r.position.topic,
            "partition": r.position.partition,
            "next_offset": r.position.next_offset,
            "epoch": r.position.epoch,
            "owner": r.position.owner,
            "updated_at": r.position.updated_at,
            "log_end_offset": r.position.log_end_offset,
            **({"end_offset": r.end_offset, "lag": r.lag} if bootstrap_servers else {}),
        }
        for r in reports
    ]
    if as_json:
        click.echo(output.as_json(rows))
        return
    headers = list(rows[0]) if rows else ["topic", "partition", "next_offset"]
    click.echo(output.table(headers, [list(r.values()) for r in rows]))
