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

from aiokafka import TopicPartition

from sqlstate.observe.health import Lags, caught_up, total_lag
from sqlstate.observe.logs import partition_fields

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
        logger.info(
            "catching up: %.0f records/s, lag %d records over %d partitions%s, %s",
            rate,
            lag,
            len(lags),
            f" ({unknown} not fetched yet)" if unknown else "",
            "lag not falling" if remaining_s is None else f"about {duration(remaining_s)} to go",
            extra={
                "event": "catching_up",
                "records_per_s": round(rate, 1),
                "lag": lag,
                "partitions": len(lags),
                "unfetched_partitions": unknown,
                # null while the lag is not falling
                "remaining_s": None if remaining_s is None else round(remaining_s, 3),
            },
        )
        self._last_time, self._last_records, self._last_lag = now, records, lag

    def _report_neither(self, neither: dict[TopicPartition, str]) -> None:
        if neither == self._neither:
            return
        if neither:
            logger.warning(
                "neither owned nor followed: %s; this file's state of them goes stale until"
                " they are",
                ", ".join(
                    f"{tp.topic}-{tp.partition} ({why})" for tp, why in sorted(neither.items())
                ),
                extra={
                    "event": "partitions_neither",
                    "partitions": len(neither),
                    "neither": [
                        partition_fields(tp, reason=why) for tp, why in sorted(neither.items())
                    ],
                },
            )
        else:
            logger.info(
                "every partition is owned or followed again",
                extra={"event": "partitions_kept", "partitions": len(self._neither)},
            )
        self._neither = neither

    def _log_caught_up(self, now: float, records: int, partitions: int) -> None:
        fields = {"event": "caught_up", "partitions": partitions}
        if records > self._behind_records:
            catch_up_s = now - self._behind_since
            logger.info(
                "caught up: %d partitions at their log end; %d records in %s",
                partitions,
                records - self._behind_records,
                duration(catch_up_s),
                extra={
                    **fields,
                    "records": records - self._behind_records,
                    "catch_up_s": round(catch_up_s, 3),
                },
            )
        else:
            logger.info("caught up: %d partitions at their log end", partitions, extra=fields)
