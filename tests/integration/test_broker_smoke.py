"""The test broker and the harness around it do what the other tests rely on."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.support.broker import AsyncBrokerControl
from tests.support.kafka import (
    Message,
    Received,
    Sent,
    TopicFactory,
    beginning_offsets,
    consume_in_group,
    counts_of,
    delete_records,
    expected_counts,
    log_end_offsets,
    produce,
    produce_transaction,
)


def keyed(count: int, partitions: int = 3, start: int = 0) -> list[Message]:
    """``count`` messages spread evenly over the partitions, with repeating keys, a null
    key and an empty key among them."""
    keys: list[bytes | None] = [b"alpha", b"beta", b"gamma", None, b""]
    return [
        Message(keys[i % len(keys)], f"value-{i}".encode(), i % partitions)
        for i in range(start, start + count)
    ]


def per_partition(records: list[Sent] | list[Received]) -> Counter[int]:
    return Counter(record.partition for record in records)


async def test_a_group_consumes_every_message_exactly_once(
    kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    sent = await produce(kafka_bootstrap, topic, keyed(300))
    assert per_partition(sent) == {0: 100, 1: 100, 2: 100}

    received = await consume_in_group(kafka_bootstrap, topic, group_id, count=300)

    assert per_partition(received) == {0: 100, 1: 100, 2: 100}
    assert sorted(received) == sorted(
        Received(s.partition, s.offset, s.key, f"value-{i}".encode()) for i, s in enumerate(sent)
    )
    assert await expected_counts(kafka_bootstrap, topic) == counts_of(sent)
    assert await log_end_offsets(kafka_bootstrap, topic) == {0: 100, 1: 100, 2: 100}


async def test_keys_choose_partitions_when_none_is_given(kafka_bootstrap: str, topic: str) -> None:
    sent = await produce(
        kafka_bootstrap, topic, [(f"k{i % 10}".encode(), b"v") for i in range(200)]
    )
    # The default partitioner hashes a key to one partition, always the same.
    partition_of_key = {s.key: s.partition for s in sent}
    assert all(partition_of_key[s.key] == s.partition for s in sent)
    assert await expected_counts(kafka_bootstrap, topic) == counts_of(sent)


async def test_the_oracle_skips_aborted_transactions(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory(partitions=2)
    committed = await produce_transaction(kafka_bootstrap, topic, keyed(40, partitions=2))
    # Aborted last, so that each partition ends with aborted records and a marker.
    aborted = await produce_transaction(
        kafka_bootstrap, topic, keyed(20, partitions=2), commit=False
    )
    assert len(aborted) == 20

    assert await expected_counts(kafka_bootstrap, topic) == counts_of(committed)
    # 20 committed + 1 commit marker + 10 aborted + 1 abort marker per partition.
    assert await log_end_offsets(kafka_bootstrap, topic) == {0: 32, 1: 32}


async def test_deleted_records_leave_the_oracle_and_move_the_log_start(
    kafka_bootstrap: str, topic: str
) -> None:
    sent = await produce(kafka_bootstrap, topic, keyed(30))

    assert await delete_records(kafka_bootstrap, topic, {0: 4, 2: 10}) == {0: 4, 2: 10}

    assert await beginning_offsets(kafka_bootstrap, topic) == {0: 4, 1: 0, 2: 10}
    kept = [s for s in sent if not (s.partition == 0 and s.offset < 4) and s.partition != 2]
    assert await expected_counts(kafka_bootstrap, topic) == counts_of(kept)


@pytest.mark.parametrize("fault", ["stop", "kill"])
async def test_the_broker_comes_back_with_its_data(
    fault: str,
    broker_control: AsyncBrokerControl,
    kafka_bootstrap: str,
    topic: str,
    group_id: str,
) -> None:
    before = await produce(kafka_bootstrap, topic, keyed(60))
    assert len(await consume_in_group(kafka_bootstrap, topic, group_id, count=60)) == 60

    if fault == "stop":
        await broker_control.stop()
    else:
        await broker_control.kill()
    assert not await broker_control.is_running()
    assert not await broker_control.is_ready()

    await broker_control.start()
    assert await broker_control.is_ready()

    # Records, and the group's committed offsets, survived: the group reads only the
    # new records.
    after = await produce(kafka_bootstrap, topic, keyed(30, start=60))
    received = await consume_in_group(kafka_bootstrap, topic, group_id, count=30)
    assert sorted((r.partition, r.offset) for r in received) == sorted(
        (s.partition, s.offset) for s in after
    )
    assert await expected_counts(kafka_bootstrap, topic) == counts_of(before + after)
