"""The ``sqlstate`` command: parses flags (each also a SQLSTATE_* variable), calls, prints.

Exit codes: 0 success; 1 unexpected error; 2 bad flags or settings; 3 database unusable (not
SQLite, corrupt, newer schema, missing folder, locked); 4 Kafka unreachable, refusing the SASL
login or TLS handshake, or topic missing;
5 stored position out of range with ``--out-of-range fail``; 6 rebalance failure; 7 Kafka refused
what retrying cannot fix; 8 a record that does not decode with ``--on-bad-record fail``; 9 and 10
``verify`` found the state different, or could not fully check it; 11 more records in a row
rejected than ``--max-rejected-in-a-row`` allows; 12 the schema registry refused sqlstate or is
not one; 124 ``wait`` timed out; 130 forced exit on a second signal.
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

from sqlstate import __version__
from sqlstate.app import daemon, rebuild, replay, verify
from sqlstate.app import processor_checks as check_processors
from sqlstate.cli import lookups, output, verify_report
from sqlstate.errors import SqlstateError
from sqlstate.observe import logs
from sqlstate.settings import (
    BAD_RECORD_POLICIES,
    FORMATS,
    ISOLATION_LEVELS,
    OUT_OF_RANGE_POLICIES,
    PROCESSOR_ERROR_POLICIES,
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    WAIT_TIMEOUT_S,
    Security,
    Settings,
    VerifyOptions,
    default,
)
from sqlstate.state import snapshot, wait

logger = logging.getLogger("sqlstate.cli")  # its documented name
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


def _setting(*names: str, field: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    """An option that sets the ``Settings`` field ``field``, with that field's default."""
    return _option(*names, field, env=env, default=default(field), show_default=True, **kwargs)


database_option = _setting(
    "--database",
    field="database",
    env="DATABASE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite database file.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
# How to connect to Kafka, for every command that does. Passwords come only from the environment
# (SQLSTATE_SASL_PASSWORD, SQLSTATE_SSL_PASSWORD, SQLSTATE_OAUTH_CLIENT_SECRET), never from a
# flag that `ps` would show.
_security_options = [
    _option(
        "--security-protocol",
        env="SECURITY_PROTOCOL",
        type=click.Choice(SECURITY_PROTOCOLS),
        default=default("protocol", Security),
        show_default=True,
        help="Kafka security protocol.",
    ),
    _option(
        "--sasl-mechanism",
        env="SASL_MECHANISM",
        type=click.Choice(SASL_MECHANISMS),
        help="SASL mechanism. The password is read from SQLSTATE_SASL_PASSWORD only;"
        " OAUTHBEARER takes a token from one --oauth-token-* source instead.",
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
    _option(
        "--oauth-token-command",
        env="OAUTH_TOKEN_COMMAND",
        help="OAUTHBEARER: a shell command that prints the token; run again before it expires.",
    ),
    _option(
        "--oauth-token-file",
        env="OAUTH_TOKEN_FILE",
        type=click.Path(dir_okay=False, path_type=Path),
        help="OAUTHBEARER: a file holding the token; read again whenever it changes.",
    ),
    _option(
        "--oauth-token-endpoint",
        env="OAUTH_TOKEN_ENDPOINT",
        help="OAUTHBEARER: an OAuth token endpoint (client credentials grant). The client"
        " secret is read from SQLSTATE_OAUTH_CLIENT_SECRET only.",
    ),
    _option(
        "--oauth-client-id", env="OAUTH_CLIENT_ID", help="Client id at --oauth-token-endpoint."
    ),
    _option("--oauth-scope", env="OAUTH_SCOPE", help="Scope asked of --oauth-token-endpoint."),
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
        oauth_token_command=options.pop("oauth_token_command"),
        oauth_token_file=options.pop("oauth_token_file"),
        oauth_token_endpoint=options.pop("oauth_token_endpoint"),
        oauth_client_id=options.pop("oauth_client_id"),
        oauth_client_secret=_secret("OAUTH_CLIENT_SECRET"),
        oauth_scope=options.pop("oauth_scope"),
    )


def security_options(command: F) -> F:
    """Add the flags of ``_security_options`` to a command, in their order."""
    for option in reversed(_security_options):
        command = option(command)
    return command


def _secret(name: str) -> str | None:
    """A password, from SQLSTATE_<name> only."""
    return os.environ.get(f"SQLSTATE_{name}")


# Which processors run and how records reach them: `run`'s flags, which `check` and `replay` take
# too, so that they load and check the same processors.
_processor_options = [
    _setting(
        "--processor",
        field="processors",
        env="PROCESSOR",
        multiple=True,
        help="State to keep (repeat): a built-in (counts, latest, windowed-counts) or"
        " PACKAGE.MODULE:NAME of your own. Default: counts, unless --sql is given.",
    ),
    _setting(
        "--sql",
        field="sql_files",
        env="SQL",
        multiple=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help='A processor written in SQL (repeat); see README, "Your own state".',
    ),
    _setting(
        "--key-format",
        field="key_format",
        env="KEY_FORMAT",
        type=click.Choice(FORMATS),
        help="How processors get keys: raw bytes, UTF-8 text, or validated JSON text; avro,"
        " protobuf and json-schema (run, verify, replay): a schema registry's wire format, as"
        " JSON text.",
    ),
    _setting(
        "--value-format",
        field="value_format",
        env="VALUE_FORMAT",
        type=click.Choice(FORMATS),
        help="How processors get values: raw bytes, UTF-8 text, or validated JSON text; avro,"
        " protobuf and json-schema (run, verify, replay): a schema registry's wire format, as"
        " JSON text.",
    ),
    _setting(
        "--on-bad-record",
        field="on_bad_record",
        env="ON_BAD_RECORD",
        type=click.Choice(BAD_RECORD_POLICIES),
        help="A record that does not decode: exit with code 8 before committing its batch, leave it"
        " out (counted and logged), or keep it in rejected_records.",
    ),
    _setting(
        "--window",
        field="window",
        env="WINDOW",
        help="windowed-counts: the tumbling window of record time (500ms, 30s, 1m, 2h, 1d, 1w).",
    ),
    _setting(
        "--retention",
        field="retention",
        env="RETENTION",
        help="windowed-counts: keep windows this long behind each partition's newest record.",
    ),
]


def processor_options(command: F) -> F:
    """Add the flags of ``_processor_options`` to a command, in their order."""
    for option in reversed(_processor_options):
        command = option(command)
    return command


# What a record that a processor fails on does: `run`'s flags, which `verify` takes too, so that
# it recomputes the state as the run made it.
_processor_error_options = [
    _setting(
        "--on-processor-error",
        field="on_processor_error",
        env="ON_PROCESSOR_ERROR",
        type=click.Choice(PROCESSOR_ERROR_POLICIES),
        help="A record a processor fails on (its Python raises, its SQL fails): stop before"
        " committing its batch, or keep it in rejected_records and commit the rest.",
    ),
    _setting(
        "--max-rejected-in-a-row",
        field="max_rejected_in_a_row",
        env="MAX_REJECTED_IN_A_ROW",
        type=int,
        help="--on-processor-error dead-letter: stop with exit code 11 when more records than"
        " this are rejected in a row, with none applied between them.",
    ),
]


def processor_error_options(command: F) -> F:
    """Add the flags of ``_processor_error_options`` to a command, in their order."""
    for option in reversed(_processor_error_options):
        command = option(command)
    return command


changelog_option = _setting(
    "--changelog/--no-changelog",
    field="changelog",
    env="CHANGELOG",
    help="More hosts: publish each batch's state changes to a compacted changelog topic per"
    " input topic, so state follows its partitions between hosts (docs/scaling.md).",
)


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
@_setting(
    "--bootstrap-servers",
    "-b",
    field="bootstrap_servers",
    env="BOOTSTRAP_SERVERS",
    help="Kafka bootstrap servers, comma-separated.",
)
@_option(
    "--topic",
    "-t",
    "topics",
    env="TOPIC",
    multiple=True,
    default=default("topics"),
    help="Topic to consume; repeat, or separate with commas or spaces.",
)
@_setting(
    "--topic-pattern",
    field="topic_pattern",
    env="TOPIC_PATTERN",
    help="Instead of --topic: every topic whose whole name matches this regular expression,"
    " also those created later (seen within --metadata-max-age); see docs/topic-pattern.md.",
)
@_option("--group-id", "-g", env="GROUP_ID", required=True, help="Kafka consumer group.")
@database_option
@_setting(
    "--out-of-range",
    field="out_of_range",
    env="OUT_OF_RANGE",
    type=click.Choice(OUT_OF_RANGE_POLICIES),
    help="When a stored position is gone from Kafka: rebuild that partition from the earliest"
    " offset, or stop with exit code 5.",
)
@_setting(
    "--start-from",
    field="start_from",
    env="START_FROM",
    metavar="earliest|latest|TIME",
    help="Where a partition the database has never seen starts: its earliest offset, its end,"
    " or the first record at or after TIME (ISO 8601 with a zone, or -2h, -7d back from its"
    " first claim). Never moves a stored position.",
)
@_setting(
    "--isolation-level",
    field="isolation_level",
    env="ISOLATION_LEVEL",
    type=click.Choice(ISOLATION_LEVELS),
    help="read_committed never counts records of aborted transactions.",
)
@processor_options
@processor_error_options
@_setting(
    "--schema-registry-url",
    field="schema_registry_url",
    env="SCHEMA_REGISTRY_URL",
    help="Schema registry of the avro, protobuf and json-schema formats (Confluent's API; for"
    " Apicurio Registry, ending in /apis/ccompat/v7).",
)
@_setting(
    "--schema-registry-username",
    field="schema_registry_username",
    env="SCHEMA_REGISTRY_USERNAME",
    help="Schema registry user (HTTP basic auth); its password from"
    " SQLSTATE_SCHEMA_REGISTRY_PASSWORD only.",
)
@_setting(
    "--schema-registry-ca-file",
    field="schema_registry_ca_file",
    env="SCHEMA_REGISTRY_CA_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA certificates to verify an https schema registry (PEM).",
)
@changelog_option
@_setting(
    "--changelog-replication-factor",
    field="changelog_replication_factor",
    env="CHANGELOG_REPLICATION_FACTOR",
    type=int,
    help="Replication factor of the changelog topics sqlstate creates; -1: the broker's default.",
)
@_option(
    "--standby",
    "standby",
    env="STANDBY",
    metavar="all|none|N",
    default=None,
    help="With --changelog: all (the default) also applies the changelogs of the partitions"
    " other hosts own, so this file holds the complete state; none keeps only its own; a"
    " number N has each partition followed by N hosts besides its owner, chosen by the group"
    " (progress.role says which partitions this file keeps).",
)
@_setting(
    "--max-records",
    field="max_records",
    env="MAX_RECORDS",
    type=click.IntRange(min=1),
    help="Most records per batch (one transaction each).",
)
@_setting(
    "--client-id",
    field="client_id",
    env="CLIENT_ID",
    help="Kafka client id; also names the owner in the positions table.",
)
@_setting(
    "--session-timeout-ms",
    field="session_timeout_ms",
    env="SESSION_TIMEOUT_MS",
    type=click.IntRange(min=1),
    help="Kafka group session timeout.",
)
@_setting(
    "--heartbeat-interval-ms",
    field="heartbeat_interval_ms",
    env="HEARTBEAT_INTERVAL_MS",
    type=click.IntRange(min=1),
    help="Kafka group heartbeat interval: the other members learn of a rebalance (one leaving)"
    " at their next heartbeat.",
)
@_setting(
    "--max-poll-interval-ms",
    field="max_poll_interval_ms",
    env="MAX_POLL_INTERVAL_MS",
    type=click.IntRange(min=1),
    help="Kafka max poll interval.",
)
@_setting(
    "--metadata-max-age",
    field="metadata_max_age_s",
    env="METADATA_MAX_AGE",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between refreshes of the topics' metadata: partitions added to a topic are"
    " counted from the next refresh on.",
)
@_setting(
    "--busy-timeout",
    field="busy_timeout_s",
    env="BUSY_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to wait for a locked database each try.",
)
@_setting(
    "--connect-timeout",
    field="connect_timeout_s",
    env="CONNECT_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to reach Kafka at start.",
)
@_setting(
    "--shutdown-timeout",
    field="shutdown_timeout_s",
    env="SHUTDOWN_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to leave the group on stop.",
)
@_setting(
    "--integrity-check/--no-integrity-check",
    field="check_integrity",
    env="INTEGRITY_CHECK",
    help="Run PRAGMA quick_check on the database at start.",
)
@_setting(
    "--commit-offsets-to-kafka/--no-commit-offsets-to-kafka",
    field="commit_offsets_to_kafka",
    env="COMMIT_OFFSETS_TO_KAFKA",
    help="Also commit each committed position to the group's offsets in Kafka, for lag tools"
    " (informational: positions are only ever read from the database).",
)
@security_options
@_setting(
    "--metrics-port",
    field="metrics_port",
    env="METRICS_PORT",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus /metrics and /healthz on this port (0: any free port).",
)
@_setting(
    "--metrics-host",
    field="metrics_host",
    env="METRICS_HOST",
    help="Address for --metrics-port; 0.0.0.0 for every interface.",
)
@_setting(
    "--progress-interval",
    field="progress_interval_s",
    env="PROGRESS_INTERVAL",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between progress lines while catching up.",
)
@_setting(
    "--stall-timeout",
    field="stall_timeout_s",
    env="STALL_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds of lag without progress, or out of the group, before /healthz fails.",
)
@reports_errors
def run(topics: tuple[str, ...], **options: Any) -> None:
    """Consume TOPICs into the database until SIGTERM or SIGINT."""
    # Each option is named after its Settings field, so the parsed values go straight in.
    settings = Settings(
        topics=tuple(t for value in topics for t in value.replace(",", " ").split()),
        security=_security(options),
        schema_registry_password=_secret("SCHEMA_REGISTRY_PASSWORD"),
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


@main.command("snapshot")
@database_option
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
@json_option
@reports_errors
def take_snapshot(database: Path, dest: Path, force: bool, as_json: bool) -> None:
    """Write a consistent copy of the database to DEST, also while a daemon writes to it."""
    taken = asyncio.run(snapshot.take(database, dest, force=force))
    positions = output.positions_json(taken.positions)
    if as_json:
        summary = {
            "database": str(taken.source),
            "snapshot": str(taken.path),
            "bytes": taken.size_bytes,
            "seconds": round(taken.seconds, 3),
            "quick_check": "ok",
            "positions": positions,
        }
        click.echo(output.as_json([summary]))
        return
    click.echo(
        f"snapshot of {taken.source} written to {taken.path}: {output.size(taken.size_bytes)},"
        f" quick_check ok, {len(positions)} partition(s), in {taken.seconds:.2f} s"
    )
    if positions:
        click.echo(output.table(list(positions[0]), [list(p.values()) for p in positions]))


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
    rows, read_at = asyncio.run(lookups.top_counts(database, topic, top))
    if as_json:
        # Each row carries the positions of its topic's partitions it was counted at.
        click.echo(
            output.as_json(
                [
                    {
                        "topic": r.topic,
                        "key": output.key_json(r.key),
                        "count": r.count,
                        "positions": output.positions_json(read_at, r.topic),
                    }
                    for r in rows
                ]
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
    type=click.Choice(ISOLATION_LEVELS),
    default=default("isolation_level"),
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
            "start_from": r.position.start_from,
            "start_offset": r.position.start_offset,
            **({"end_offset": r.end_offset, "lag": r.lag} if bootstrap_servers else {}),
        }
        for r in reports
    ]
    if as_json:
        click.echo(output.as_json(rows))
        return
    headers = list(rows[0]) if rows else ["topic", "partition", "next_offset"]
    click.echo(output.table(headers, [list(r.values()) for r in rows]))


@main.command("wait")
@database_option
@click.option(
    "--until",
    multiple=True,
    required=True,
    metavar="TOPIC:PARTITION:OFFSET[,...]",
    help="Wait until the record at OFFSET of TOPIC's PARTITION is in the database; repeat, or"
    " separate with commas.",
)
@_option(
    "--timeout",
    env="WAIT_TIMEOUT",
    default=f"{WAIT_TIMEOUT_S:g}s",
    show_default=True,
    help="Give up after this long (500ms, 5s, 1m) with exit code 124.",
)
@json_option
@reports_errors
def wait_until(database: Path, until: tuple[str, ...], timeout: str, as_json: bool) -> None:
    """Wait until the database holds the given records: read your writes."""
    records = wait.parse_until(until)
    timeout_s = wait.parse_timeout(timeout)
    try:
        waits = asyncio.run(wait.wait_for(database, records, timeout_s))
    except wait.NotAppliedInTime as error:
        _print_waits(error.waits, as_json)
        raise
    _print_waits(waits, as_json)


def _print_waits(waits: list[wait.PartitionWait], as_json: bool) -> None:
    rows = [
        {
            "topic": w.topic,
            "partition": w.partition,
            "offset": w.offset,
            "next_offset": w.next_offset,
            "applied": w.applied,
        }
        for w in waits
    ]
    if as_json:
        click.echo(output.as_json(rows))
        return
    click.echo(output.table(list(rows[0]), [list(r.values()) for r in rows]))


@main.command()
@click.argument("specs", metavar="[PROCESSOR]...", nargs=-1)
@processor_options
@changelog_option
@reports_errors
def check(specs: tuple[str, ...], **options: Any) -> None:
    """Check processors as `run` checks them at start, with no Kafka and no database.

    Each PROCESSOR is a built-in, PACKAGE.MODULE:NAME or a .sql file, as --processor and --sql
    give them. Exit 0 with one line per processor, or 2 with the first problem.
    """
    options["processors"] += tuple(s for s in specs if not s.endswith(".sql"))
    options["sql_files"] += tuple(Path(s) for s in specs if s.endswith(".sql"))
    for line in check_processors.checked_lines(**options):
        click.echo(line)


@main.command("replay")
@_option(
    "--records",
    env="RECORDS",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The records, one JSON object a line (docs/testing-processors.md).",
)
@_option(
    "--database",
    env="REPLAY_DATABASE",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The SQLite file to write: created, or continued from its positions.",
)
@_setting(
    "--batch-size",
    field="max_records",
    env="BATCH_SIZE",
    type=click.IntRange(min=1),
    help="Records per batch (one transaction each), as --max-records makes them.",
)
@processor_options
@processor_error_options
@reports_errors
def replay_records(records: Path, database: Path, **options: Any) -> None:
    """Run processors over the records of a file into a database, as `run` would, without Kafka."""
    replayed, names = asyncio.run(
        replay.replay_file(
            records,
            database,
            schema_registry_password=_secret("SCHEMA_REGISTRY_PASSWORD"),
            **options,
        )
    )
    rejected = f", {replayed.rejected} rejected by processors" if replayed.rejected else ""
    click.echo(
        f"replayed {replayed.records} record(s) in {replayed.batches} batch(es) into {database}"
        f" ({', '.join(names)}); {replayed.skipped} skipped at stored positions,"
        f" {replayed.bad_records} that did not decode{rejected}"
    )


# The registry's formats decode in replay as in run: with run's registry flags.
_REGISTRY_FLAGS = ("schema_registry_url", "schema_registry_username", "schema_registry_ca_file")
replay_records.params += [p for p in run.params if p.name in _REGISTRY_FLAGS]


# `verify` reads the topics as the run that made the file did: the same flags, the same variables
# (its own only below): the processor and security flags, and these of `run`'s. The isolation
# level is the file's own, recorded at its first claim.
_RUN_FLAGS_OF_VERIFY = (
    "bootstrap_servers",
    "topics",
    "database",
    "max_records",
    "client_id",
    "busy_timeout_s",
    "connect_timeout_s",
    "schema_registry_url",
    "schema_registry_username",
    "schema_registry_ca_file",
)
# verify joins no group; Settings, which it shares with run, asks for one.
VERIFY_GROUP_ID = "sqlstate-verify"


@main.command("verify")
@_option(
    "--allow-unchecked",
    "allow_unchecked",
    env="ALLOW_UNCHECKED",
    is_flag=True,
    default=default("allow_unchecked", VerifyOptions),
    help="Exit 0, not 10, when the only differences are in partitions whose records Kafka"
    " deleted (they cannot be read again).",
)
@_option(
    "--samples",
    "samples",
    env="SAMPLES",
    type=click.IntRange(min=0),
    default=default("samples", VerifyOptions),
    show_default=True,
    help="Rows shown per table and partition that differ.",
)
@processor_options
@processor_error_options
@security_options
@json_option
@reports_errors
def verify_command(
    topics: tuple[str, ...], allow_unchecked: bool, samples: int, as_json: bool, **options: Any
) -> None:
    """Recompute the database's state from Kafka and report every difference (exit 0: identical;
    9: different; 10: not fully checked, records deleted from Kafka)."""
    settings = Settings(
        topics=tuple(t for value in topics for t in value.replace(",", " ").split()),
        group_id=VERIFY_GROUP_ID,
        security=_security(options),
        schema_registry_password=_secret("SCHEMA_REGISTRY_PASSWORD"),
        **options,
    )
    verdict = asyncio.run(verify.verify(settings, VerifyOptions(allow_unchecked, samples)))
    if as_json:
        click.echo(output.as_json([verify_report.as_document(verdict)]))
    else:
        click.echo(verify_report.as_text(verdict))
    sys.exit(verdict.exit_code)


verify_command.params[:0] = [p for p in run.params if p.name in _RUN_FLAGS_OF_VERIFY]


@main.command("rebuild")
@_option(
    "--work-file",
    "work_file",
    env="REBUILD_WORK_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The file the new state is built in (default: the database's path + .rebuild).",
)
@_option(
    "--hand-over-gap",
    "hand_over_gap",
    env="REBUILD_HAND_OVER_GAP",
    type=click.IntRange(min=0),
    default=rebuild.RebuildOptions.hand_over_gap,
    show_default=True,
    help="Hand over once the live file is at most this many records ahead of the new state.",
)
@_option(
    "--group-id",
    "new_group_id",
    env="GROUP_ID",
    default=None,
    help="For a file made with --changelog: the consumer group it moves to, a name the group"
    " never had, the same on every host (its changelogs hold the new state).",
)
@processor_options
@processor_error_options
@security_options
@reports_errors
def rebuild_command(
    topics: tuple[str, ...],
    work_file: Path | None,
    hand_over_gap: int,
    new_group_id: str | None,
    **options: Any,
) -> None:
    """Build the state anew with other processors beside the live file, while the daemon
    serves it, then hand it over (the daemon then exits 13: restart it with the new flags)."""
    settings = Settings(
        topics=tuple(t for value in topics for t in value.replace(",", " ").split()),
        group_id=VERIFY_GROUP_ID,
        security=_security(options),
        schema_registry_password=_secret("SCHEMA_REGISTRY_PASSWORD"),
        **options,
    )
    rebuilt = asyncio.run(
        rebuild.rebuild(settings, rebuild.RebuildOptions(work_file, hand_over_gap, new_group_id))
    )
    click.echo(
        f"rebuilt {settings.database} from {rebuilt.records} record(s) and handed it over at"
        f" {rebuilt.partitions} partition(s)' positions (write lock held {rebuilt.held_s:.3f} s)"
    )


rebuild_command.params[:0] = [p for p in run.params if p.name in _RUN_FLAGS_OF_VERIFY]
