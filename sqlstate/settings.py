"""Settings of a ``sqlstate run``: one frozen dataclass, built from flags and SQLSTATE_* variables.

Every default is written here once, as a field's default: the CLI declares each option with its
environment variable and takes its default from the field (``default``), and the read-only
commands take theirs from here too. This module validates the result. Secrets are excluded from
``repr`` so a logged settings object never shows a password. ``Security`` is the part that
``sqlstate offsets`` shares with ``run``: how to connect to Kafka.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

from sqlstate.errors import ConfigError

OutOfRangePolicy = Literal["reset", "fail"]
IsolationLevel = Literal["read_committed", "read_uncommitted"]
OUT_OF_RANGE_POLICIES: tuple[str, ...] = get_args(OutOfRangePolicy)
ISOLATION_LEVELS: tuple[str, ...] = get_args(IsolationLevel)
# How keys and values reach the processors (sqlstate/kafka/decoding.py), and what a record that does
# not decode does.
# avro, protobuf and json-schema read the schema registry's wire format (kafka/formats/).
Format = Literal["bytes", "text", "json", "avro", "protobuf", "json-schema"]
FORMATS: tuple[str, ...] = get_args(Format)
REGISTRY_FORMATS = ("avro", "protobuf", "json-schema")
BadRecordPolicy = Literal["fail", "skip", "dead-letter"]
BAD_RECORD_POLICIES: tuple[str, ...] = get_args(BadRecordPolicy)
# What a record that a processor fails on does (docs/processors.md, "Records a processor fails on").
ProcessorErrorPolicy = Literal["fail", "dead-letter"]
PROCESSOR_ERROR_POLICIES: tuple[str, ...] = get_args(ProcessorErrorPolicy)
# --changelog: whether this file also follows the partitions other hosts own (docs/scaling.md):
# all, none, or a number N (each partition followed by N hosts besides its owner).
Standby = Literal["all", "none"]
STANDBY_MODES: tuple[str, ...] = get_args(Standby)
# --standby N: more followers than this is a typo, not a plan (``all`` says every host).
MAX_STANDBY_COUNT = 1000
# The processors run when neither --processor nor --sql is given.
DEFAULT_PROCESSORS = ("counts",)
# `sqlstate wait` and `sqlstate.wait_for`: how long they wait for the positions by default.
WAIT_TIMEOUT_S = 30.0
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
# Where an OAUTHBEARER token comes from (sqlstate/kafka/oauth.py): the Security fields and flags.
OAUTH_TOKEN_SOURCES = {
    "oauth_token_command": "--oauth-token-command",
    "oauth_token_file": "--oauth-token-file",
    "oauth_token_endpoint": "--oauth-token-endpoint",
}


@dataclass(frozen=True)
class Security:
    """How to authenticate to Kafka and protect the connection."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: str | None = field(default=None, repr=False)
    # OAUTHBEARER: exactly one token source (docs/oauth.md). The client secret, like the
    # passwords, comes from the environment only.
    oauth_token_command: str | None = None
    oauth_token_file: Path | None = None
    oauth_token_endpoint: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: str | None = field(default=None, repr=False)
    oauth_scope: str | None = None

    def problems(self) -> list[str]:
        problems: list[str] = []
        if self.protocol not in SECURITY_PROTOCOLS:
            problems.append(f"--security-protocol must be one of {', '.join(SECURITY_PROTOCOLS)}")
        if self.protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                problems.append(f"--sasl-mechanism must be one of {', '.join(SASL_MECHANISMS)}")
            if self.sasl_mechanism == "OAUTHBEARER":
                problems += self._oauth_problems()
            elif not self.sasl_username or not self.sasl_password:
                problems.append(
                    "SASL needs --sasl-username and the password in SQLSTATE_SASL_PASSWORD"
                )
        if self.sasl_mechanism != "OAUTHBEARER" or not self.protocol.startswith("SASL"):
            given = [flag for name, flag in OAUTH_TOKEN_SOURCES.items() if getattr(self, name)]
            if given:
                problems.append(
                    f"{', '.join(given)} needs --sasl-mechanism OAUTHBEARER with"
                    " --security-protocol SASL_PLAINTEXT or SASL_SSL"
                )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None and not value.is_file():
                problems.append(f"--{name.replace('_', '-')} {value}: no such file")
        return problems

    def _oauth_problems(self) -> list[str]:
        problems: list[str] = []
        given = [flag for name, flag in OAUTH_TOKEN_SOURCES.items() if getattr(self, name)]
        if len(given) != 1:
            problems.append(
                f"OAUTHBEARER needs exactly one of {', '.join(OAUTH_TOKEN_SOURCES.values())}"
                + (f", not {' and '.join(given)}" if given else "")
            )
        if self.oauth_token_endpoint:
            if not self.oauth_token_endpoint.startswith(("https://", "http://")):
                problems.append("--oauth-token-endpoint must be an http:// or https:// URL")
            if not self.oauth_client_id or not self.oauth_client_secret:
                problems.append(
                    "--oauth-token-endpoint needs --oauth-client-id and the secret in"
                    " SQLSTATE_OAUTH_CLIENT_SECRET"
                )
        elif self.oauth_client_id or self.oauth_scope:
            problems.append("--oauth-client-id and --oauth-scope need --oauth-token-endpoint")
        return problems

    def validated(self) -> Security:
        """This, or ConfigError naming every problem."""
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))
        return self


@dataclass(frozen=True)
class Settings:
    group_id: str
    # --topic: these topics; or --topic-pattern: every topic whose whole name matches, as it
    # appears (sqlstate/kafka/topic_pattern.py says which names it never takes). One of the two.
    topics: tuple[str, ...] = ()
    topic_pattern: str | None = None
    bootstrap_servers: str = "127.0.0.1:9092"
    database: Path = Path("sqlstate.db")
    out_of_range: OutOfRangePolicy = "reset"
    # Where a partition the file has never seen starts: earliest, latest, or a record time
    # (docs/start-from.md). Never applied to a partition with a stored position.
    start_from: str = "earliest"
    isolation_level: IsolationLevel = "read_committed"
    max_records: int = 30_000
    client_id: str = "sqlstate"
    # Kafka group timing. A revoke waits for the batch in flight, so a batch must finish well within
    # rebalance_timeout_ms, which aiokafka defaults to the session timeout.
    session_timeout_ms: int = 10_000
    # The other members of a group learn of a rebalance (one leaving, say) only at their next
    # heartbeat: its partitions stand still until then (2.2-2.4 s at 3 s, 0.4-1.2 s at 1 s in a
    # rolling restart, docs/performance.md). Kafka's 3 s stays the default: at 1 s, a daemon
    # consuming through OAUTHBEARER tokens of a few seconds once stopped on a heartbeat that
    # the broker answered ILLEGAL_SASL_STATE, which aiokafka's heartbeat task treats as fatal.
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    rebalance_timeout_ms: int | None = None
    # How often the consumer refreshes the topics' metadata: partitions added to a topic are noticed
    # (and counted, after the rebalance they cause) only at a refresh. aiokafka's own default is
    # 5 minutes; a Metadata request every 30 s costs the broker next to nothing.
    metadata_max_age_s: float = 30.0
    fetch_max_bytes: int = 52_428_800
    max_partition_fetch_bytes: int = 1_048_576
    busy_timeout_s: float = 5.0
    connect_timeout_s: float = 30.0
    shutdown_timeout_s: float = 10.0
    poll_timeout_ms: int = 500
    check_integrity: bool = True
    # Copy each committed position to the group's offsets in Kafka, for operators' lag tools.
    # Informational only: positions are read from the database, never from there.
    commit_offsets_to_kafka: bool = True
    security: Security = field(default_factory=Security)
    metrics_port: int | None = None
    # Loopback by default: the endpoint names topics, hosts and lag. The container image sets
    # 0.0.0.0, since there the published port is the boundary.
    metrics_host: str = "127.0.0.1"
    progress_interval_s: float = 5.0
    # How long lag may stand still, or the consumer be out of its group, before /healthz says 503.
    stall_timeout_s: float = 60.0
    # The state kept: built-in processors by short name and PACKAGE.MODULE:NAME, and SQL files.
    # Neither given: DEFAULT_PROCESSORS (see ``processor_specs``).
    processors: tuple[str, ...] = ()
    sql_files: tuple[Path, ...] = ()
    key_format: Format = "bytes"
    value_format: Format = "bytes"
    on_bad_record: BadRecordPolicy = "fail"
    on_processor_error: ProcessorErrorPolicy = "fail"
    # dead-letter: more records rejected in a row than this stops the daemon (exit code 11).
    max_rejected_in_a_row: int = 100
    # The schema registry of the avro, protobuf and json-schema formats (docs/schema-registry.md);
    # its password comes from SQLSTATE_SCHEMA_REGISTRY_PASSWORD only.
    schema_registry_url: str | None = None
    schema_registry_username: str | None = None
    schema_registry_password: str | None = field(default=None, repr=False)
    schema_registry_ca_file: Path | None = None
    # The windowed-counts processor: tumbling windows of record time, and how long they are kept
    # behind each partition's highest timestamp.
    window: str = "1m"
    retention: str = "7d"
    # More hosts (docs/scaling.md): each batch's state changes also go to a compacted changelog
    # topic per input topic, which moves state with its partitions and feeds the standbys.
    changelog: bool = False
    # -1: the broker's default.replication.factor.
    changelog_replication_factor: int = -1
    # None: "all" under --changelog (every file holds the complete state).
    standby: str | None = None  # one of STANDBY_MODES, or a count (``standby_count``)

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ConfigError("; ".join(problems))

    def _problems(self) -> list[str]:
        problems: list[str] = []
        problems += self._topic_problems()
        if not self.group_id:
            problems.append("give a consumer group id (--group-id or SQLSTATE_GROUP_ID)")
        if not self.bootstrap_servers:
            problems.append("give the bootstrap servers (--bootstrap-servers)")
        if self.max_records < 1:
            problems.append("--max-records must be at least 1")
        if self.out_of_range not in OUT_OF_RANGE_POLICIES:
            problems.append(f"--out-of-range must be {' or '.join(OUT_OF_RANGE_POLICIES)}")
        try:
            start_point(self.start_from)
        except ValueError as error:
            problems.append(f"--start-from: {error}")
        if self.isolation_level not in ISOLATION_LEVELS:
            problems.append(f"--isolation-level must be {' or '.join(ISOLATION_LEVELS)}")
        problems += self.security.problems()
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            problems.append("--metrics-port must be between 0 and 65535")
        if not self.metrics_host:
            problems.append("--metrics-host must not be empty")
        for flag, format in (
            ("--key-format", self.key_format),
            ("--value-format", self.value_format),
        ):
            if format not in FORMATS:
                problems.append(f"{flag} must be one of {', '.join(FORMATS)}")
        problems += self._registry_problems()
        if self.on_bad_record not in BAD_RECORD_POLICIES:
            problems.append(f"--on-bad-record must be one of {', '.join(BAD_RECORD_POLICIES)}")
        if self.on_processor_error not in PROCESSOR_ERROR_POLICIES:
            problems.append(
                f"--on-processor-error must be one of {', '.join(PROCESSOR_ERROR_POLICIES)}"
            )
        if not 1 <= self.heartbeat_interval_ms < self.session_timeout_ms:
            problems.append(
                "--heartbeat-interval-ms must be at least 1 and below --session-timeout-ms"
                " (Kafka advises at most a third of it)"
            )
        if self.max_rejected_in_a_row < 1:
            problems.append("--max-rejected-in-a-row must be at least 1")
        if self.standby is not None and self.standby not in STANDBY_MODES:
            count = _standby_count(self.standby)
            if count is None or not 1 <= count <= MAX_STANDBY_COUNT:
                problems.append(
                    f"--standby must be one of {', '.join(STANDBY_MODES)}, or a number of hosts"
                    f" from 1 to {MAX_STANDBY_COUNT} (got {self.standby!r})"
                )
        if self.standby is not None and not self.changelog:
            problems.append("--standby needs --changelog: standbys follow the changelog")
        if self.changelog_replication_factor == 0 or self.changelog_replication_factor < -1:
            problems.append(
                "--changelog-replication-factor must be at least 1, or -1 for the broker's default"
            )
        if len(set(self.processors)) != len(self.processors):
            problems.append(f"a --processor is given twice: {' '.join(self.processors)}")
        for path in self.sql_files:
            if not path.is_file():
                problems.append(f"--sql {path}: no such file")
        for flag, value in (("--window", self.window), ("--retention", self.retention)):
            try:
                duration_ms(value)
            except ValueError as error:
                problems.append(f"{flag}: {error}")
        for name in (
            "busy_timeout_s",
            "connect_timeout_s",
            "shutdown_timeout_s",
            "metadata_max_age_s",
            "progress_interval_s",
            "stall_timeout_s",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        return problems

    def _topic_problems(self) -> list[str]:
        if self.topic_pattern is None:
            if not self.topics or any(not topic.strip() for topic in self.topics):
                return ["give at least one topic (--topic or SQLSTATE_TOPIC) or a --topic-pattern"]
            return []
        if self.topics:
            return ["give either --topic or --topic-pattern, not both"]
        if not self.topic_pattern:
            return ["--topic-pattern must not be empty"]
        try:
            re.compile(self.topic_pattern)
        except re.error as error:
            return [
                f"--topic-pattern {self.topic_pattern!r} is not a valid regular expression: {error}"
            ]
        return []

    def _registry_problems(self) -> list[str]:
        problems: list[str] = []
        uses = {self.key_format, self.value_format} & set(REGISTRY_FORMATS)
        if uses and not self.schema_registry_url:
            problems.append(
                f"--key-format/--value-format {' and '.join(sorted(uses))} need"
                " --schema-registry-url (or SQLSTATE_SCHEMA_REGISTRY_URL), which sqlstate run,"
                " verify and replay take"
            )
        url = self.schema_registry_url
        if url is not None and not url.startswith(("http://", "https://")):
            problems.append("--schema-registry-url must start with http:// or https://")
        if (self.schema_registry_username is None) != (self.schema_registry_password is None):
            problems.append(
                "--schema-registry-username and SQLSTATE_SCHEMA_REGISTRY_PASSWORD go together"
            )
        ca_file = self.schema_registry_ca_file
        if ca_file is not None and not ca_file.is_file():
            problems.append(f"--schema-registry-ca-file {ca_file}: no such file")
        return problems

    @property
    def processor_specs(self) -> tuple[str, ...]:
        """The ``--processor`` values, or the default when neither those nor ``--sql`` are given."""
        if self.processors or self.sql_files:
            return self.processors
        return DEFAULT_PROCESSORS

    @property
    def standbys(self) -> bool:
        """Whether this file follows the changelogs of every partition it does not own."""
        return self.changelog and (self.standby or "all") == "all"

    @property
    def standby_count(self) -> int | None:
        """``--standby N``: how many hosts besides its owner follow each partition (the group's
        leader chooses which); None under ``all`` or ``none``."""
        if not self.changelog or self.standby is None:
            return None
        return _standby_count(self.standby)

    @property
    def rebalance_budget_s(self) -> float:
        """How long a rebalance callback may wait: for the batch in flight, for Kafka's offsets,
        for the database's write lock.

        aiokafka sends no heartbeat from JoinGroup until ``on_partitions_assigned`` returns, and
        the first one only a heartbeat interval after; and the group waits for a member's revoke
        only up to the rebalance timeout. Half of what the shorter of the two leaves after one
        heartbeat interval keeps the member in its group however long the database stays
        locked: 3.5 s with the defaults.
        """
        window = min(self.session_timeout_ms, self.rebalance_timeout_ms or self.session_timeout_ms)
        return max(0.1, (window - self.heartbeat_interval_ms) / 2000)

    @property
    def owner(self) -> str:
        """Who claims partitions in the positions table: client id, host and process."""
        return f"{self.client_id}@{socket.gethostname()}:{os.getpid()}"


def owner_gone(owner: str) -> bool:
    """Whether ``owner``, as ``Settings.owner`` writes it, is a process of this host that has
    exited. False whenever that cannot be told: another host's (or a container's before it was
    started again), or a text of another form."""
    rest, _, pid = owner.rpartition(":")
    _, _, host = rest.rpartition("@")
    if host != socket.gethostname() or not pid.isascii() or not pid.isdigit() or int(pid) < 1:
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only whether the process exists
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists, another user's
    return False


@dataclass(frozen=True)
class VerifyOptions:
    """What ``sqlstate verify`` adds to the settings of the run whose file it checks."""

    # Exit 0 rather than 10 when the only differences are in partitions whose records Kafka
    # deleted (retention), which verify cannot read again.
    allow_unchecked: bool = False
    # Rows shown per table and partition that differ.
    samples: int = 10

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ConfigError("--samples must be 0 or more")


_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def duration_ms(text: str) -> int:
    """``"90s"``, ``"1m"``, ``"7d"`` ... as milliseconds (units ms, s, m, h, d, w); ValueError
    for anything else, zero included."""
    match = _DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration such as 500ms, 30s, 1m, 2h, 7d or 1w")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


@dataclass(frozen=True)
class StartPoint:
    """``--start-from`` read: ``earliest``, ``latest``, or a record time, given as a moment
    (``at_ms``, ms since the epoch) or as a duration before the partition's first claim
    (``ago_ms``)."""

    name: Literal["earliest", "latest", "timestamp"]
    at_ms: int | None = None
    ago_ms: int | None = None


def start_point(text: str) -> StartPoint:
    """``earliest``, ``latest``, an ISO 8601 time with its zone (``2026-12-01T00:00:00Z``) or a
    duration back from now (``-2h``, ``-7d``); ValueError for anything else."""
    if text == "earliest":
        return StartPoint("earliest")
    if text == "latest":
        return StartPoint("latest")
    if text.startswith("-"):
        try:
            return StartPoint("timestamp", ago_ms=duration_ms(text[1:]))
        except ValueError:
            pass
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None and moment.timestamp() >= 0:
            return StartPoint("timestamp", at_ms=round(moment.timestamp() * 1000))
    raise ValueError(
        f"{text!r} is not earliest, latest, an ISO 8601 time with its zone such as"
        " 2026-12-01T00:00:00Z, or a time back from now such as -2h or -7d"
    )


def default(name: str, of: type[Settings] | type[Security] | type[VerifyOptions] = Settings) -> Any:
    """The default of the field ``name`` of ``Settings`` (or ``Security``, ``VerifyOptions``),
    where it is written."""
    for candidate in dataclasses.fields(of):
        if candidate.name == name:
            if candidate.default is not dataclasses.MISSING:
                return candidate.default
            if candidate.default_factory is not dataclasses.MISSING:
                return candidate.default_factory()
            raise KeyError(f"{of.__name__}.{name} has no default")
    raise KeyError(f"{of.__name__} has no field {name}")


def _standby_count(standby: str) -> int | None:
    """``--standby``'s number, if it is one (ASCII digits only: ``str.isdigit`` takes ``²``)."""
    return int(standby) if standby.isascii() and standby.isdigit() else None
