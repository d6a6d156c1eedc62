"""The built-in processors ``latest`` and ``windowed-counts`` on a real SQLite file: tombstones,
window arithmetic at its boundaries and in every time zone, retention, and the same table
whatever the batch boundaries."""

from __future__ import annotations

import itertools
import os
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from sqlstate.processors.base import Processor, Record, Statement
from sqlstate.processors.latest import BLOB_LIMIT, Latest, _row_by_row, sql
from sqlstate.processors.registry import Processors
from sqlstate.processors.windowed_counts import WindowedCounts, iso_utc, window_start
from sqlstate.settings import duration_ms
from sqlstate.state.out_of_range import LogBounds
from tests.support.db import query
from tests.support.processing import fold, open_store, record

TP = TopicPartition("t", 0)
OTHER = TopicPartition("t", 1)
MINUTE = 60_000
DAY = 86_400_000
# 2026-03-29, the night Europe moves its clocks forward: nothing of it may show in UTC windows.
DST_NIGHT = 1_774_745_400_000  # 2026-03-29T00:50:00Z


def split(records: Sequence[Record], cuts: Sequence[int]) -> list[list[Record]]:
    bounds = [0, *sorted(cuts), len(records)]
    return [list(records[a:b]) for a, b in itertools.pairwise(bounds) if b > a]


def some_splits(records: Sequence[Record], seed: int = 3) -> Iterator[list[list[Record]]]:
    """The whole list as one batch, one record per batch, and random cuts."""
    rng = random.Random(seed)
    yield [list(records)]
    yield [[r] for r in records]
    for _ in range(3):
        yield split(records, rng.sample(range(1, len(records)), k=rng.randrange(1, 8)))


# ---- latest ------------------------------------------------------------------------------------


def latest_rows(path: Path) -> list[tuple[Any, ...]]:
    return query(path, "SELECT topic, partition, key, value, offset FROM latest ORDER BY 1, 2, 3")


async def test_latest_keeps_the_last_value_and_a_tombstone_deletes(tmp_path: Path) -> None:
    records = [
        record(TP, 0, b"a", b"1"),
        record(TP, 1, b"b", b"x"),
        record(TP, 2, b"a", b"2"),
        record(TP, 3, b"b", None),  # tombstone
        record(TP, 4, None, b"no key"),
        record(TP, 5, b"\xff", b"\xfe"),  # not UTF-8: BLOBs
        record(TP, 6, b"c", b"gone"),
        record(TP, 7, b"c", None),
        record(TP, 8, b"c", b"back"),
        record(OTHER, 0, b"a", b"other partition"),
    ]
    expected = [
        ("t", 0, None, "no key", 4),
        ("t", 0, "a", "2", 2),
        ("t", 0, "c", "back", 8),
        ("t", 0, b"\xff", b"\xfe", 5),
        ("t", 1, "a", "other partition", 0),
    ]
    for number, batches in enumerate(some_splits(records)):
        path = tmp_path / f"{number}.db"
        await fold(path, [Latest()], batches)
        assert sorted(latest_rows(path), key=repr) == sorted(expected, key=repr), batches


class RowByRowLatest(Latest):
    """``latest`` as it was: one upsert or delete row per distinct key, the reference."""

    def statements(self, tp: TopicPartition, records: Sequence[Record]) -> Sequence[Statement]:
        return _row_by_row(tp, {record.key: record for record in records})


def typed_latest(path: Path) -> list[tuple[Any, ...]]:
    return query(
        path,
        "SELECT topic, partition, key, typeof(key), value, typeof(value), offset, timestamp"
        " FROM latest ORDER BY 1, 2, quote(key)",
    )


# Keys and values of every kind the one-statement path must carry exactly, or hand over.
ODD_TEXT = ["plain", "", 'quo"te', "back\\slash", "tab\tnew\nline", "é", "日本", "🙂", "\u2028"]
BATCHES_OF_EVERY_KIND: dict[str, list[tuple[Any, Any]]] = {
    "ascii bytes": [(b"k%d" % (i % 5), b'{"n": %d}' % i) for i in range(20)],
    "utf-8 bytes": [(k.encode(), (k + "=" + k).encode()) for k in ODD_TEXT],
    "text (--key-format/--value-format text)": [(k, "v" + k) for k in ODD_TEXT],
    "empty and NUL values": [(b"a", b""), (b"b", b"x\x00y"), (b"c", b"\x00")],
    "only empty values": [(b"a", b""), (b"b", b"")],
    "only empty text values": [("a", ""), ("b", "")],
    "tombstones among values": [(b"a", b"1"), (b"b", None), (b"c", b"3"), (b"a", None)],
    "only tombstones": [(b"a", None), (b"b", None)],
    "a value not UTF-8": [(b"a", b"ok"), (b"b", b"\xff\xfe")],
    "a null key": [(b"a", b"1"), (None, b"2")],
    "a key not UTF-8": [(b"a", b"1"), (b"\xff", b"2")],
    "a key with NUL": [(b"a", b"1"), (b"n\x00ul", b"2")],
    "the six characters \\u0000 in a key": [(b"a\\u0000", b"1")],
}


@pytest.mark.parametrize("kind", list(BATCHES_OF_EVERY_KIND))
async def test_latest_in_one_statement_stores_what_row_by_row_does(
    tmp_path: Path, kind: str
) -> None:
    pairs = BATCHES_OF_EVERY_KIND[kind]
    earlier = [record(TP, i, key, b"earlier", timestamp=i) for i, (key, _) in enumerate(pairs)]
    records = [
        record(TP, len(pairs) + i, key, value, timestamp=7_000 + i)
        for i, (key, value) in enumerate(pairs)
    ]
    for splits in ([[*earlier, *records]], [earlier, records]):
        await fold(tmp_path / f"{len(splits)}-rows.db", [RowByRowLatest()], splits)
        await fold(tmp_path / f"{len(splits)}-one.db", [Latest()], splits)
        expected = typed_latest(tmp_path / f"{len(splits)}-rows.db")
        assert typed_latest(tmp_path / f"{len(splits)}-one.db") == expected, kind


def statement_names(records: Sequence[Record]) -> list[str]:
    names = {
        sql(name): name
        for name in (
            "upsert_partition_latest",
            "delete_partition_latest",
            "upsert_latest",
            "delete_latest",
        )
    }
    return [names[statement.sql] for statement in Latest().statements(TP, records)]


@pytest.mark.parametrize(
    ("kind", "names"),
    [
        ("ascii bytes", ["upsert_partition_latest"]),
        ("utf-8 bytes", ["upsert_partition_latest"]),
        ("text (--key-format/--value-format text)", ["upsert_partition_latest"]),
        ("empty and NUL values", ["upsert_partition_latest"]),
        ("only empty values", ["upsert_partition_latest"]),
        ("tombstones among values", ["upsert_partition_latest", "delete_partition_latest"]),
        ("only tombstones", ["delete_partition_latest"]),
        ("a value not UTF-8", ["upsert_latest"]),
        ("a null key", ["upsert_latest"]),
        ("a key not UTF-8", ["upsert_latest"]),
        ("a key with NUL", ["upsert_latest"]),
    ],
)
def test_latest_goes_row_by_row_only_for_what_json_cannot_carry(
    kind: str, names: list[str]
) -> None:
    pairs = BATCHES_OF_EVERY_KIND[kind]
    assert statement_names([record(TP, i, k, v) for i, (k, v) in enumerate(pairs)]) == names


def test_latest_goes_row_by_row_above_the_blob_limit() -> None:
    big = b"x" * (BLOB_LIMIT // 2 + 1)
    assert statement_names([record(TP, 0, b"a", big), record(TP, 1, b"b", big)]) == [
        "upsert_latest"
    ]


async def test_a_reset_forgets_one_partition_of_each_processor(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    members: list[Processor] = [Latest(), WindowedCounts(MINUTE, DAY)]
    await fold(path, members, [[record(TP, 0, b"a"), record(OTHER, 0, b"a")]])
    processors = Processors(members)
    store = await open_store(path, processors)
    try:
        claims = (
            await store.claim(
                {TP: LogBounds(0, 5)},
                "me",
                "reset",
                processors.forget,
                topic_ids={},
                isolation_level="read_committed",
            )
        ).claims
        claimed = await store.claim(
            {TP: LogBounds(claims[TP].next_offset + 1, 5)},
            "me",
            "reset",
            processors.forget,
            topic_ids={},
            isolation_level="read_committed",
        )
        assert [reset.tp for reset in claimed.resets] == [TP]
    finally:
        await store.database.close()
    assert latest_rows(path) == [("t", 1, "a", "v", 0)]
    assert query(path, "SELECT partition FROM windowed_key_counts") == [(1,)]
    assert query(path, "SELECT partition FROM window_clocks") == [(1,)]


# ---- window arithmetic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "window", "start"),
    [
        (0, MINUTE, 0),
        (MINUTE - 1, MINUTE, 0),
        (MINUTE, MINUTE, MINUTE),
        (-1, MINUTE, -MINUTE),  # "no timestamp" (-1) falls just before the epoch
        (DST_NIGHT, DAY, DST_NIGHT - 50 * MINUTE),  # a day is a UTC day
        (DST_NIGHT + 10 * MINUTE, 3_600_000, DST_NIGHT + 10 * MINUTE),
        (1_700_000_123_456, 500, 1_700_000_123_000),
    ],
)
def test_a_window_starts_at_a_multiple_of_its_size_from_the_epoch(
    timestamp: int, window: int, start: int
) -> None:
    assert window_start(timestamp, window) == start
    assert start <= timestamp < start + window


@pytest.mark.parametrize(
    ("timestamp", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (DST_NIGHT, "2026-03-29T00:50:00.000Z"),
        (DST_NIGHT + 3_600_000, "2026-03-29T01:50:00.000Z"),
        (1_700_000_123_456, "2023-11-14T22:15:23.456Z"),
        (-62_135_596_800_000, "0001-01-01T00:00:00.000Z"),
        (253_402_300_800_000, "out of range: 253402300800000 ms"),
    ],
)
@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"])
def test_window_bounds_are_utc_text_in_every_time_zone(
    timestamp: int, text: str, zone: str
) -> None:
    before = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        assert iso_utc(timestamp) == text
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.mark.parametrize(
    ("text", "ms"),
    [("500ms", 500), ("30s", 30_000), ("1m", MINUTE), ("2h", 7_200_000), ("7d", 7 * DAY)],
)
def test_durations(text: str, ms: int) -> None:
    assert duration_ms(text) == ms


@pytest.mark.parametrize("text", ["0m", "1", "1y", "-1m", "1.5m", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_ms(text)


# ---- windowed counts ---------------------------------------------------------------------------


def window_rows(path: Path) -> list[tuple[Any, ...]]:
    return query(
        path,
        "SELECT topic, key, window_start, window_end, count FROM window_counts ORDER BY 1, 2, 3",
    )


def model(
    records: Sequence[Record], window: int, retention: int
) -> tuple[Counter[tuple[Any, ...]], int]:
    """What windowed-counts must hold, from its definition: per partition, a record counts unless
    its window ended at or before (the highest timestamp so far, its own included) minus the
    retention; windows that ended at or before the partition's highest minus the retention are
    gone."""
    counts: Counter[tuple[Any, ...]] = Counter()
    highest: dict[int, int] = {}
    too_old = 0
    for r in records:
        highest[r.partition] = max(highest.get(r.partition, r.timestamp), r.timestamp)
        start = window_start(r.timestamp, window)
        if start + window <= highest[r.partition] - retention:
            too_old += 1
            continue
        key = r.key.decode() if isinstance(r.key, bytes) else r.key
        counts[(r.partition, key, start)] += 1
    kept = Counter(
        {
            (partition, key, start): n
            for (partition, key, start), n in counts.items()
            if start + window > highest[partition] - retention
        }
    )
    view: Counter[tuple[Any, ...]] = Counter()
    for (_, key, start), n in kept.items():
        view[("t", key, iso_utc(start), iso_utc(start + window))] += n
    return view, too_old


async def test_windowed_counts_are_the_same_whatever_the_batch_boundaries(tmp_path: Path) -> None:
    rng = random.Random(7)
    base = DST_NIGHT
    records = []
    offsets = Counter[int]()
    for _ in range(120):
        tp = rng.choice([TP, OTHER])
        # Mostly moving forward, with late records, some far too late, and a jump ahead.
        timestamp = base + rng.randrange(-12, 30) * 20_000
        base += rng.choice([0, 5_000, 20_000, 400_000 if rng.random() < 0.05 else 0])
        records.append(
            record(tp, offsets[tp.partition], rng.choice([b"a", b"b", None]), b"v", timestamp)
        )
        offsets[tp.partition] += 1
    window, retention = MINUTE, 5 * MINUTE
    view, too_old = model(records, window, retention)
    assert too_old > 5
    assert len(view) > 5
    for number, batches in enumerate(some_splits(records)):
        path = tmp_path / f"{number}.db"
        counters = await fold(path, [WindowedCounts(window, retention)], batches)
        got = Counter({row[:4]: row[4] for row in window_rows(path)})
        assert got == view, batches
        assert counters["windowed-counts:too_old"] == too_old


async def test_a_restart_keeps_retention_where_it_was(tmp_path: Path) -> None:
    """Records too old for the windows already passed stay out after a restart: the highest
    timestamp is stored with the counts, not kept in memory."""
    path = tmp_path / "s.db"
    window, retention = MINUTE, 2 * MINUTE
    await fold(
        path, [WindowedCounts(window, retention)], [[record(TP, 0, b"k", b"v", 10 * MINUTE)]]
    )
    late = [record(TP, 1, b"k", b"v", 7 * MINUTE + 5), record(TP, 2, b"k", b"v", 9 * MINUTE)]
    counters = await fold(path, [WindowedCounts(window, retention)], [late])
    assert counters["windowed-counts:too_old"] == 1
    assert [row[2:] for row in window_rows(path)] == [
        ("1970-01-01T00:09:00.000Z", "1970-01-01T00:10:00.000Z", 1),
        ("1970-01-01T00:10:00.000Z", "1970-01-01T00:11:00.000Z", 1),
    ]


async def test_odd_keys_get_their_own_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    keys = [b"a", None, b"\xff", b"a\x00b", b"a", None]
    await fold(
        path, [WindowedCounts(MINUTE, DAY)], [[record(TP, i, k) for i, k in enumerate(keys)]]
    )
    rows = query(path, "SELECT key, count FROM window_counts")
    assert sorted(rows, key=repr) == sorted(
        [("a", 2), (None, 2), (b"\xff", 1), ("a\x00b", 1)], key=repr
    )
