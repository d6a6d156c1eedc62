"""Settings validation and the command line's answers to bad input (no broker needed)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sqlstate.cli.commands import main, run
from sqlstate.errors import ConfigError
from sqlstate.kafka.client import build_consumer
from sqlstate.settings import Security, Settings, default


def test_password_never_in_repr() -> None:
    settings = Settings(
        topics=("t",),
        group_id="g",
        security=Security(
            protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_username="u",
            sasl_password="hunter2",
        ),
    )
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topics": ()}, "at least one topic"),
        ({"max_records": 0}, "max-records"),
        ({"heartbeat_interval_ms": 10_000}, "heartbeat-interval-ms must be .* below"),
        ({"heartbeat_interval_ms": 0}, "heartbeat-interval-ms"),
        ({"changelog": True, "standby": "0"}, r"--standby must be .* from 1 to 1000 \(got '0'\)"),
        ({"changelog": True, "standby": "some"}, "--standby must be one of all, none, or a"),
        ({"changelog": True, "standby": "²"}, "--standby must be"),
        ({"changelog": True, "standby": "1001"}, "--standby must be"),
        ({"standby": "2"}, "--standby needs --changelog"),
        ({"security": Security(protocol="SASL_SSL")}, "sasl-mechanism"),
        ({"security": Security(ssl_cafile=Path("/nonexistent/ca.pem"))}, "no such file"),
    ],
)
def test_invalid_settings(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"topics": ("t",), "group_id": "g"}
    with pytest.raises(ConfigError, match=message):
        Settings(**{**base, **kwargs})  # type: ignore[arg-type]


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert "sqlstate, version" in result.output


def test_unknown_flag_exits_2() -> None:
    result = CliRunner().invoke(main, ["run", "--no-such-flag"])
    assert result.exit_code == 2


def test_counts_without_database_exits_3(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["counts", "--database", str(tmp_path / "none.db")])
    assert result.exit_code == 3
    assert "no database" in result.output


def test_run_in_missing_folder_exits_3(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["run", "-t", "t", "-g", "g", "--database", str(tmp_path / "x" / "s.db")]
    )
    assert result.exit_code == 3, result.output
    assert "does not exist" in result.output


def test_offsets_checks_the_security_flags_like_run(tmp_path: Path) -> None:
    database = tmp_path / "state.db"
    assert CliRunner().invoke(main, ["migrate", "--database", str(database)]).exit_code == 0
    result = CliRunner().invoke(
        main,
        [
            "offsets",
            "--database",
            str(database),
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--security-protocol",
            "SASL_SSL",
            "--sasl-mechanism",
            "PLAIN",
        ],
        env={"SQLSTATE_SASL_PASSWORD": None},
    )
    assert result.exit_code == 2, result.output
    assert "SQLSTATE_SASL_PASSWORD" in result.output


def documented_flag_table() -> list[tuple[str, str, str]]:
    """(flag, variable, default) of each row of docs/cli.md's table of ``run``'s flags."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    header = "| flag | variable | default | meaning |\n|---|---|---|---|\n"
    block = text.split(header, 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in block.splitlines():
        # A cell may hold an escaped bar (`reset\|fail`), which does not end it.
        flag, variable, default, _meaning = re.split(r"(?<!\\)\|", line)[1:-1]
        rows.append((flag.strip(), variable.strip().strip("`"), default.strip()))
    return rows


def documented_default(option: click.Parameter) -> str:
    """How docs/cli.md's table writes ``option``'s default."""
    if option.required:
        return "required"
    if option.default is True:
        return "on"
    if option.default is False:
        return "off"
    if not isinstance(option.default, str | int | float | Path):  # None, or click's "unset"
        return "off" if option.name == "metrics_port" else ""
    return f"`{option.default}`"


def test_the_documented_flag_table_matches_run() -> None:
    options = {str(p.envvar): p for p in run.params if isinstance(p, click.Option)}
    rows = documented_flag_table()
    environment_only = {
        "SQLSTATE_SASL_PASSWORD",
        "SQLSTATE_SSL_PASSWORD",
        "SQLSTATE_OAUTH_CLIENT_SECRET",
        "SQLSTATE_SCHEMA_REGISTRY_PASSWORD",
    }

    assert {variable for _flag, variable, _default in rows} == set(options) | environment_only
    for flag, variable, written in rows:
        if variable in environment_only:
            assert flag == "(no flag)"
            continue
        option = options[variable]
        assert set(re.findall(r"--?[a-z][a-z-]*", flag)) == {
            *option.opts,
            *option.secondary_opts,
        }, variable
        assert written == documented_default(option), variable


def test_every_default_of_run_is_the_settings_default() -> None:
    for option in run.params:
        if option.name in Settings.__dataclass_fields__ and not option.required:
            assert option.default == default(option.name), option.name


async def test_new_partitions_are_noticed_within_a_minute_by_default() -> None:
    # aiokafka refreshes metadata every 5 minutes unless told otherwise; partitions added to a
    # topic are assigned and counted only after a refresh has noticed them.
    assert 0 < default("metadata_max_age_s") <= 60
    consumer = build_consumer(Settings(topics=("t",), group_id="g"))
    try:
        assert consumer._client._metadata_max_age_ms == default("metadata_max_age_s") * 1000
    finally:
        await consumer.stop()


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_metadata_max_age_must_be_a_positive_number(value: str) -> None:
    result = CliRunner().invoke(main, ["run", "-t", "t", "-g", "g", "--metadata-max-age", value])
    assert result.exit_code == 2, result.output
    assert "--metadata-max-age" in result.output
    from_environment = CliRunner().invoke(
        main, ["run", "-t", "t", "-g", "g"], env={"SQLSTATE_METADATA_MAX_AGE": value}
    )
    assert from_environment.exit_code == 2, from_environment.output


def test_standby_count_is_a_number_of_hosts_under_changelog_only() -> None:
    base: dict[str, object] = {"topics": ("t",), "group_id": "g", "changelog": True}
    assert Settings(**{**base, "standby": "2"}).standby_count == 2  # type: ignore[arg-type]
    assert not Settings(**{**base, "standby": "2"}).standbys  # type: ignore[arg-type]
    for mode in ("all", "none", None):
        assert Settings(**{**base, "standby": mode}).standby_count is None  # type: ignore[arg-type]
