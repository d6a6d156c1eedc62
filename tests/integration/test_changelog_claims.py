"""A batch belongs to the claim it was made under, and the changelog path's errors hold the
partition rather than crash: the changelog owner and the store against the real broker and a
real SQLite file.

- a batch whose compare-and-set passed under one claim, published after the partition was
  prepared for a new claim, is fenced: nothing reaches the changelog and the file rolls back;
- a publish that outlives the database thread's wait is a failure of the batch, not an
  exception out of the transaction;
- a producer removed (released) while a batch is on its way to it: no KeyError;
- a changelog partition added while running, which the producer's metadata does not know yet
  (aiokafka's "Unrecognized partition" assertion);
- a claim whose producer could not start, released: its changelog is followed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from sqlstate.changelog import owner as owner_module
from sqlstate.changelog import standby as standby_module
from sqlstate.changelog.capture import install_capture
from sqlstate.changelog.owner import ChangelogOwner
from sqlstate.changelog.producers import ChangelogProducer
from sqlstate.changelog.side import CapturedChangelog
from sqlstate.changelog.standby import Standby
from sqlstate.changelog.tables import state_tables
from sqlstate.changelog.topics import changelog_topic, ensure_changelogs
from sqlstate.errors import ChangelogError, ChangelogFenced, ChangelogLostError
from sqlstate.kafka.client import topic_ids as kafka_topic_ids
from sqlstate.observe.stats import Stats
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.registry import Processors
from sqlstate.settings import Settings
from sqlstate.state.model import (
    Change,
    ChangelogPublishFailed,
    Claim,
    Claimed,
    Committed,
    PartitionBatch,
)
from sqlstate.state.out_of_range import LogBounds
from sqlstate.state.store import Store
from tests.support.db import query
from tests.support.kafka import (
    TopicFactory,
    add_partitions,
    delete_topics,
    log_end_offsets,
    recreate_topic,
)
from tests.support.processing import open_store, record

WAIT_S = 30.0


@dataclass
class Owned:
    """A file with capture on, its store publishing through a started changelog owner."""

    settings: Settings
    store: Store
    owner: ChangelogOwner
    processors: Processors
    tp: TopicPartition
    path: Path

    async def claim(self) -> Claim:
        """Prepare and claim the partition, as the batch loop does (``Claimer.claim_held``)."""
        assert await self.owner.prepare([self.tp])
        claimed = await self.store.claim(
            {self.tp: LogBounds(0, 1_000_000)},
            "me",
            "reset",
            self.processors.forget,
            topic_ids={},
            isolation_level="read_committed",
        )
        claim = claimed.claims[self.tp]
        self.owner.bind({self.tp: claim.epoch})
        return claim

    async def claim_anew(self, old: ChangelogProducer, key: str) -> None:
        """Claim the partition with a producer other than ``old``, and commit a batch of
        ``key`` through it."""
        claim = await self.claim()
        assert self.owner._producers[self.tp].producer is not old
        (outcome,) = await self.store.commit_batch([self.batch(claim, [key])])
        assert isinstance(outcome, Committed)

    async def reclaim(self, first: int) -> Claimed:
        """Claim the partition again with its log starting at ``first``: out of range, reset."""
        return await self.store.claim(
            {self.tp: LogBounds(first, 1_000_000)},
            "me",
            "reset",
            self.processors.forget,
            topic_ids={},
            isolation_level="read_committed",
        )

    def batch(self, claim: Claim, keys: list[str]) -> PartitionBatch:
        records = [
            record(self.tp, claim.next_offset + i, key.encode()) for i, key in enumerate(keys)
        ]
        return PartitionBatch(
            tp=self.tp,
            claim=claim,
            next_offset=claim.next_offset + len(keys),
            log_end_offset=None,
            records=len(keys),
            statements=self.processors.statements(self.tp, records),
        )

    async def changelog_end(self) -> int:
        source = changelog_topic(self.settings.group_id, self.tp.topic)
        ends = await log_end_offsets(self.settings.bootstrap_servers, source)
        return ends[self.tp.partition]

    def counted(self) -> int:
        ((total,),) = query(self.path, "SELECT coalesce(sum(count), 0) FROM counts")
        return int(total)


@pytest.fixture
async def owned(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> AsyncIterator[Owned]:
    topic = await topic_factory(1)
    settings = Settings(topics=(topic,), group_id=group_id, bootstrap_servers=kafka_bootstrap)
    await ensure_changelogs(settings, {topic: 1})
    members = [KeyCounter()]
    processors = Processors.checked(members)
    path = tmp_path / "state.db"
    plain = await open_store(path, processors)
    tables = state_tables(members)
    await plain.database.setting(functools.partial(install_capture, tables=tables))
    owner = ChangelogOwner(settings, plain.database, tables, Stats(), None)
    store = Store(plain.database, CapturedChangelog(owner.publish_from_thread))
    await owner.start()
    try:
        yield Owned(settings, store, owner, processors, TopicPartition(topic, 0), path)
    finally:
        await owner.stop()
        await store.database.close()
        processors.close()
        with contextlib.suppress(Exception):
            await delete_topics(kafka_bootstrap, [changelog_topic(group_id, topic)])


async def test_a_batch_of_an_older_claim_is_fenced(owned: Owned) -> None:
    """The batch passed its compare-and-set under claim 1; meanwhile the partition was prepared
    for a new claim (a new producer: another host may have written since). The batch must not
    publish through that producer, on top of writes its file never saw."""
    claim = await owned.claim()
    (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["a", "b"])])
    assert isinstance(outcome, Committed)
    end = await owned.changelog_end()

    stale = owned.batch(outcome.claim, ["c"])
    assert await owned.owner.prepare([owned.tp])  # the next claim's producer, not bound yet
    with pytest.raises(ChangelogPublishFailed) as failed:
        await owned.store.commit_batch([stale])
    assert isinstance(failed.value.failures[owned.tp], ChangelogFenced)
    assert await owned.changelog_end() == end
    assert owned.counted() == 2  # rolled back

    # The new claim's batches publish through the new producer.
    claim = await owned.claim()
    (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["c"])])
    assert isinstance(outcome, Committed)
    assert owned.counted() == 3
    assert await owned.changelog_end() > end


async def test_a_claim_again_publishes_through_the_producer_it_has_or_is_fenced(
    owned: Owned,
) -> None:
    """A partition claimed again while running (out of range) publishes its claim's tombstones
    through the producer this host has (``serve_next_claim``); once a newer owner's producer
    fenced it (this host is a zombie, which only Kafka can tell), that claim rolls back."""
    claim = await owned.claim()
    (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["a", "b"])])
    assert isinstance(outcome, Committed)
    end = await owned.changelog_end()

    owned.owner.serve_next_claim([owned.tp])
    claimed = await owned.reclaim(first=100)
    assert [reset.tp for reset in claimed.resets] == [owned.tp]
    assert owned.counted() == 0
    assert await owned.changelog_end() > end  # the tombstones and the position
    owned.owner.bind({owned.tp: claimed.claims[owned.tp].epoch})
    (outcome,) = await owned.store.commit_batch([owned.batch(claimed.claims[owned.tp], ["c", "d"])])
    assert isinstance(outcome, Committed)
    assert owned.counted() == 2

    newer = ChangelogProducer(owned.settings, owned.tp.topic, owned.tp.partition)
    await newer.start()  # the new owner, on another host
    try:
        end = await owned.changelog_end()
        owned.owner.serve_next_claim([owned.tp])
        with pytest.raises(ChangelogPublishFailed) as failed:
            await owned.reclaim(first=200)
        assert isinstance(failed.value.failures[owned.tp], ChangelogFenced)
    finally:
        await newer.stop()
    assert owned.counted() == 2  # rolled back
    assert await owned.changelog_end() == end


async def test_a_partition_kept_through_a_rebalance_keeps_its_producer(owned: Owned) -> None:
    """The next claim of a partition this member kept (the group's next generation) keeps its
    producer: no InitProducerId, and its batches publish as before."""
    claim = await owned.claim()
    (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["a", "b"])])
    assert isinstance(outcome, Committed)
    producer = owned.owner._producers[owned.tp].producer

    claim = await owned.claim()
    assert owned.owner._producers[owned.tp].producer is producer
    (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["c"])])
    assert isinstance(outcome, Committed)
    assert owned.counted() == 3


@contextlib.asynccontextmanager
async def stable_end_held(owned: Owned) -> AsyncIterator[AIOKafkaProducer]:
    """A transaction left open on the partition's changelog: its last stable offset stays at
    the open transaction's first record, whatever commits after it, as it does for a moment
    after every commit (Kafka writes the commit markers after the commit returned)."""
    source = changelog_topic(owned.settings.group_id, owned.tp.topic)
    held = AIOKafkaProducer(
        bootstrap_servers=owned.settings.bootstrap_servers, transactional_id=f"{source}-held"
    )
    await held.start()
    try:
        await held.begin_transaction()
        await held.send_and_wait(source, b"v", key=b"held", partition=owned.tp.partition)
        yield held
    finally:
        await held.stop()


async def test_a_claim_that_keeps_its_producer_waits_until_its_last_transaction_shows(
    owned: Owned, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after a batch the changelog's last stable offset may still stand below the batch's
    transaction: the file's changelog offset then looks past the changelog's end ("changelog
    lost"). A new producer's start waits for the markers; a kept one starts nothing, so its
    claim waits for them itself, then finds nothing to restore."""
    claim = await owned.claim()
    producer = owned.owner._producers[owned.tp].producer
    ends_given: list[int | None] = []
    restore = owned.owner.restore

    async def restore_seen(tp: TopicPartition, *args: Any, end: int | None = None) -> int:
        ends_given.append(end)
        return await restore(tp, *args, end=end)

    monkeypatch.setattr(owned.owner, "restore", restore_seen)
    async with stable_end_held(owned) as held:
        (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["a", "b"])])
        assert isinstance(outcome, Committed)
        committed_end = producer.committed_end
        claiming = asyncio.ensure_future(owned.claim())
        await asyncio.sleep(0.5)
        assert not claiming.done()  # waiting for the changelog's end, not calling it lost
        await held.abort_transaction()
        claim = await asyncio.wait_for(claiming, WAIT_S)
    assert owned.owner._producers[owned.tp].producer is producer  # kept
    # The claim's own wait, not the restore's: the end it hands the restore shows the batch.
    assert committed_end is not None
    (end_given,) = ends_given
    assert end_given is not None
    assert end_given >= committed_end
    (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["c"])])
    assert isinstance(outcome, Committed)
    assert owned.counted() == 3


async def test_a_kept_claim_whose_last_transaction_never_shows_fails_then_a_new_one_claims(
    owned: Owned, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the changelog's end not reach the kept producer's last transaction in time, the
    claim fails as a changelog error (held, tried again) and leaves the file as it was; the
    next claim starts a new producer rather than keep waiting for that one."""
    reader = owned.owner._reader
    monkeypatch.setattr(
        reader, "end_offset_reaching", functools.partial(reader.end_offset_reaching, timeout_s=0.3)
    )
    claim = await owned.claim()
    producer = owned.owner._producers[owned.tp].producer
    async with stable_end_held(owned) as held:
        (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["a"])])
        assert isinstance(outcome, Committed)
        with pytest.raises(ChangelogError, match="did not reach the last transaction"):
            await owned.owner.prepare([owned.tp])
        assert owned.counted() == 1
        assert owned.tp not in owned.owner.keepable([owned.tp])
        await held.abort_transaction()
    await owned.claim_anew(producer, "b")
    assert owned.counted() == 2


async def test_a_stable_offset_held_back_below_the_file_is_retried_not_called_lost(
    owned: Owned, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction left open on the changelog holds its last stable offset below the file's
    offset for good, while the log itself reaches past it: the claim with a new producer fails
    as a changelog error (tried again) rather than call the changelog lost (exit code 5)."""
    reader = owned.owner._reader
    monkeypatch.setattr(
        reader, "end_offset_reaching", functools.partial(reader.end_offset_reaching, timeout_s=0.3)
    )
    claim = await owned.claim()
    async with stable_end_held(owned):
        (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["a"])])
        assert isinstance(outcome, Committed)
        with pytest.raises(ChangelogError, match="did not reach the last transaction"):
            await owned.owner.prepare([owned.tp])  # kept: it waits, then gives its producer up
        with pytest.raises(ChangelogError, match="holds the stable offset back") as raised:
            await owned.owner.prepare([owned.tp])  # a new producer: the restore's check
        assert not isinstance(raised.value, ChangelogLostError)
    assert owned.counted() == 1


async def test_a_claim_waiting_for_its_last_transaction_stops_when_told(owned: Owned) -> None:
    """A stop (SIGTERM) ends the claim's wait for the changelog's end at once: nothing claimed."""
    claim = await owned.claim()
    async with stable_end_held(owned):
        (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["a"])])
        assert isinstance(outcome, Committed)
        stop = asyncio.Event()
        claiming = asyncio.ensure_future(owned.owner.prepare([owned.tp], stop))
        await asyncio.sleep(0.3)
        assert not claiming.done()
        stop.set()
        assert await asyncio.wait_for(claiming, 5) is False
    assert owned.counted() == 1


async def test_a_restore_given_an_end_read_before_the_files_last_transaction_waits_for_it(
    owned: Owned,
) -> None:
    """A batch of the previous claim may commit through a kept producer after the claim read
    the changelog's end: the file's changelog offset is then past the end given, until the
    batch's commit markers show. The restore waits for them, rather than call it lost."""
    claim = await owned.claim()
    (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["a"])])
    assert isinstance(outcome, Committed)
    source = TopicPartition(changelog_topic(owned.settings.group_id, owned.tp.topic), 0)
    ids = await owned.owner._reader.topic_ids([owned.tp.topic, source.topic])
    async with stable_end_held(owned) as held:
        stale = await owned.owner._reader.end_offset(source)
        (outcome,) = await owned.store.commit_batch([owned.batch(outcome.claim, ["b"])])
        assert isinstance(outcome, Committed)
        restoring = asyncio.ensure_future(owned.owner.restore(owned.tp, ids, end=stale))
        await asyncio.sleep(0.5)
        assert not restoring.done()
        await held.abort_transaction()
        assert await asyncio.wait_for(restoring, WAIT_S) == 0
    assert owned.counted() == 2


async def test_a_changelog_created_again_under_a_kept_producer_is_lost_at_the_claim(
    owned: Owned,
) -> None:
    """A producer is kept only for the changelog it started for: once that topic was deleted
    and created again, the claim starts a new producer and the restore's identity check calls
    the changelog lost (exit code 5), at once and with nothing written."""
    claim = await owned.claim()
    (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["a", "b"])])
    assert isinstance(outcome, Committed)
    source = changelog_topic(owned.settings.group_id, owned.tp.topic)
    await recreate_topic(owned.settings.bootstrap_servers, source, partitions=1)
    with pytest.raises(ChangelogLostError, match="created again"):
        await asyncio.wait_for(owned.owner.prepare([owned.tp]), 10)
    assert owned.counted() == 2


async def test_a_kept_producer_fenced_meanwhile_commits_nothing_then_a_new_one_restores(
    owned: Owned,
) -> None:
    """Should another owner's producer have started meanwhile, unknown to this member, the
    kept producer is fenced: its first batch rolls back and publishes nothing, and the next
    claim starts a new producer."""
    claim = await owned.claim()
    (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["a"])])
    assert isinstance(outcome, Committed)
    producer = owned.owner._producers[owned.tp].producer

    other = ChangelogProducer(owned.settings, owned.tp.topic, owned.tp.partition)
    await other.start()  # another host's claim, which counted nothing
    try:
        await other.publish([], outcome.claim.next_offset)
    finally:
        await other.stop()
    end = await owned.changelog_end()

    claim = await owned.claim()  # kept: this member never heard of the other owner
    assert owned.owner._producers[owned.tp].producer is producer
    with pytest.raises(ChangelogPublishFailed) as failed:
        await owned.store.commit_batch([owned.batch(claim, ["c"])])
    fenced = failed.value.failures[owned.tp]
    assert isinstance(fenced, ChangelogFenced)
    assert fenced.kept  # claimed again at once: the other owner may be revoked since
    assert owned.counted() == 1
    assert await owned.changelog_end() == end

    await owned.owner.release([owned.tp])  # the batch loop holds it, then claims it again
    await owned.claim_anew(producer, "c")
    assert owned.counted() == 2


async def test_a_publish_longer_than_the_wait_fails_the_batch(
    owned: Owned, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = await owned.claim()
    monkeypatch.setattr(owner_module, "_PUBLISH_WAIT_S", 0.0001)
    with pytest.raises(ChangelogPublishFailed) as failed:
        await owned.store.commit_batch([owned.batch(claim, ["a"])])
    assert "did not complete" in str(failed.value.failures[owned.tp])
    assert owned.counted() == 0
    monkeypatch.undo()
    # Held, then claimed again, as the batch loop does: the partition goes on.
    claim = await owned.claim()
    (outcome,) = await owned.store.commit_batch([owned.batch(claim, ["a"])])
    assert isinstance(outcome, Committed)
    assert owned.counted() == 1


async def test_a_producer_released_while_a_batch_goes_to_it(owned: Owned) -> None:
    claim = await owned.claim()
    work = {owned.tp: Change([], claim.next_offset + 1, claim.epoch)}
    loop = asyncio.get_running_loop()
    publishing = loop.run_in_executor(None, owned.owner.publish_from_thread, work)
    # The event loop blocked while the database thread hands the publish over: it runs only
    # after the release below has taken the producer away.
    time.sleep(0.5)  # noqa: ASYNC251
    releasing = asyncio.ensure_future(owned.owner.release([owned.tp]))
    async with asyncio.timeout(WAIT_S):
        outcomes = await publishing
        await releasing
    assert isinstance(outcomes[owned.tp], int | ChangelogError), outcomes


async def test_a_changelog_partition_added_while_running(owned: Owned) -> None:
    """The input grew: its changelog too, after the producer of the new partition started. The
    producer's metadata lacks the partition until it asks again."""
    settings, tp = owned.settings, owned.tp
    source = changelog_topic(settings.group_id, tp.topic)
    # Input partition 1's producer, started while its changelog partition does not exist yet.
    producer = ChangelogProducer(settings, tp.topic, 1)
    await producer.start()
    try:
        # Not there yet: the batch fails and its partition is held; the producer stays usable.
        with pytest.raises(ChangelogError, match="not in Kafka's metadata"):
            await producer.publish([], 7)
        await add_partitions(settings.bootstrap_servers, source, 2)
        async with asyncio.timeout(WAIT_S):
            while True:
                try:
                    end = await producer.publish([], 7)
                    break
                except ChangelogError:
                    await asyncio.sleep(0.5)  # not in Kafka's metadata yet: held, tried again
        assert end >= 1
    finally:
        await producer.stop()


async def test_a_failed_claim_is_followed_again_when_released(
    owned: Owned, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's producer does not start (here the broker refuses its InitProducerId: a
    transaction timeout above the broker's maximum, as it would refuse an unauthorized one).
    The partition was paused in the standby for the claim; released (a rebalance gave it to
    another member), it must be followed again, not left paused with no producer."""
    standby = Standby(owned.settings, owned.store.database, [], Stats())
    owner = ChangelogOwner(owned.settings, owned.store.database, [], Stats(), standby)
    await standby.start()
    await owner.start()
    refused = functools.partial(ChangelogProducer, transaction_timeout_ms=10**9)
    monkeypatch.setattr(owner_module, "ChangelogProducer", refused)
    try:
        with pytest.raises(ChangelogError):
            await owner.prepare([owned.tp])
        assert owned.tp in standby.paused
        assert owned.tp in owner.failures  # reported until claimed or released
        await owner.release([owned.tp])
        assert standby.paused == frozenset()
        assert owner.failures == {}
    finally:
        await owner.stop()
        await standby.stop()


async def test_a_release_cut_short_still_follows_again(owned: Owned) -> None:
    """A rebalance callback's time budget cancels the release half-way: the partition is
    followed again all the same."""
    standby = Standby(owned.settings, owned.store.database, [], Stats())
    owner = ChangelogOwner(owned.settings, owned.store.database, [], Stats(), standby)
    await standby.start()
    await owner.start()
    try:
        assert await owner.prepare([owned.tp])
        assert owned.tp in standby.paused
        releasing = asyncio.ensure_future(owner.release([owned.tp]))
        await asyncio.sleep(0)  # under way, at its first wait
        releasing.cancel()
        async with asyncio.timeout(WAIT_S):
            with contextlib.suppress(asyncio.CancelledError):
                await releasing
            while True:  # the follow-up runs on, shielded from the cancellation
                if owned.tp not in standby.paused:
                    break
                await asyncio.sleep(0.05)
        assert owned.tp not in owner.claiming
    finally:
        await owner.stop()
        await standby.stop()


async def test_a_claim_revoked_while_it_asks_kafka_is_let_go(
    owned: Owned, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebalance revokes the partition while its claim still waits for Kafka (here the topic
    IDs, held back until the release is done). The release must find it being claimed: it is
    followed again at once, and the producer the claim then starts is stopped, not kept for a
    partition nobody here claims."""
    standby = Standby(owned.settings, owned.store.database, [], Stats())
    owner = ChangelogOwner(owned.settings, owned.store.database, [], Stats(), standby)
    await standby.start()
    await owner.start()
    released = asyncio.Event()
    ask_kafka = owner._reader.topic_ids

    async def after_the_release(topics: set[str]) -> dict[str, str | None]:
        await released.wait()
        return await ask_kafka(topics)

    monkeypatch.setattr(owner._reader, "topic_ids", after_the_release)
    try:
        claiming = asyncio.ensure_future(owner.prepare([owned.tp]))
        await asyncio.sleep(0.1)  # the claim waits for Kafka
        assert owned.tp in owner.claiming
        await owner.release([owned.tp])
        assert owned.tp not in standby.paused  # followed again at once
        released.set()
        async with asyncio.timeout(WAIT_S):
            await claiming
        assert owned.tp not in owner.owned  # its producer was stopped, not kept
        assert owned.tp not in standby.paused
        assert owned.tp not in owner.claiming
    finally:
        await owner.stop()
        await standby.stop()


async def test_a_standby_that_cannot_ask_kafka_for_topic_ids_waits(
    owned: Owned, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The standby asks Kafka for the changelogs' topic IDs before it follows new partitions
    (at start, and when a topic grows). Kafka not answering then (a broker away, this host cut
    off: here the first two requests fail as aiokafka fails them) is waited out; it never
    stops the standby, and with it the daemon."""
    standby = Standby(owned.settings, owned.store.database, [], Stats())
    consumer = AIOKafkaConsumer(bootstrap_servers=owned.settings.bootstrap_servers)
    await consumer.start()
    failures = [KafkaConnectionError("no broker answers"), KafkaConnectionError("still none")]
    ask_kafka = kafka_topic_ids

    async def unanswered_at_first(*args: Any, **kwargs: Any) -> dict[str, str | None]:
        if failures:
            raise failures.pop(0)
        return await ask_kafka(*args, **kwargs)

    monkeypatch.setattr(standby_module, "topic_ids", unanswered_at_first)
    await standby.start()
    stop = asyncio.Event()
    try:
        # The input topic's partitions in the consumer's metadata, as the daemon's consumer has
        # them.
        consumer.assign([owned.tp])
        async with asyncio.timeout(WAIT_S):
            while True:
                if consumer.partitions_for_topic(owned.tp.topic):
                    break
                await asyncio.sleep(0.1)
        following = asyncio.create_task(standby.run(consumer, stop))
        async with asyncio.timeout(WAIT_S):
            while not standby.followed:
                assert not following.done(), following.exception()
                await asyncio.sleep(0.1)
        assert failures == []
        stop.set()
        async with asyncio.timeout(WAIT_S):
            await following
    finally:
        stop.set()
        await standby.stop()
        await consumer.stop()
