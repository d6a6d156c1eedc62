"""Logging set-up: plain text for people, one JSON object per line for log shippers.

By default a person sees sqlstate's own lines and the warnings and errors of the libraries
(aiokafka), less the ones that only describe a normal start (see ``CoordinatorLookupRetries``);
``-v`` adds sqlstate's debug lines and aiokafka's info lines, ``-vv`` shows everything.

Structured events: each kind of line is a ``LogEvent`` declared once at the top of a module,
with its level, its ``event`` name and its sentence, whose placeholders name the fields; a call
gives each value once::

    _CAUGHT_UP = LogEvent(
        logger, logging.INFO, "caught_up", "caught up: %(partitions)d partitions at their log end"
    )
    ...
    _CAUGHT_UP.log(partitions=partitions)

The fields go to the record's ``extra``: the JSON format writes every such field at the top level
of the line, so a log pipeline filters on ``event`` and the data instead of parsing the message;
the text format shows the sentence only. The conventions, so that one field name means one thing
with one type in every line (a log store such as Elasticsearch maps a name to a single type):

- ``event``: a stable snake_case name of what happened (``batch_committed``, ``caught_up``).
  Every line sqlstate logs carries one; aiokafka's lines carry none.
- ``topic`` (text) and ``partition`` (integer): the partition the event is about.
- Offsets are integers named after Kafka's: ``next_offset`` (a stored position, the next offset to
  consume), ``log_end_offset``, ``log_start_offset``, ``fetch_offset``, ``expected_offset``.
- Counts are integers named after what is counted: ``records``, ``partitions``, ``lag``
  (records behind).
- ``reason``: why, in words, for a warning or a change of health.
- Durations are seconds, as a number, in a name ending with ``_s``; rates end with ``_per_s``.
  Rounded to what the number means (a catch-up to the millisecond, a commit to the microsecond).
- Several partitions: a list of objects made by ``partition_fields`` (``topic``, ``partition``
  and that partition's data), named after what they are (``assigned``, ``revoked``,
  ``stalled``); ``partitions`` stays their count.

A dataclass is written without its fields declared with ``repr=False``, as its ``repr`` leaves
them out: that is how ``Settings`` marks the SASL and SSL passwords, so settings passed as a
field show no password. A secret passed as a field of its own is not recognized: never do that.

Secrets never reach the output: see also ``SaslRequestRedactor``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any, Literal, Protocol

from aiokafka.errors import GroupCoordinatorNotAvailableError

LogFormat = Literal["text", "json"]

_TEXT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# The attributes every LogRecord has (``taskName`` since Python 3.12): whatever else a record
# carries was passed with ``extra``.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)
# Deeper than any event's data; what lies below is written as text rather than walked.
_MAX_DEPTH = 6


class _Partition(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...


def partition_fields(tp: _Partition, **data: object) -> dict[str, object]:
    """The fields naming one partition (a ``TopicPartition``), and its ``data``."""
    return {"topic": tp.topic, "partition": tp.partition, **data}


class LogEvent:
    """One kind of structured line, declared once: its logger, level, ``event`` name and sentence.

    ``log(**fields)`` writes one line: the fields become the record's ``extra`` (the JSON line's
    data, beside ``event``) and fill the sentence's ``%(field)s`` placeholders (the message).
    A name that starts with ``_`` is for the sentence only (``%(_before)d``), never a field.

    - ``data``: how the JSON line writes some fields, when not as given: the field's name and a
      function of its value (``rounded(3)``: to the millisecond, see the conventions above). The
      sentence formats the value as given, so ``%(restore_s).2f`` is not rounded twice.
    - ``words``: for a sentence that says a field in other words (milliseconds of a duration in
      seconds, a list joined, a time spelled out): a function of the fields returning more
      placeholders, for the sentence only.
    - ``traceback``: the line carries the exception being handled, as ``logger.exception``.

    While the logger's level is above the event's, ``log`` returns after the level check:
    nothing is copied, converted or worded, so a DEBUG event on the batch path costs one call.
    The message itself is formatted by ``logging`` (``%`` with a mapping), only when a handler
    writes the line.
    """

    __slots__ = ("_data", "_logger", "_traceback", "_words", "level", "name", "sentence")

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        name: str,
        sentence: str,
        *,
        data: Mapping[str, Callable[[Any], object]] | None = None,
        words: Callable[[Mapping[str, Any]], Mapping[str, object]] | None = None,
        traceback: bool = False,
    ) -> None:
        self._logger = logger
        self.level = level
        self.name = name
        self.sentence = sentence
        self._data = dict(data or {})
        self._words = words
        self._traceback = traceback

    def log(self, /, **fields: object) -> None:
        """Write the event with ``fields`` (in the order given: the JSON line keeps it)."""
        if not self._logger.isEnabledFor(self.level):
            return
        extra: dict[str, object] = {"event": self.name}
        for name, value in fields.items():
            if not name.startswith("_"):
                convert = self._data.get(name)
                extra[name] = value if convert is None else convert(value)
        # The mapping is never empty (``event`` is in it), so logging always applies ``%``
        # to the sentence: a ``%%`` in it reads as one ``%`` in every event alike.
        values = {"event": self.name, **fields}
        if self._words is not None:
            values.update(self._words(fields))
        self._logger.log(
            self.level,
            self.sentence,
            values,
            exc_info=self._traceback or None,
            extra=extra,
            stacklevel=2,  # the record names the line that logged the event, not this one
        )


def rounded(places: int) -> Callable[[float | None], float | None]:
    """For ``LogEvent``'s ``data``: a number rounded to ``places`` decimals (None stays None)."""

    def convert(value: float | None) -> float | None:
        return None if value is None else round(value, places)

    return convert


def jsonable(value: object, depth: int = 0) -> object:
    """``value`` as something ``json.dumps`` writes as valid JSON, whatever it was.

    Named tuples (``TopicPartition``) and dataclasses become objects (without the fields a
    dataclass keeps out of its ``repr``: secrets), other sequences and sets lists, bytes text
    (undecodable bytes as ``\\xNN``), infinities and NaN (not JSON) text, and anything else its
    ``str()``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return str(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value, depth + 1)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {
            field.name: getattr(value, field.name)
            for field in dataclasses.fields(value)
            if field.repr
        }
    elif isinstance(value, tuple) and hasattr(value, "_asdict"):
        value = value._asdict()
    if isinstance(value, Mapping):
        return {str(key): jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item, depth + 1) for item in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the traceback if any, and the
    event's fields passed with ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        for name, value in vars(record).items():
            if name in _RECORD_ATTRIBUTES:
                continue
            # A field named like one of the line's own keys must not replace it, nor vanish.
            while name in entry:
                name += "_"
            entry[name] = jsonable(value)
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


def describe(tps: Iterable[_Partition]) -> str:
    """``orders-0, orders-1`` for messages; ``none`` for no partition."""
    ordered = sorted(tps, key=lambda tp: (tp.topic, tp.partition))
    return ", ".join(f"{tp.topic}-{tp.partition}" for tp in ordered) or "none"
