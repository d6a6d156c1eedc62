"""What the log output must never contain, and what each verbosity shows, checked without a
broker."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaConnectionError
from aiokafka.protocol.admin import SaslAuthenticateRequest_v1

from sqlstate import logs


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
