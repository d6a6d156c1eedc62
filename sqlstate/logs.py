"""Logging set-up: plain text for people, one JSON object per line for log shippers.

Secrets never reach the output: see ``SaslRequestRedactor``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]

_TEXT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class SaslRequestRedactor(logging.Filter):
    """Hide the SASL login that aiokafka logs at DEBUG with every request it sends.

    aiokafka.conn logs "Request to host:port id: <request>" with the request object as an
    argument; for SaslAuthenticateRequest that object holds the raw auth bytes, which with PLAIN
    are the user name and the password in clear. This replaces that argument before formatting.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "aiokafka.conn" and isinstance(record.args, tuple):
            record.args = tuple(
                f"{type(arg).__name__}(<redacted>)"
                if type(arg).__name__.startswith("SaslAuthenticateRequest")
                else arg
                for arg in record.args
            )
        return True


def configure(verbosity: int, log_format: LogFormat) -> None:
    """``verbosity``: -1 quiet (warnings), 0 info, 1 debug for sqlstate, 2 debug for everything."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT))
    handler.addFilter(SaslRequestRedactor())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if verbosity >= 2 else max(level, logging.INFO))
    # -v is debug for sqlstate only; aiokafka's debug output is only wanted with -vv.
    logging.getLogger("sqlstate").setLevel(level)
