"""The tombstone horizon (``changelog/horizon.py``): which partitions a file must restore whole,
what forgetting one does to the file (``apply.forget_for_restore``), and where the standby
follows new partitions from while Kafka answers or does not (``Standby._starts``). The end to
end case, against a broker whose log has lost a deletion's tombstone, is in
``tests/acceptance/test_changelog_horizon.py``."""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from sqlstate.changelog import horizon as horizon_module
from sqlstate.changelog import standby as standby_module
from sqlstate.changelog.apply import apply_changes, forget_for_restore
from sqlstate.changelog.capture import install_capture
from sqlstate.changelog.offsets import changelog_offsets, record_changelog_offset
from sqlstate.changelog.reader import ChangelogChunk
from sqlstate.changelog.records import ChangelogRecord, position_record
from sqlstate.changelog.standby import Standby, apply_chunk
from sqlstate.changelog.tables import state_tables
from sqlstate.errors import ChangelogLostError
from sqlstate.kafka.client import EARLIEST, LATEST
from sqlstate.observe.stats import Stats
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.registry import Processors
from sqlstate.settings import Settings
from sqlstate.state.database import Database, utc_now
from tests.support.db import query, writing
from tests.support.processing import open_store

TABLES = state_tables([KeyCounter()])


def counted(partition: int, key: str, count: int) -> tuple[bytes, bytes]:
    """A key_counts row of topic t as its owner's capture writes it."""
    return (
        b'["key_counts","t",%d,"%s"]' % (partition, key.encode()),
        b'{"topic":"t","partition":%d,"key":"%s","count":%d}' % (partition, key.encode(), count),
    )


def dead_letter(columns: list[str], partition: int, offset: int) -> tuple[bytes, bytes]:
    """A rejected_records row of topic t (``columns``: the table's) as its owner's capture
    writes it."""
    row: dict[str, object] = dict.fromkeys(columns, "x")
    row.update(topic="t", partition=partition, offset=offset)
    key = b'["rejected_records","t",%d,%d]' % (partition, offset)
    return key, json.dumps(row, separators=(",", ":")).encode()


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))]


def _apply(
    conn: sqlite3.Connection, partition: int, pairs: Sequence[tuple[bytes, bytes | None]]
) -> Any:
    records = [(key, value, offset) for offset, (key, value) in enumerate(pairs, start=10)]
    return apply_changes(conn, "t", partition, records, TABLES, now=utc_now())


def _state(path: Path) -> list[tuple[Any, ...]]:
    return query(
        path, "SELECT topic, partition, key, count FROM key_counts ORDER BY partition, key"
    )


@pytest.mark.parametrize("capture", [False, True])
async def test_forgetting_a_partition_leaves_the_others_and_a_whole_restore_is_exact(
    tmp_path: Path, capture: bool
) -> None:
    path = tmp_path / "state.db"
    processors = Processors.checked([KeyCounter()])
    database = (await open_store(path, processors)).database
    t0 = TopicPartition("t", 0)
    try:
        if capture:
            await database.setting(functools.partial(install_capture, tables=TABLES))
        # What the file holds: a row whose deletion it missed (its tombstone is gone from the
        # changelog), a row and a dead letter of partition 0, a row of partition 1.
        columns = await database.read(functools.partial(_columns, table="rejected_records"))
        ours = [
            counted(0, "ghost", 5),
            counted(0, "k1", 1),
            dead_letter(columns, 0, 3),
            position_record(50),
        ]
        await database.transaction(functools.partial(_apply, partition=0, pairs=ours))
        theirs = [counted(1, "theirs", 3), position_record(60)]
        await database.transaction(functools.partial(_apply, partition=1, pairs=theirs))
        epoch_before = query(path, "SELECT epoch FROM positions WHERE partition = 0")

        def forget(applied: int, claimed: bool = False) -> Any:
            return functools.partial(
                forget_for_restore,
                tp=t0,
                tables=TABLES,
                applied=applied,
                log_start=0,
                claimed=lambda tp: claimed,
            )

        # Claimed by this process meanwhile: its restore decides. Moved by another process on
        # the file since it was found too old: read from where it stands now.
        assert await database.transaction(forget(14, claimed=True)) is None
        assert await database.transaction(forget(13)) == (14, False)
        # A hand-over's seed not yet published: the file's rows are the partition's state.
        with writing(path) as conn:
            conn.execute("INSERT INTO changelog_seeds VALUES ('t', 0, 'h')")
        assert await database.transaction(forget(14)) == (14, False)
        with writing(path) as conn:
            conn.execute("DELETE FROM changelog_seeds")
        assert len(_state(path)) == 3

        assert await database.transaction(forget(14)) == (0, True)
        assert _state(path) == [("t", 1, "theirs", 3)]
        assert query(path, "SELECT count(*) FROM rejected_records") == [(0,)]
        assert query(path, "SELECT partition, next_offset FROM positions ORDER BY 1") == [
            (0, 0),
            (1, 60),
        ]
        assert query(path, "SELECT epoch FROM positions WHERE partition = 0") == epoch_before
        offsets = await database.read(changelog_offsets)
        assert offsets == {t0: 0, TopicPartition("t", 1): 12}
        if capture:
            # The deletes are no change of this file's owner's: nothing left to publish.
            captured = await database.read(
                lambda conn: conn.execute("SELECT count(*) FROM changelog_capture").fetchone()[0]
            )
            assert captured == 0

        # The whole changelog as compaction left it: every live key's last value, the last
        # position; the ghost's tombstone is gone. Positions from 0 on are not refused as
        # going back.
        whole = [counted(0, "k1", 2), position_record(40), position_record(70)]
        records = [(key, value, offset) for offset, (key, value) in enumerate(whole, start=1)]
        applied = await database.transaction(
            lambda conn: apply_changes(conn, "t", 0, records, TABLES, now=utc_now())
        )
        assert applied.quarantined == ()
        assert _state(path) == [("t", 0, "k1", 2), ("t", 1, "theirs", 3)]
        assert query(path, "SELECT next_offset FROM positions WHERE partition = 0") == [(70,)]
    finally:
        await database.close()
        processors.close()


async def _one_row_applied_to(database: Database, tp: TopicPartition, offset: int) -> None:
    """The file holds one row of ``tp`` (partition 0) and has applied its changelog up to
    ``offset``."""
    await database.transaction(
        functools.partial(_apply, partition=0, pairs=[counted(0, "k", 1), position_record(9)])
    )
    await database.transaction(
        functools.partial(record_changelog_offset, tp=tp, next_offset=offset)
    )


def _kafka_keeps_tombstones(monkeypatch: pytest.MonkeyPatch, retention_ms: int) -> None:
    """Kafka says every changelog keeps its tombstones ``retention_ms`` (DescribeConfigs)."""

    async def described(settings: Settings, names: list[str]) -> dict[str, int]:
        return dict.fromkeys(names, retention_ms)

    monkeypatch.setattr(horizon_module, "delete_retention_ms", described)


class _Kafka:
    """ListOffsets of a changelog whose partitions start at ``start`` and end at 100: partition
    0's first record at or after the asked time is at 40, partition 1 has none that young."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.asked: list[int] = []

    async def __call__(self, tps: Iterable[TopicPartition], at: int) -> dict[TopicPartition, int]:
        tps = list(tps)
        if at == EARLIEST:
            return {tp: self.start for tp in tps}
        if at == LATEST:
            return {tp: 100 for tp in tps}
        self.asked.append(at)
        return {tp: 40 if tp.partition == 0 else -1 for tp in tps}


@pytest.mark.parametrize(
    ("applied", "whole"),
    [
        # Two before the first young record; two before the end (the last offset is a marker).
        ({0: 38, 1: 98}, {0: 0, 1: 0}),
        # One short of them: a marker, or the first record of the young one's transaction.
        ({0: 39, 1: 99}, {}),
        ({0: 40, 1: 100}, {}),
        ({0: 0, 1: 0}, {}),  # nothing applied yet: the restore reads the whole log anyway
    ],
)
async def test_a_file_behind_the_horizon_restores_whole(
    applied: dict[int, int], whole: dict[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    retention = 10_000

    _kafka_keeps_tombstones(monkeypatch, retention)
    settings = Settings(topics=("t",), group_id="g")
    kafka = _Kafka(start=0)
    before = int(time.time() * 1000)
    stale = await horizon_module.TombstoneHorizon(settings).stale(
        kafka, {TopicPartition("t", p): offset for p, offset in applied.items()}
    )
    after = int(time.time() * 1000)
    assert {tp: restore.log_start for tp, restore in stale.items()} == {
        TopicPartition("t", p): start for p, start in whole.items()
    }
    for at in kafka.asked:
        # A tenth of the retention short of it: the margin for clocks and the restore's length.
        assert before - retention + retention // 10 <= at <= after - retention + retention // 10
    assert len(kafka.asked) == (1 if any(applied.values()) else 0)


async def test_a_changelog_that_lost_its_start_cannot_restore_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records deleted from the changelog (its log start moved): the whole state is not in it,
    so the host stops (exit 5), as for any changelog that lost records."""

    _kafka_keeps_tombstones(monkeypatch, 10_000)
    horizon = horizon_module.TombstoneHorizon(Settings(topics=("t",), group_id="g"))
    with pytest.raises(ChangelogLostError, match="now starts at offset 5"):
        await horizon.stale(_Kafka(start=5), {TopicPartition("t", 0): 38})
    # Not too old: the tail is applied, whatever the start.
    assert await horizon.stale(_Kafka(start=5), {TopicPartition("t", 0): 39}) == {}


async def test_a_chunk_read_past_the_files_offset_is_not_applied(tmp_path: Path) -> None:
    """Another process on the file forgot the partition (its offset went back) while this
    one's standby had read on: applying the chunk would skip what lies between."""
    path = tmp_path / "state.db"
    processors = Processors.checked([KeyCounter()])
    database = (await open_store(path, processors)).database
    t0 = TopicPartition("t", 0)
    try:
        records = [
            ChangelogRecord(*counted(0, "k1", 1), 20),
            ChangelogRecord(*position_record(9), 21),
        ]
        ahead = ChangelogChunk(records, 23, start=20)
        done = await database.transaction(
            functools.partial(apply_chunk, tp=t0, chunk=ahead, tables=TABLES, now=utc_now())
        )
        assert (done.behind, done.records, done.next_offset) == (True, 0, 0)
        assert _state(path) == []
        at_start = ChangelogChunk(records, 23, start=0)
        done = await database.transaction(
            functools.partial(apply_chunk, tp=t0, chunk=at_start, tables=TABLES, now=utc_now())
        )
        assert (done.behind, done.records, done.next_offset) == (False, 2, 23)
        assert _state(path) == [("t", 0, "k1", 1)]
    finally:
        await database.close()
        processors.close()


async def test_a_whole_restore_cut_short_goes_on_within_the_margin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Forgotten here and restored part of the way (its offset still in the old part of the
    log): asked again within a tenth of the retention, it goes on; later, it starts over."""
    retention = 10_000

    _kafka_keeps_tombstones(monkeypatch, retention)
    clock = [1_000.0]
    horizon = horizon_module.TombstoneHorizon(
        Settings(topics=("t",), group_id="g"), clock=lambda: clock[0]
    )
    t0 = TopicPartition("t", 0)
    (restore,) = (await horizon.stale(_Kafka(start=0), {t0: 38})).values()
    horizon.began(t0, restore)
    clock[0] += retention / 10 / 1000 - 0.01
    assert await horizon.stale(_Kafka(start=0), {t0: 20}) == {}
    clock[0] += 0.02
    assert t0 in await horizon.stale(_Kafka(start=0), {t0: 20})


async def test_a_standby_waits_to_follow_what_kafka_cannot_date_and_forgets_what_is_too_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the standby follows new partitions from (``Standby._starts``). Kafka is asked only
    about a partition the file applied part of: not one it never applied (offset 0), nor one
    claimed here (its claim's restore checks it). While Kafka does not answer, those wait, asked
    again after a pause that doubles up to its bound; the others are followed meanwhile. Once it
    answers, one too old is forgotten and followed from the log's start, unless a claim of this
    process took it meanwhile: then it is left to that claim."""

    _kafka_keeps_tombstones(monkeypatch, 10_000)
    monkeypatch.setattr(standby_module, "_HORIZON_WAIT_S", 0.05)
    monkeypatch.setattr(standby_module, "_DEFERRED_MAX_S", 0.15)
    path = tmp_path / "state.db"
    processors = Processors.checked([KeyCounter()])
    database = (await open_store(path, processors)).database
    t0, t1, t2 = (TopicPartition("t", p) for p in range(3))
    standby: Standby | None = None
    try:
        await _one_row_applied_to(database, t0, 38)
        await database.transaction(
            functools.partial(record_changelog_offset, tp=t2, next_offset=50)
        )
        standby = Standby(Settings(topics=("t",), group_id="g"), database, TABLES, Stats())
        monkeypatch.setattr(standby._follower, "offsets_at", _Kafka(start=0))
        standby.pause([t2])  # claimed here
        answers = standby.horizon.stale

        async def silent(*args: Any) -> Any:
            await asyncio.sleep(1)

        monkeypatch.setattr(standby.horizon, "stale", silent)
        pauses = []
        for _ in range(4):
            starts, unchecked, deferred = await standby._starts([t0, t1, t2])
            assert (starts, unchecked, deferred) == ({t0: 38, t1: 0, t2: 50}, {t2}, {t0})
            pauses.append(standby._deferred_for)
        assert pauses == [0.05, 0.1, 0.15, 0.15]

        async def claimed_meanwhile(*args: Any) -> Any:
            stale = await answers(*args)
            standby.pause([t0])
            return stale

        monkeypatch.setattr(standby.horizon, "stale", claimed_meanwhile)
        starts, unchecked, deferred = await standby._starts([t0, t1])
        assert (starts, unchecked, deferred) == ({t0: 38, t1: 0}, {t0}, set())
        assert standby._deferred_for == 0
        assert _state(path) == [("t", 0, "k", 1)]  # left to the claim

        standby._paused.discard(t0)
        monkeypatch.setattr(standby.horizon, "stale", answers)
        starts, unchecked, deferred = await standby._starts([t0, t1])
        assert (starts, unchecked, deferred) == ({t0: 0, t1: 0}, set(), set())
        assert _state(path) == []  # forgotten, to be restored whole
        offsets = await database.read(changelog_offsets)
        assert offsets[t0] == 0
    finally:
        if standby is not None:
            await standby.stop()  # its consumer never started: closed unused
        await database.close()
        processors.close()


async def test_a_standby_checks_what_it_follows_again_before_applying_a_late_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running standby (``Standby._young_enough``): a poll's chunk whose partition was
    checked less than R/20 ago is applied without asking Kafka. Once its check is older (a
    process frozen, suspended or cut off), or it has none (let go by a claim here), it is
    checked again first: too old, it is forgotten and followed from the log's start, its chunk
    dropped; while Kafka does not answer, its chunk is dropped and read again from the file's
    offset."""
    retention_ms = 10_000  # a check lasts R/20: 0.5 s

    _kafka_keeps_tombstones(monkeypatch, retention_ms)
    monkeypatch.setattr(standby_module, "_HORIZON_WAIT_S", 0.05)
    monkeypatch.setattr(standby_module, "_POLL_MS", 1)
    path = tmp_path / "state.db"
    processors = Processors.checked([KeyCounter()])
    database = (await open_store(path, processors)).database
    t0 = TopicPartition("t", 0)
    standby: Standby | None = None
    try:
        await _one_row_applied_to(database, t0, 38)
        standby = Standby(Settings(topics=("t",), group_id="g"), database, TABLES, Stats())
        kafka = _Kafka(start=0)  # offset 38 lies two before partition 0's first young record
        monkeypatch.setattr(standby._follower, "offsets_at", kafka)
        monkeypatch.setattr(standby._follower, "_reassign", lambda: None)
        checked_ids: list[set[str]] = []

        async def same_changelogs(consumer: Any, changelogs: set[str], stop: Any) -> bool:
            checked_ids.append(changelogs)
            return True

        monkeypatch.setattr(standby, "_same_changelogs", same_changelogs)
        consumer: Any = None
        stop = asyncio.Event()
        source = standby._source(t0)
        standby._follower.follow({source: 38})
        chunk = ChangelogChunk([], 45, start=38)

        def poll() -> dict[TopicPartition, ChangelogChunk]:
            return {source: chunk}

        now = time.time(), time.monotonic()
        standby._young_at[t0] = now
        assert await standby._young_enough(poll(), consumer, stop) == {source: chunk}
        assert kafka.asked == []  # checked just now: Kafka is not asked

        answers = standby.horizon.stale

        async def silent(*args: Any) -> Any:
            await asyncio.sleep(1)

        monkeypatch.setattr(standby.horizon, "stale", silent)
        standby._follower.follow({source: 45})  # the poll's chunk was read
        # Checked twice as long ago as a check lasts, by the wall clock (a machine suspended:
        # the monotonic clock stood still).
        standby._young_at[t0] = (now[0] - 1, now[1])
        assert await standby._young_enough(poll(), consumer, stop) == {}
        assert standby._follower.followed == {source: 38}  # read again from the file's offset
        assert _state(path) == [("t", 0, "k", 1)]

        monkeypatch.setattr(standby.horizon, "stale", answers)
        del standby._young_at[t0]  # let go by a claim here: never checked since
        assert await standby._young_enough(poll(), consumer, stop) == {}
        assert len(kafka.asked) == 1
        assert _state(path) == []  # forgotten, to be restored whole
        assert checked_ids == [{source.topic}]  # its changelog's ID first
        assert standby._follower.followed == {source: 0}
        assert (await database.read(changelog_offsets))[t0] == 0
        assert standby._young_at[t0] >= now  # checked: the next poll is applied
        assert await standby._young_enough(poll(), consumer, stop) == {source: chunk}
        assert len(kafka.asked) == 1
        # By the monotonic clock alone (the wall clock set back): due, checked again.
        standby._young_at[t0] = (now[0] + 10, now[1] - 1)
        assert await standby._young_enough(poll(), consumer, stop) == {source: chunk}
        assert standby._young_at[t0][1] > now[1]
    finally:
        if standby is not None:
            await standby.stop()
        await database.close()
        processors.close()
