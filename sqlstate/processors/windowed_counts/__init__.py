"""The built-in processor ``windowed-counts``: messages per key per tumbling window of record time.

A record belongs to the window ``[start, start + window)`` that holds its Kafka timestamp,
windows being aligned to 1970-01-01T00:00:00Z (so a ``1d`` window is a UTC day, whatever the
machine's time zone). The view ``window_counts (topic, key, window_start, window_end, count)``
sums the partitions; ``window_start`` and ``window_end`` are ISO 8601 UTC text.

Retention, per partition, on record time only: a window is kept while its end is later than the
partition's highest timestamp seen minus the retention. A record whose window is already past
that, counting every record before it in the partition, is *too old*: it is not counted, and
the counter ``sqlstate_processor_records_total{processor="windowed-counts",counter="too_old"}``
counts it. The highest timestamp is stored beside the counts (``window_clocks``) and moves in
the same transaction, so the table depends on the records alone: the same records give the same
rows whatever the batch boundaries, restarts or rebalances. (A record too old for the windows
kept was counted in a window that retention deletes anyway, so dropping it changes nothing but
the work.)

The package is the whole processor: this code, its statements (``queries.sql``) and its tables
(``migrations/``, recorded as ``windowed-counts/0001_window_counts``...).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import TopicPartition

from sqlstate.processors import Migration, Queries, Statement, bundled
from sqlstate.processors.base import ParsedRecords, record_key
from sqlstate.processors.keys import split_keys

sql = Queries(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def window_start(timestamp_ms: int, window_ms: int) -> int:
    """The start of the window holding ``timestamp_ms``: windows tile time from the epoch, also
    before it (a negative timestamp falls in the window below it, as floor division does)."""
    return timestamp_ms - timestamp_ms % window_ms


def iso_utc(timestamp_ms: int) -> str:
    """``2026-11-28T09:15:00.000Z``: ISO 8601, UTC, milliseconds; sorts like time. A timestamp
    outside the years 1-9999 (a producer's mistake) is written ``out of range: <ms> ms``."""
    try:
        moment = _EPOCH + timedelta(milliseconds=timestamp_ms)
    except OverflowError:
        return f"out of range: {timestamp_ms} ms"
    # Fields by hand: strftime's %Y drops leading zeros of years before 1000 on some platforms.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
    )


class WindowedCounts:
    """Counts per key per tumbling window, with retention on record time."""

    name = "windowed-counts"
    # --changelog: what identifies a row (a window's end is part of it: windows of another
    # --window size live beside the old ones), and how to find it through the unique index.
    changelog_tables: Mapping[str, Sequence[str]] = {
        "windowed_key_counts": ("topic", "partition", "key", "window_start_ms", "window_end_ms"),
        "window_clocks": ("topic", "partition"),
    }

    def __init__(self, window_ms: int, retention_ms: int) -> None:
        if window_ms <= 0 or retention_ms <= 0:
            raise ValueError("the window and the retention must be positive")
        self.window_ms = window_ms
        self.retention_ms = retention_ms
        self.migrations: Sequence[Migration] = bundled(__name__)
        self._iso: dict[int, str] = {}  # window bounds already formatted; a handful per run

    @property
    def definition(self) -> str:
        """What makes its state besides sqlstate's version (``sqlstate rebuild`` compares it)."""
        return f"{self.name} window_ms={self.window_ms} retention_ms={self.retention_ms}"

    @property
    def changelog_matches(self) -> Mapping[str, str]:
        return {"windowed_key_counts": sql("changelog_match_windowed_key_counts")}

    def statements(self, tp: TopicPartition, records: ParsedRecords) -> Sequence[Statement]:
        window, retention = self.window_ms, self.retention_ms
        timestamps = [record.timestamp for record in records]
        lowest, highest = min(timestamps), max(timestamps)
        first = lowest - lowest % window
        too_old = 0
        by_window: dict[int, Counter[Any]]
        if highest < first + window:
            # The usual case: the whole batch falls in one window, which the batch cannot
            # make too old (it ends after the batch's highest timestamp).
            by_window = {first: Counter(map(record_key, records))}
        elif first + window > highest - retention:
            # The batch spans less than the retention: no record of it makes another too old.
            by_window = defaultdict(Counter)
            for timestamp, record in zip(timestamps, records, strict=True):
                by_window[timestamp - timestamp % window][record.key] += 1
        else:
            by_window = defaultdict(Counter)
            seen = timestamps[0]  # the highest timestamp so far, this record's included
            for timestamp, record in zip(timestamps, records, strict=True):
                seen = max(seen, timestamp)
                start = timestamp - timestamp % window
                if start + window <= seen - retention:
                    too_old += 1
                else:
                    by_window[start][record.key] += 1
        partition = {"topic": tp.topic, "partition": tp.partition}
        statements = [
            Statement(
                sql("count_too_old"),
                [
                    {
                        **partition,
                        "too_old": too_old,
                        "windows": json.dumps(
                            {start: sum(keys.values()) for start, keys in by_window.items()}
                        ),
                        "window_ms": window,
                        "retention_ms": retention,
                    }
                ],
                counter="too_old",
            )
        ]
        single_rows = []
        for start, key_counts in sorted(by_window.items()):
            end = start + window
            bounds = {
                "window_start_ms": start,
                "window_end_ms": end,
                "window_start": self._text(start),
                "window_end": self._text(end),
            }
            document, others = split_keys(key_counts)
            if document is not None:
                statements.append(
                    Statement(
                        sql("upsert_partition_window_counts"),
                        [
                            {
                                **partition,
                                **bounds,
                                "counts": document,
                                "retention_ms": retention,
                            }
                        ],
                    )
                )
            start_text, end_text = bounds["window_start"], bounds["window_end"]
            single_rows += [
                (tp.topic, tp.partition, key, start, end, start_text, end_text, count, retention)
                for key, count in others
            ]
        if single_rows:
            statements.append(Statement(sql("upsert_window_counts"), single_rows))
        statements += [
            Statement(sql("advance_window_clock"), [{**partition, "max_timestamp": highest}]),
            Statement(sql("expire_windows"), [{**partition, "retention_ms": retention}]),
        ]
        return statements

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        partition = [{"topic": tp.topic, "partition": tp.partition}]
        return [
            Statement(sql("forget_window_counts"), partition),
            Statement(sql("forget_window_clock"), partition),
        ]

    def _text(self, timestamp_ms: int) -> str:
        text = self._iso.get(timestamp_ms)
        if text is None:
            if len(self._iso) > 10_000:
                self._iso.clear()
            text = self._iso[timestamp_ms] = iso_utc(timestamp_ms)
        return text
