"""What the log output must never contain, checked without a broker."""

from __future__ import annotations

import logging

import pytest
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
