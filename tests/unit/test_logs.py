"""The log output: the fields of a JSON line, the text format, what each verbosity shows, and
what must never appear. Checked without a broker.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaConnectionError
from aiokafka.protocol.admin import SaslAuthenticateRequest_v1

from sqlstate.observe import logs
from sqlstate.settings import Security, Settings


class Policy(enum.Enum):
    RESET = "reset"


@dataclass(frozen=True)
class Claim:
    next_offset: int
    epoch: int


class Opaque:
    def __str__(self) -> str:
        return "<opaque>"


def emit(
    log_format: logs.LogFormat,
    capsys: pytest.CaptureFixture[str],
    message: str,
    *args: object,
    **extra: object,
) -> str:
    """Configure the format, log one INFO line of sqlstate with ``extra``, return the output."""
    logs.configure(0, log_format)
    try:
        logging.getLogger("sqlstate.test").info(message, *args, extra=extra)
    finally:
        logging.getLogger().handlers.clear()
    return capsys.readouterr().err


def test_a_json_line_carries_every_field_passed_with_extra(
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = emit(
        "json",
        capsys,
        "committed %d records over %d partitions",
        300,
        2,
        event="batch_committed",
        topic="orders",
        partition=3,
        next_offset=1_200,
        records=300,
        commit_s=0.0042,
        reason=None,
        in_group=True,
    )
    (line,) = output.splitlines()
    entry = json.loads(line)
    assert entry == {
        "time": entry["time"],
        "level": "INFO",
        "logger": "sqlstate.test",
        "message": "committed 300 records over 2 partitions",
        "event": "batch_committed",
        "topic": "orders",
        "partition": 3,
        "next_offset": 1_200,
        "records": 300,
        "commit_s": 0.0042,
        "reason": None,
        "in_group": True,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"])


def test_values_json_cannot_write_are_converted(capsys: pytest.CaptureFixture[str]) -> None:
    tp = TopicPartition("orders", 3)
    output = emit(
        "json",
        capsys,
        "odd values",
        event="odd",
        tp=tp,
        claims={tp: Claim(7, 2)},
        key=b"caf\xc3\xa9 \xff",
        lag=float("nan"),
        remaining_s=float("inf"),
        policy=Policy.RESET,
        partitions={5},
        database=Path("/var/lib/sqlstate/state.db"),
        error=ValueError("bad"),
        opaque=Opaque(),
    )
    entry = json.loads(output)  # valid JSON: NaN and Infinity would not be
    assert entry["tp"] == {"topic": "orders", "partition": 3}
    assert entry["claims"] == {str(tp): {"next_offset": 7, "epoch": 2}}
    assert entry["key"] == "café \\xff"
    assert (entry["lag"], entry["remaining_s"]) == ("nan", "inf")
    assert entry["policy"] == "reset"
    assert entry["partitions"] == [5]
    assert entry["database"] == "/var/lib/sqlstate/state.db"
    assert entry["error"] == "bad"
    assert entry["opaque"] == "<opaque>"


def test_settings_passed_as_a_field_show_no_password(capsys: pytest.CaptureFixture[str]) -> None:
    """The passwords are the fields ``Settings`` keeps out of its repr; a dataclass written as
    an object leaves them out the same way, at any depth."""
    security = Security(
        protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="sqlstate",
        sasl_password="sasl-pa55word",
        ssl_password="key-pa55word",
    )
    settings = Settings(topics=("orders",), group_id="g", security=security)
    output = emit(
        "json",
        capsys,
        "starting with %s",
        settings,
        event="starting",
        settings=settings,
        security=security,
        nested={"all": [settings]},
    )
    assert "pa55word" not in output  # the message (repr) nor the fields
    entry = json.loads(output)
    assert entry["settings"]["security"] == {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_username": "sqlstate",
        "ssl_cafile": None,
        "ssl_certfile": None,
        "ssl_keyfile": None,
        "oauth_token_command": None,
        "oauth_token_file": None,
        "oauth_token_endpoint": None,
        "oauth_client_id": None,
        "oauth_scope": None,
    }
    assert entry["nested"]["all"][0]["group_id"] == "g"


def test_a_field_named_like_a_key_of_the_line_is_kept_beside_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    entry = json.loads(emit("json", capsys, "hello", event="clash", time=5, level="x"))
    assert entry["message"] == "hello"
    assert entry["level"] == "INFO"
    assert (entry["time_"], entry["level_"]) == (5, "x")


def test_a_value_nested_without_end_is_cut_as_text() -> None:
    nested: list[object] = []
    nested.append(nested)
    converted = logs.jsonable({"a": nested})
    json.dumps(converted)  # terminates, and is JSON
    assert "[...]" in json.dumps(converted)


def test_the_text_format_ignores_the_fields(capsys: pytest.CaptureFixture[str]) -> None:
    output = emit("text", capsys, "caught up: %d partitions", 3, event="caught_up", partitions=3)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    sqlstate\.test: caught up: 3 partitions\n",
        output,
    )


def test_the_sasl_login_in_aiokafka_debug_lines_is_redacted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # What aiokafka.conn logs at -vv for a PLAIN login: the request holds user and password.
    request = SaslAuthenticateRequest_v1(b"\x00alice\x00hunter2-secret")
    logs.configure(2, "json")
    try:
        logging.getLogger("aiokafka.conn").debug(
            "Request to %s:%d %d: %s", "127.0.0.1", 9092, 3, request
        )
    finally:
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    assert "SaslAuthenticateRequest" in err
    assert "<redacted>" in err
    assert "hunter2-secret" not in err


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """``logs.configure`` changes process-wide state: put it back for the next tests."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("sqlstate").level
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("sqlstate").setLevel(saved[2])


def _lines_shown(verbosity: int, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What a first start logs, as aiokafka and sqlstate word it, seen at ``verbosity``."""
    logs.configure(verbosity, "text")
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    coordinator.info("Discovered coordinator %s for group %s", 1, "g")
    # aiokafka's words for a fresh group's first lookups, and for a heartbeat that failed.
    coordinator.error("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
    coordinator.error("Heartbeat failed: %r", KafkaConnectionError("broker gone"))
    logging.getLogger("aiokafka.conn").debug("Request 7: %s", "MetadataRequest_v1")
    logging.getLogger("sqlstate.rebalance").info("assigned partitions: t-0@0 (epoch 1)")
    logging.getLogger("sqlstate.consumer").debug("batch of 5 records")
    return capsys.readouterr().err.splitlines()


def _shown(lines: list[str], level: str, text: str) -> bool:
    return any(f" {level} " in line and text in line for line in lines)


@pytest.mark.usefixtures("restored_logging")
def test_the_default_level_shows_sqlstate_and_aiokafkas_problems_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = _lines_shown(0, capsys)
    assert _shown(lines, "INFO", "assigned partitions")
    assert _shown(lines, "ERROR", "Heartbeat failed")
    assert len(lines) == 2, lines  # no aiokafka info, no coordinator lookup, no debug


@pytest.mark.usefixtures("restored_logging")
def test_one_v_adds_sqlstate_debug_and_aiokafka_info(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _lines_shown(1, capsys)
    assert _shown(lines, "INFO", "Discovered coordinator")
    assert _shown(lines, "DEBUG", "batch of 5 records")
    assert not any("GroupCoordinatorNotAvailable" in line for line in lines)
    assert not any("MetadataRequest" in line for line in lines)
    assert len(lines) == 4, lines


@pytest.mark.usefixtures("restored_logging")
def test_two_v_show_everything(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _lines_shown(2, capsys)
    assert _shown(lines, "DEBUG", "GroupCoordinatorNotAvailableError")
    assert _shown(lines, "DEBUG", "MetadataRequest_v1")
    assert len(lines) == 6, lines


# LogEvent: one call per event, its fields given once.
_RESTORED = logs.LogEvent(
    logging.getLogger("sqlstate.test"),
    logging.INFO,
    "changelog_restored",
    "restored %(topic)s-%(partition)d from its changelog: %(records)d records in"
    " %(restore_s).2f s%(_note)s",
    data={"restore_s": logs.rounded(3)},
)


def _log_restored(log_format: logs.LogFormat, capsys: pytest.CaptureFixture[str]) -> str:
    logs.configure(0, log_format)
    tp = TopicPartition("orders", 3)
    # 0.11496 s: to 3 decimals 0.115, which would print as 0.12 if the sentence used that.
    _RESTORED.log(**logs.partition_fields(tp, records=1500, restore_s=0.11496), _note="!")
    return capsys.readouterr().err


@pytest.mark.usefixtures("restored_logging")
def test_an_event_writes_its_sentence_in_the_text_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    sqlstate\.test: restored orders-3 from its"
        r" changelog: 1500 records in 0\.11 s!\n",
        _log_restored("text", capsys),
    )


@pytest.mark.usefixtures("restored_logging")
def test_an_event_writes_its_fields_once_in_the_json_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    entry = json.loads(_log_restored("json", capsys))
    assert list(entry)[4:] == ["event", "topic", "partition", "records", "restore_s"]
    assert entry == {
        "time": entry["time"],
        "level": "INFO",
        "logger": "sqlstate.test",
        "message": "restored orders-3 from its changelog: 1500 records in 0.11 s!",
        "event": "changelog_restored",
        "topic": "orders",
        "partition": 3,
        "records": 1500,
        "restore_s": 0.115,  # rounded for the JSON line only; "_note" is the sentence's only
    }


@pytest.mark.usefixtures("restored_logging")
def test_an_event_words_its_sentence_and_carries_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    failed = logs.LogEvent(
        logging.getLogger("sqlstate.test"),
        logging.ERROR,
        "publish_failed",
        "published %(records)d records in %(publish_ms).3f ms: 100%% failed",
        words=lambda fields: {"publish_ms": fields["publish_s"] * 1000},
        traceback=True,
    )
    logs.configure(0, "json")
    try:
        raise ValueError("broker gone")
    except ValueError:
        failed.log(records=3, publish_s=0.0012345)
    entry = json.loads(capsys.readouterr().err)
    assert entry["message"] == "published 3 records in 1.234 ms: 100% failed"
    assert (entry["records"], entry["publish_s"]) == (3, 0.0012345)
    assert "ValueError: broker gone" in entry["exception"]


def test_an_event_below_the_level_builds_nothing(caplog: pytest.LogCaptureFixture) -> None:
    built: list[str] = []

    def words(fields: object) -> dict[str, object]:
        built.append("words")
        return {}

    def convert(value: object) -> object:
        built.append("data")
        return value

    committed = logs.LogEvent(
        logging.getLogger("sqlstate.test"),
        logging.DEBUG,
        "batch_committed",
        "committed %(records)d records in %(commit_s)f s",
        data={"commit_s": convert},
        words=words,
    )
    with caplog.at_level(logging.INFO, logger="sqlstate"):
        committed.log(records=300, commit_s=0.004)
    assert (built, caplog.records) == ([], [])
    with caplog.at_level(logging.DEBUG, logger="sqlstate"):
        committed.log(records=300, commit_s=0.004)
    (record,) = caplog.records
    assert built == ["data", "words"]
    # The record names the line that logged the event, as a logger call's would.
    assert record.funcName == "test_an_event_below_the_level_builds_nothing"
