"""Logging set-up: plain text for people, one JSON object per line for log shippers.

By default a person sees sqlstate's own lines and the warnings and errors of the libraries
(aiokafka), less the ones that only describe a normal start (see ``CoordinatorLookupRetries``);
``-v`` adds sqlstate's debug lines and aiokafka's info lines, ``-vv`` shows everything.
Secrets never reach the output: see ``SaslRequestRedactor``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

from aiokafka.errors import GroupCoordinatorNotAvailableError

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


class CoordinatorLookupRetries(logging.Filter):
    """Turn aiokafka's "coordinator not available" lookup errors into debug lines.

    aiokafka logs every failed coordinator lookup at ERROR and retries it after its retry
    backoff. A fresh group on a fresh broker always fails a few lookups while Kafka creates
    ``__consumer_offsets`` and elects its leader, and a coordinator move during a broker restart
    does the same: nothing the operator must act on. A coordinator that stays away is still
    reported, by sqlstate itself: the watchdog's "unhealthy: not in the consumer group" warning.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.name == "aiokafka.consumer.group_coordinator"
            and record.levelno > logging.DEBUG
            and isinstance(record.args, tuple)
            and any(isinstance(arg, GroupCoordinatorNotAvailableError) for arg in record.args)
        ):
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def configure(verbosity: int, log_format: LogFormat) -> None:
    """``verbosity``: -1 quiet (warnings and errors); 0 sqlstate's info lines and the libraries'
    warnings; 1 sqlstate's debug lines and aiokafka's info lines; 2 debug for everything."""
    own_level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    # aiokafka's info lines (every join, sync and assignment, in its own words) repeat what
    # sqlstate says in one line per rebalance; they are for -v.
    libraries_level = {-1: logging.WARNING, 0: logging.WARNING, 1: logging.INFO}.get(
        verbosity, logging.DEBUG
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT))
    handler.addFilter(SaslRequestRedactor())
    handler.addFilter(CoordinatorLookupRetries())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(libraries_level)
    logging.getLogger("sqlstate").setLevel(own_level)
