"""Progress lines: while catching up, one INFO line every few seconds; one line when caught up.

A line while behind gives the records committed per second since the last line, the total lag and
an estimate of the time to catch up. The estimate divides the lag by how fast the *lag* fell, not
by the consumption rate: while producers keep writing, the lag falls slower than records are read.
Nothing is logged while the daemon is caught up and stays so.

Under ``--changelog``, a partition that is neither owned, followed nor being restored gets a
WARNING line as soon as it is (with why), and again when the set or a reason changes; one INFO
line says when every partition is kept again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import TopicPartition

from sqlstate.observe.health import Lags, caught_up, total_lag
from sqlstate.observe.logs import LogEvent, partition_fields, rounded

logger = logging.getLogger("sqlstate.progress")  # its documented name


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``: short enough for a log line."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _catching_up_words(fields: Mapping[str, Any]) -> dict[str, str]:
    unknown, remaining_s = fields["unfetched_partitions"], fields["remaining_s"]
    return {
        "unfetched": f" ({unknown} not fetched yet)" if unknown else "",
        "remaining": "lag not falling"
        if remaining_s is None
        else f"about {duration(remaining_s)} to go",
    }


_CATCHING_UP = LogEvent(
    logger,
    logging.INFO,
    "catching_up",
    "catching up: %(records_per_s).0f records/s, lag %(lag)d records over %(partitions)d"
    " partitions%(unfetched)s, %(remaining)s",
    # remaining_s: null while the lag is not falling
    data={"records_per_s": rounded(1), "remaining_s": rounded(3)},
    words=_catching_up_words,
)
_NEITHER = LogEvent(
    logger,
    logging.WARNING,
    "partitions_neither",
    "neither owned nor followed: %(listed)s; this file's state of them goes stale until they are",
    words=lambda fields: {
        "listed": ", ".join(
            f"{tp['topic']}-{tp['partition']} ({tp['reason']})" for tp in fields["neither"]
        )
    },
)
_KEPT = LogEvent(
    logger, logging.INFO, "partitions_kept", "every partition is owned or followed again"
)
_CAUGHT_UP = LogEvent(
    logger, logging.INFO, "caught_up", "caught up: %(partitions)d partitions at their log end"
)
_CAUGHT_UP_AFTER = LogEvent(
    logger,
    logging.INFO,
    "caught_up",
    "caught up: %(partitions)d partitions at their log end; %(records)d records in %(took)s",
    data={"catch_up_s": rounded(3)},
    words=lambda fields: {"took": duration(fields["catch_up_s"])},
)


class ProgressLog:
    """Fed once a tick with the records counter and the lags; decides when to log."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._caught_up: bool | None = None  # None: not known yet, at start
        # Where the current catch-up began (at start: the start), and the last line's numbers,
        # the base of the rates.
        self._behind_since = clock()
        self._behind_records = 0
        self._last_time = 0.0
        self._last_records = 0
        self._last_lag = 0
        self._neither: dict[TopicPartition, str] = {}

    def tick(
        self, records: int, lags: Lags, neither: Mapping[TopicPartition, str] | None = None
    ) -> None:
        """``neither``: the partitions neither owned nor followed, with why (--changelog)."""
        self._report_neither(dict(neither or {}))
        if not lags:
            return  # no partition claimed: nothing to catch up with
        now = self._clock()
        lag = total_lag(lags)
        if caught_up(lags):
            if self._caught_up is not True:
                self._log_caught_up(now, records, len(lags))
            self._caught_up = True
            return
        if self._caught_up is not False:
            # Just fell behind (or started behind): the first line comes one interval later,
            # when there is a rate to report.
            if self._caught_up is True:
                self._behind_since, self._behind_records = now, records
            self._caught_up = False
            self._last_time, self._last_records, self._last_lag = now, records, lag
            return
        elapsed = now - self._last_time
        if elapsed < self._interval_s:
            return
        rate = (records - self._last_records) / elapsed
        shrinking = (self._last_lag - lag) / elapsed
        unknown = sum(1 for partition in lags.values() if partition.lag is None)
        remaining_s = lag / shrinking if shrinking > 0 else None
        _CATCHING_UP.log(
            records_per_s=rate,
            lag=lag,
            partitions=len(lags),
            unfetched_partitions=unknown,
            remaining_s=remaining_s,
        )
        self._last_time, self._last_records, self._last_lag = now, records, lag

    def _report_neither(self, neither: dict[TopicPartition, str]) -> None:
        if neither == self._neither:
            return
        if neither:
            _NEITHER.log(
                partitions=len(neither),
                neither=[partition_fields(tp, reason=why) for tp, why in sorted(neither.items())],
            )
        else:
            _KEPT.log(partitions=len(self._neither))
        self._neither = neither

    def _log_caught_up(self, now: float, records: int, partitions: int) -> None:
        if records > self._behind_records:
            _CAUGHT_UP_AFTER.log(
                partitions=partitions,
                records=records - self._behind_records,
                catch_up_s=now - self._behind_since,
            )
        else:
            _CAUGHT_UP.log(partitions=partitions)
