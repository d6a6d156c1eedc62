"""Python values to JSON text: the mapping of what JSON lacks, written once.

- bytes (Avro ``bytes`` and ``fixed``): base64 text (RFC 4648, with padding), as Protobuf's
  JSON mapping writes bytes;
- ``Decimal``: its exact digits as text in plain notation (``"12.30"``), never a float;
- aware ``datetime`` (Avro ``timestamp-*``): ISO 8601 in UTC with six fractional digits and
  ``Z`` (``"2026-01-02T03:04:05.678000Z"``), which sorts as text and which SQLite's date
  functions read; naive ``datetime`` (``local-timestamp-*``): the same without ``Z``;
- ``date``: ``"YYYY-MM-DD"``; ``time``: ``"HH:MM:SS.ffffff"``; ``UUID``: its canonical text;
- NaN and the infinities, which JSON cannot hold: the strings ``"NaN"``, ``"Infinity"`` and
  ``"-Infinity"``, as in Protobuf's JSON mapping.

The text is compact (no spaces) and keeps non-ASCII characters as they are.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import uuid
from decimal import Decimal
from typing import Any


def _convert(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            return value.isoformat(timespec="microseconds")
        utc = value.astimezone(datetime.UTC).replace(tzinfo=None)
        return utc.isoformat(timespec="microseconds") + "Z"
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, datetime.time):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} has no JSON form")


# One encoder for every value: json.dumps with options builds a new one at each call.
_ENCODER = json.JSONEncoder(
    default=_convert, allow_nan=False, ensure_ascii=False, separators=(",", ":")
)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def to_json(value: Any) -> str:
    """``value`` as compact JSON text, with the mapping above."""
    try:
        return _ENCODER.encode(value)
    except ValueError:
        # Only a non-finite float makes the encoder refuse: rare, so walked only then.
        return _ENCODER.encode(_finite(value))
