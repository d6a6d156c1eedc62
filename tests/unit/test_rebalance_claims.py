"""The rebalance callbacks against a real database and a stand-in consumer (no broker)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time
import types
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import cast

import pytest
from aiokafka import TopicPartition

from sqlstate.app import claims, topic_watch
from sqlstate.app.batch_loop import BatchLoop
from sqlstate.app.claims import Claimer, Listener
from sqlstate.app.group_offsets import GroupOffsets
from sqlstate.app.ownership import Ownership
from sqlstate.app.topic_watch import TopicWatch
from sqlstate.changelog.owner import ChangelogOwner
from sqlstate.errors import ChangelogError, ChangelogFenced, DatabaseBusyError, OutOfRangeError
from sqlstate.kafka import bounds
from sqlstate.kafka.client import EARLIEST
from sqlstate.kafka.decoding import BadRecords, Decoding
from sqlstate.observe.stats import Stats
from sqlstate.processors.base import Statement
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.registry import Processors
from sqlstate.settings import Settings
from sqlstate.state import migrate
from sqlstate.state.changelog_side import ChangelogSide
from sqlstate.state.database import Database
from sqlstate.state.model import Change, Claim, Forget, PartitionBatch
from sqlstate.state.out_of_range import LogBounds
from sqlstate.state.store import Store

A, B = TopicPartition("t", 0), TopicPartition("t", 1)
TOPIC_IDS: dict[str, str | None] = {"t": "AAAAAAAAAAAAAAAAAAAAAQ"}


async def topic_ids(
    consumer: object, topics: Iterable[str], all_exist: bool = False
) -> dict[str, str | None]:
    """The claim's Metadata request, answered without a broker."""
    return {topic: TOPIC_IDS[topic] for topic in topics}


async def list_offsets(
    consumer: StandInConsumer, tps: Iterable[TopicPartition], at: int, isolation_level: str = ""
) -> dict[TopicPartition, int]:
    """The claim's ListOffsets requests, answered by the stand-in consumer."""
    lookup = consumer.beginning_offsets if at == EARLIEST else consumer.end_offsets
    return await lookup(list(tps))


@pytest.fixture(autouse=True)
def no_broker_for_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(claims, "topic_ids", topic_ids)
    monkeypatch.setattr(topic_watch, "topic_ids", topic_ids)
    monkeypatch.setattr(bounds, "list_offsets", list_offsets)


class StandInConsumer:
    """Only what the listener calls; the log of each partition is [50, 100)."""

    def __init__(self) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []
        # The group join the consumer last completed, as aiokafka's coordinator has it.
        self._coordinator = types.SimpleNamespace(generation=1, member_id="me")
        self.asked = asyncio.Event()  # set when the log's bounds are asked for
        self.answer = asyncio.Event()  # cleared: the bounds do not come until it is set
        self.answer.set()
        self.first = 50

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.asked.set()
        await self.answer.wait()
        return {tp: self.first for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 100 for tp in tps}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.assignment() if tp.topic == topic}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def pause(self, tp: TopicPartition) -> None:
        raise AssertionError("nothing here is claimed by another consumer")

    def resume(self, tp: TopicPartition) -> None:
        pass  # not paused: a no-op, as aiokafka's

    def assignment(self) -> set[TopicPartition]:
        return {A, B}


class HoldingConsumer(StandInConsumer):
    """Records pauses and resumes, with the position each partition had when paused."""

    def __init__(self) -> None:
        super().__init__()
        self.positions: dict[TopicPartition, int] = {}
        self.paused: dict[TopicPartition, int | None] = {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        super().seek(tp, offset)
        self.positions[tp] = offset

    def pause(self, tp: TopicPartition) -> None:
        self.paused[tp] = self.positions.get(tp)

    def resume(self, tp: TopicPartition) -> None:
        self.paused.pop(tp, None)


# The stand-in answers ListOffsets as a read_uncommitted consumer would: its end is the log's.
SETTINGS = Settings(topics=("t",), group_id="g", client_id="me", isolation_level="read_uncommitted")
# Session 2 s, heartbeat 1 s: each callback may wait 0.5 s.
QUICK = Settings(
    topics=("t",),
    group_id="g",
    client_id="me",
    isolation_level="read_uncommitted",
    session_timeout_ms=2000,
    heartbeat_interval_ms=1000,
)


def callbacks(
    consumer: StandInConsumer,
    store: Store,
    ownership: Ownership,
    settings: Settings,
    stats: Stats,
    forget: Forget,
    on_fatal: Callable[[BaseException], None],
    published: list[dict[TopicPartition, Claim]] | None = None,
    changelog: object = None,
) -> tuple[Claimer, Listener]:
    """The claimer and the listener a daemon builds, on the stand-in consumer; ``changelog``:
    a stand-in of the changelog owner, for --changelog."""
    claimer = Claimer(
        consumer,
        store,
        ownership,
        settings,
        stats,
        forget,
        lambda claims: (published if published is not None else []).append(dict(claims)),
        None if changelog is None else cast(ChangelogOwner, changelog),
    )
    return claimer, Listener(claimer, ownership, settings.rebalance_budget_s, on_fatal)


def batch_loop(
    consumer: StandInConsumer, store: Store, ownership: Ownership, claimer: Claimer, stats: Stats
) -> BatchLoop:
    """The batch loop a daemon builds, on the stand-in consumer, counting keys."""
    return BatchLoop(
        consumer,
        store,
        ownership,
        Processors([KeyCounter()]),
        QUICK,
        stats,
        claimer,
        TopicWatch(consumer, ownership),
        GroupOffsets(consumer, ownership, stats, enabled=False),
        BadRecords(Decoding("bytes", "bytes"), "fail"),
        asyncio.Event(),
    )


async def claim(store: Store, bounds: dict[TopicPartition, LogBounds], forget: Forget) -> None:
    """Claims by an earlier owner."""
    await store.claim(
        bounds, "earlier", "reset", forget, topic_ids=TOPIC_IDS, isolation_level="read_uncommitted"
    )


async def test_no_partition_is_seeked_before_every_claim_is_resolved(tmp_path: Path) -> None:
    """aiokafka fetches a partition as soon as it is seeked; a seek before the loop knows the
    claim would let the loop pass over the records fetched meanwhile."""
    database = await Database.open(tmp_path / "s.db", busy_timeout_s=5.0)
    await migrate.apply_pending(database)
    store = Store(database)
    consumer = StandInConsumer()
    seeks_seen_by_forget: list[int] = []

    def forget(tp: TopicPartition) -> list[Statement]:
        seeks_seen_by_forget.append(len(consumer.seeks))
        return []

    try:
        # Stored positions now below the log.
        await claim(store, {A: LogBounds(10, 10), B: LogBounds(10, 10)}, forget)
        ownership = Ownership(consumer)
        stats = Stats()
        fatal: list[BaseException] = []
        published: list[dict[TopicPartition, Claim]] = []
        _, listener = callbacks(
            consumer, store, ownership, SETTINGS, stats, forget, fatal.append, published
        )
        await listener.on_partitions_assigned({A, B})
    finally:
        await database.close()
    assert fatal == []
    assert seeks_seen_by_forget == [0, 0]
    assert sorted(consumer.seeks) == [(A, 50), (B, 50)]
    assert {tp: claim.next_offset for tp, claim in ownership.claims.items()} == {A: 50, B: 50}
    # The claims go to the copy in Kafka's group offsets once committed and sought.
    assert published == [ownership.claims]
    assert stats.out_of_range_resets == 2


def test_log_bounds() -> None:
    exact = LogBounds(5, 10)
    assert exact.holds(5)
    assert exact.holds(10)
    assert not exact.holds(4)
    assert not exact.holds(11)
    # Under read_committed the end is the last stable offset: the log reaches to its own end.
    stable = LogBounds(5, 10, log_end=12)
    assert stable.holds(12)
    assert not stable.holds(4)


def no_statements(tp: TopicPartition) -> list[Statement]:
    return []


async def test_a_revoke_waits_for_the_batch_in_flight_only_within_its_budget(
    tmp_path: Path,
) -> None:
    """A batch that cannot commit (the database locked) must not keep the revoke past the
    rebalance timeout: the partitions are released without the lock, and the generation moves,
    so the batch loop applies nothing of that commit when it ends."""
    database = await Database.open(tmp_path / "s.db", busy_timeout_s=5.0)
    await migrate.apply_pending(database)
    consumer = StandInConsumer()
    ownership = Ownership(consumer)
    _, listener = callbacks(
        consumer, Store(database), ownership, QUICK, Stats(), no_statements, print
    )
    try:
        await listener.on_partitions_assigned({A, B})
        generation = ownership.generation
        async with ownership.lock:  # the batch in flight
            started = time.monotonic()
            await listener.on_partitions_revoked({A, B})
            took = time.monotonic() - started
    finally:
        await database.close()
    assert QUICK.rebalance_budget_s <= took < QUICK.rebalance_budget_s + 0.3
    assert ownership.claims == {}
    assert ownership.generation > generation


async def test_an_assignment_that_cannot_be_claimed_in_time_is_held_then_claimed(
    tmp_path: Path,
) -> None:
    """The database locked by another process across an assignment: the callback returns within
    its budget with each partition paused at a position (never without one), and the batch
    loop's claim later seeks each to its stored position and resumes it."""
    path = tmp_path / "s.db"
    database = await Database.open(path, busy_timeout_s=5.0)
    await migrate.apply_pending(database)
    store = Store(database)
    await claim(store, {A: LogBounds(50, 100), B: LogBounds(50, 100)}, no_statements)
    consumer = HoldingConsumer()
    ownership = Ownership(consumer)
    fatal: list[BaseException] = []
    claimer, listener = callbacks(
        consumer, store, ownership, QUICK, Stats(), no_statements, fatal.append
    )
    locker = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        locker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        await listener.on_partitions_assigned({A, B})
        took = time.monotonic() - started
        assert took < QUICK.rebalance_budget_s + 0.3
        assert ownership.claims == {}
        assert ownership.held == {A, B}
        assert consumer.paused == {A: 0, B: 0}  # paused, each with a position
        with pytest.raises(DatabaseBusyError):
            await claimer.claim_held()
        assert ownership.held == {A, B}
        locker.execute("ROLLBACK")
        await claimer.claim_held()
    finally:
        locker.close()
        await database.close()
    assert fatal == []
    assert ownership.held == set()
    assert consumer.paused == {}
    assert {tp: claim.next_offset for tp, claim in ownership.claims.items()} == {A: 50, B: 50}
    assert {tp: claim.epoch for tp, claim in ownership.claims.items()} == {A: 2, B: 2}
    assert consumer.positions == {A: 50, B: 50}


async def test_an_out_of_range_lookup_is_made_outside_the_ownership_lock(tmp_path: Path) -> None:
    """The log's bounds of a partition found out of range come from the network: a revoke must
    be able to take the lock meanwhile, and the reset then leaves alone a partition this
    consumer no longer holds."""
    database = await Database.open(tmp_path / "s.db", busy_timeout_s=5.0)
    await migrate.apply_pending(database)
    store = Store(database)
    consumer = StandInConsumer()
    ownership = Ownership(consumer)
    stats = Stats()
    claimer, listener = callbacks(consumer, store, ownership, QUICK, stats, no_statements, print)
    loop = batch_loop(consumer, store, ownership, claimer, stats)
    try:
        await listener.on_partitions_assigned({A, B})
        consumer.first = 60  # records deleted past the stored position, 50
        consumer.asked.clear()
        consumer.answer.clear()
        lookup = asyncio.create_task(loop._out_of_range({A: 10}))
        await consumer.asked.wait()
        assert not ownership.lock.locked()
        async with asyncio.timeout(0.1):
            await listener.on_partitions_revoked({A, B})
        consumer.answer.set()
        await lookup
        position = await store.position(A)
    finally:
        await database.close()
    # Released meanwhile: not reset by this consumer; the next claim of A decides.
    assert position is not None
    assert position.next_offset == 50
    assert stats.out_of_range_resets == 0


class FailedClaimOwner:
    """The changelog owner as the claimer sees it, after the claim of A failed: its producer
    did not start, so A has none, and its changelog is paused for the claim."""

    def __init__(self) -> None:
        self.owned: frozenset[TopicPartition] = frozenset()
        self.claiming = frozenset({A})
        self.released: list[set[TopicPartition]] = []

    async def release(self, tps: Iterable[TopicPartition], *, follow: bool = True) -> None:
        self.released.append(set(tps))

    def keepable(self, tps: Iterable[TopicPartition]) -> set[TopicPartition]:
        return set()


async def test_a_failed_claim_moved_away_is_released(tmp_path: Path) -> None:
    """A rebalance that gives A to another member releases it here, producer or not: the
    release is what has the standby follow it again."""
    database = await Database.open(tmp_path / "s.db", busy_timeout_s=5.0)
    owner = FailedClaimOwner()
    consumer = HoldingConsumer()
    claimer = Claimer(
        consumer,
        Store(database),
        Ownership(consumer),
        SETTINGS,
        Stats(),
        lambda tp: [],
        lambda claims: None,
        cast(ChangelogOwner, owner),
    )
    try:
        await claimer.assign({B})
    finally:
        await database.close()
    assert owner.released == [{A}]


async def test_a_batch_dropped_while_its_partitions_stay_claimed_is_fetched_again(
    tmp_path: Path,
) -> None:
    """Batch N rolls back and holds only its own partitions again (a changelog producer was
    fenced), which changes the claims' generation; batch N+1, fetched meanwhile with B's records
    50..59, is then dropped. B stays claimed at 50 while the consumer's position is already 60:
    B must be sought back to 50, and the batch fetched in between must drop B's records, or
    the next batch would move B's position from 50 over records the file never counted."""
    database = await Database.open(tmp_path / "s.db", busy_timeout_s=5.0)
    await migrate.apply_pending(database)
    store = Store(database)
    consumer = HoldingConsumer()
    ownership = Ownership(consumer)
    claimer, listener = callbacks(consumer, store, ownership, QUICK, Stats(), no_statements, print)
    loop = batch_loop(consumer, store, ownership, claimer, Stats())
    try:
        await listener.on_partitions_assigned({A, B})
        fetched_under = ownership.generation
        batch = PartitionBatch(B, ownership.claims[B], 60, 100, 10, [])
        ownership.release({A})  # batch N's partition held again: the generation moves
        consumer.seeks.clear()
        refetch = await loop._commit_in_turn(fetched_under, [batch])
        assert refetch == {B}
        assert consumer.seeks == [(B, 50)]  # back to its claim at once
        # The batch fetched before that seek holds B's records from 60 on: not counted.
        assert loop._advances({}, {B: 70}, refetch, 0) == []
        assert consumer.seeks == [(B, 50), (B, 50)]
        position = await store.position(B)
    finally:
        await database.close()
    assert position is not None
    assert position.next_offset == 50


class ClaimingOwner:
    """The changelog owner as the claimer sees it, every restore complete at once; ``kept``:
    the partitions whose producer the next claim keeps."""

    def __init__(self, kept: frozenset[TopicPartition] = frozenset()) -> None:
        self.owned: frozenset[TopicPartition] = kept
        self.claiming: frozenset[TopicPartition] = frozenset()
        self.prepared: list[set[TopicPartition]] = []
        self.bound: list[dict[TopicPartition, int]] = []
        # The partitions whose producers were set to serve the next claim.
        self.served: list[set[TopicPartition]] = []

    async def release(self, tps: Iterable[TopicPartition], *, follow: bool = True) -> None:
        self.owned -= set(tps)

    def keepable(self, tps: Iterable[TopicPartition]) -> set[TopicPartition]:
        return set(tps) & self.owned

    async def prepare(self, tps: Iterable[TopicPartition], stop: object = None) -> bool:
        self.prepared.append(set(tps))
        return True

    def bind(self, claims: dict[TopicPartition, int]) -> None:
        self.bound.append(dict(claims))

    def serve_next_claim(self, tps: Iterable[TopicPartition]) -> None:
        self.served.append(set(tps))


@dataclasses.dataclass
class Running:
    """A consumer running over a real database, as a daemon builds it, with what it did."""

    consumer: HoldingConsumer
    store: Store
    ownership: Ownership
    stats: Stats
    claimer: Claimer
    loop: BatchLoop
    forgotten: list[TopicPartition]  # the partitions whose state the processors forgot
    published: list[dict[TopicPartition, Claim]]

    async def stored(self, tp: TopicPartition) -> tuple[int, int]:
        """The partition's position and epoch in the file."""
        position = await self.store.position(tp)
        assert position is not None
        return position.next_offset, position.epoch


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    settings: Settings = QUICK,
    changelog: ClaimingOwner | None = None,
    side: ChangelogSide | None = None,
) -> AsyncIterator[Running]:
    """A, B assigned and claimed at 50 (epoch 1); under ``changelog``, from the batch loop."""
    database = await Database.open(tmp_path / "s.db", busy_timeout_s=5.0)
    await migrate.apply_pending(database)
    store = Store(database, side)
    consumer = HoldingConsumer()
    ownership = Ownership(consumer)
    stats = Stats()
    forgotten: list[TopicPartition] = []
    published: list[dict[TopicPartition, Claim]] = []

    def forget(tp: TopicPartition) -> list[Statement]:
        forgotten.append(tp)
        return []

    claimer, _ = callbacks(
        consumer, store, ownership, settings, stats, forget, print, published, changelog
    )
    loop = batch_loop(consumer, store, ownership, claimer, stats)
    try:
        await claimer.assign({A, B})
        await claimer.claim_held()
        consumer.seeks.clear()
        published.clear()
        yield Running(consumer, store, ownership, stats, claimer, loop, forgotten, published)
    finally:
        await database.close()


async def test_a_position_found_out_of_range_while_running_is_claimed_again(
    tmp_path: Path,
) -> None:
    """The log of A loses the records past its stored position (50) while running: A is claimed
    again through the claim transaction, which forgets its state and restarts it at the log's
    first offset under a new epoch; then it is sought there and the claim published."""
    async with running(tmp_path) as run:
        generation = run.ownership.generation
        run.consumer.first = 60
        await run.loop._out_of_range({A: 55})
        assert await run.stored(A) == (60, 2)
    assert run.forgotten == [A]
    assert run.stats.out_of_range_resets == 1
    assert run.ownership.claims == {A: Claim(60, 2), B: Claim(50, 1)}
    assert run.consumer.seeks == [(A, 60)]
    assert run.published == [{A: Claim(60, 2)}]
    assert run.ownership.is_stale(generation), "a batch fetched under the old claim is dropped"


async def test_out_of_range_while_running_under_fail_writes_nothing(tmp_path: Path) -> None:
    async with running(tmp_path, dataclasses.replace(QUICK, out_of_range="fail")) as run:
        run.consumer.first = 60
        with pytest.raises(OutOfRangeError, match="stored position 50 of t-0 is outside the log"):
            await run.loop._out_of_range({A: 55})
        assert await run.stored(A) == (50, 1)
    assert run.forgotten == []
    assert run.stats.out_of_range_resets == 0


async def test_out_of_range_of_a_partition_another_consumer_claimed_is_left(
    tmp_path: Path,
) -> None:
    """This consumer is a zombie for A: another one claimed it in the file meanwhile. Its
    out-of-range must not claim A back (that would fence the owner): A is left paused."""
    async with running(tmp_path) as run:
        await claim(run.store, {A: LogBounds(50, 100)}, no_statements)  # the other consumer's
        run.consumer.first = 60
        await run.loop._out_of_range({A: 55})
        assert await run.stored(A) == (50, 2), "still the other consumer's claim"
    assert run.ownership.claims == {B: Claim(50, 1)}
    assert run.consumer.paused == {A: 50}
    assert run.forgotten == []
    assert run.stats.out_of_range_resets == 0


async def test_a_fetch_out_of_range_above_a_position_the_log_holds_seeks_back(
    tmp_path: Path,
) -> None:
    """Only the fetch was out of range (a lagging follower answered it): the claim stands."""
    async with running(tmp_path) as run:
        await run.loop._out_of_range({A: 120})
        assert await run.stored(A) == (50, 1)
    assert run.consumer.seeks == [(A, 50)]
    assert run.ownership.claims == {A: Claim(50, 1), B: Claim(50, 1)}


async def test_out_of_range_under_changelog_is_claimed_through_the_producer_it_has(
    tmp_path: Path,
) -> None:
    """Under --changelog a partition found out of range is claimed again at once, its claim's
    tombstones published through the producer this host has (a new one would fence the owner,
    were this host a zombie): no new producer, no restore; its state is forgotten."""
    owner = ClaimingOwner()
    async with running(tmp_path, changelog=owner) as run:
        run.consumer.first = 60
        await run.loop._out_of_range({A: 55})
        assert await run.stored(A) == (60, 2)
    assert owner.served == [{A}]
    assert owner.prepared == [{A, B}]
    assert owner.bound[-1] == {A: 2}
    assert run.ownership.claims == {A: Claim(60, 2), B: Claim(50, 1)}
    assert run.ownership.held == set()
    assert run.forgotten == [A]
    assert run.stats.out_of_range_resets == 1


async def test_under_changelog_kept_partitions_are_claimed_in_the_callback(
    tmp_path: Path,
) -> None:
    """A rebalance (the group's next generation) that keeps A with its producer: the
    assignment claims A in its callback, on its own, and holds B for the batch loop, which
    claims it after its new producer started. A batch loop claiming at the same moment as the
    callback claims each partition once."""
    owner = ClaimingOwner()
    async with running(tmp_path, changelog=owner) as run:
        for concurrent in (False, True):
            owner.owned = frozenset({A})
            owner.prepared.clear()
            run.consumer._coordinator.generation += 1
            if concurrent:
                await asyncio.gather(run.claimer.assign({A, B}), run.claimer.claim_held())
            else:
                await run.claimer.assign({A, B})
                assert owner.prepared == [{A}]
                assert set(run.ownership.claims) == {A}
                assert run.ownership.held == {B}
            await run.claimer.claim_held()
            assert owner.prepared == [{A}, {B}]
            assert set(run.ownership.claims) == {A, B}
            assert run.ownership.held == set()


async def test_under_changelog_a_member_back_from_outside_the_group_keeps_no_producer(
    tmp_path: Path,
) -> None:
    """An assignment that is not the next generation for this member (it was expelled and
    joined again, perhaps under a new member id): another member may have been given its
    partitions meanwhile, so every producer is released and started anew."""
    owner = ClaimingOwner()
    async with running(tmp_path, changelog=owner) as run:
        coordinator = run.consumer._coordinator
        for generation, member in ((coordinator.generation + 2, "me"), (None, "me")):
            owner.owned = frozenset({A})
            owner.prepared.clear()
            coordinator.generation, coordinator.member_id = generation, member
            await run.claimer.assign({A, B})
            assert owner.prepared == [], "nothing kept: nothing claimed in the callback"
            assert owner.owned == frozenset()
        owner.owned = frozenset({A})
        coordinator.generation, coordinator.member_id = 7, "another"
        await run.claimer.assign({A, B})
        assert owner.owned == frozenset()


class FencedSide:
    """The changelog side of a host whose producers a newer owner's fenced since the first
    claim: every publish of rows fails as fenced (each reset forgets a row, so each has
    something to publish); the first claim's start alone, before that, went through."""

    def discard_changes(self, conn: sqlite3.Connection) -> None:
        pass

    def take_changes(self, conn: sqlite3.Connection) -> list[tuple[bytes, bytes | None]]:
        return [(b'["t","k"]', None)]

    def publish(
        self, changes: Mapping[TopicPartition, Change]
    ) -> dict[TopicPartition, int | ChangelogError]:
        return {
            tp: ChangelogFenced("a newer owner's producer fenced this one") if change.rows else 1
            for tp, change in changes.items()
        }

    def record_offset(self, conn: sqlite3.Connection, tp: TopicPartition, next_offset: int) -> None:
        pass


async def test_out_of_range_under_changelog_of_a_partition_another_host_owns_is_left(
    tmp_path: Path,
) -> None:
    """Under --changelog another host's claim never reaches this file: Kafka tells this host it
    is a zombie for A, by fencing the claim's changelog transaction. The claim rolls back; A
    waits paused, as a fenced batch's partition does, for the rebalance (or a session timeout)
    before it is claimed again; nothing is forgotten."""
    owner = ClaimingOwner()
    async with running(tmp_path, changelog=owner, side=FencedSide()) as run:
        run.consumer.first = 60
        await run.loop._out_of_range({A: 55})
        assert await run.stored(A) == (50, 1)
    assert owner.served == [{A}]
    assert owner.prepared == [{A, B}]
    assert run.ownership.claims == {B: Claim(50, 1)}
    assert run.ownership.held == {A}
    assert A in run.consumer.paused
    assert run.stats.out_of_range_resets == 0
