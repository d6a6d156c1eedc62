"""The built-in processors on aiokafka's bare records: the same statements as from ConsumerRecords.

The daemon gives the built-ins the objects aiokafka's record parser makes, not a
``ConsumerRecord`` copied from each (``sqlstate.kafka.client``, ``Processors.read_bare_records``).
Here those objects come from aiokafka's own parser over a record batch built in memory, and
each built-in must prepare exactly the statements it prepares from the same records as
``ConsumerRecord``s. The real broker's side is tests/integration/test_bare_records.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer import fetcher

from sqlstate.kafka import client
from sqlstate.processors.base import ParsedRecord, Processor, Record, record_key
from sqlstate.processors.counts import KeyCounter
from sqlstate.processors.latest import Latest
from sqlstate.processors.registry import Processors
from sqlstate.processors.sql_file import SqlFileProcessor
from sqlstate.processors.windowed_counts import WindowedCounts
from sqlstate.settings import Settings
from tests.support.processing import record

TP = TopicPartition("events", 3)
MINUTE, DAY = 60_000, 86_400_000
BASE_TIME = 1_000_000_000_000
# Keys that repeat, a null key, a tombstone, bytes that are not UTF-8, and times that cross
# windows and go back: what the built-ins tell apart.
_CONTENTS: list[tuple[bytes | None, bytes | None, int]] = [
    (b"user-%d" % (i % 7), b'{"n": %d}' % i, BASE_TIME + (i * 7_919) % (5 * MINUTE))
    for i in range(200)
] + [(None, b"no key", BASE_TIME), (b"user-1", None, BASE_TIME + 1), (b"\xff\xfe", b"\x00", 0)]


def bare_records(first_offset: int) -> list[Any]:
    """``_CONTENTS`` as aiokafka's parser hands them out: one v2 record batch, parsed."""
    return list(client.in_memory(_CONTENTS, first_offset).next_batch())


def consumer_records(first_offset: int) -> list[Record]:
    return [
        record(TP, first_offset + delta, key, value, timestamp)
        for delta, (key, value, timestamp) in enumerate(_CONTENTS)
    ]


def built_ins() -> list[Processor]:
    return [KeyCounter(), Latest(), WindowedCounts(MINUTE, DAY)]


@pytest.mark.parametrize("processor", built_ins(), ids=lambda p: p.name)
def test_a_built_in_prepares_the_same_statements_from_bare_records(processor: Processor) -> None:
    bare = bare_records(first_offset=41)
    assert [r.offset for r in bare] == [41 + i for i in range(len(_CONTENTS))]
    assert not isinstance(bare[0], type(consumer_records(41)[0]))

    from_bare = processor.statements(TP, bare)
    from_copies = processor.statements(TP, consumer_records(first_offset=41))

    assert from_bare == from_copies
    assert any(statement.rows for statement in from_bare)


def test_a_bare_record_has_what_the_built_ins_are_typed_to_read_and_no_more_of_a_record() -> None:
    """The built-ins take ``ParsedRecord``s, so that mypy refuses one that would read more: the
    parser's records must have every field it names, and they lack a ``Record``'s topic and
    partition, which it leaves out."""
    (bare,) = client.in_memory([(b"k", b"v", 5)], first_offset=9).next_batch()
    named = sorted(name for name in vars(ParsedRecord) if not name.startswith("_"))
    assert named == ["key", "offset", "timestamp", "value"]
    assert {name: getattr(bare, name, "absent") for name in named} == {
        "key": b"k",
        "offset": 9,
        "timestamp": 5,
        "value": b"v",
    }
    assert record_key(bare) == b"k"
    assert not hasattr(bare, "topic")
    assert not hasattr(bare, "partition")


def test_only_the_built_ins_are_given_bare_records() -> None:
    totals = SqlFileProcessor.load(Path(__file__).parents[2] / "examples" / "customer_totals.sql")

    class Counting(KeyCounter):
        """A subclass may read more of a record than its built-in does."""

    def members(*processors: Processor) -> Processors:
        return Processors(processors)

    assert members(*built_ins()).read_bare_records
    assert not members(KeyCounter(), totals).read_bare_records
    assert not members(Counting()).read_bare_records


async def test_an_aiokafka_whose_fetcher_is_not_the_known_one_keeps_its_records(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class OtherRecords:
        def __init__(self, tp: TopicPartition, records: Any, fetch_offset: int) -> None:
            pass

    settings = Settings(topics=("t",), group_id="g", bootstrap_servers="127.0.0.1:1")
    built: list[AIOKafkaConsumer] = []

    def reads_bare(bare_records: bool) -> bool:
        built.append(client.build_consumer(settings, bare_records=bare_records))
        return client.reads_bare_records(built[-1])

    monkeypatch.setattr(fetcher, "PartitionRecords", OtherRecords)
    client._bare_records_installed.cache_clear()
    try:
        assert not reads_bare(bare_records=True)
        assert fetcher.PartitionRecords is OtherRecords
        assert "records_copied" in [getattr(r, "event", None) for r in caplog.records]
        monkeypatch.undo()
        client._bare_records_installed.cache_clear()
        assert reads_bare(bare_records=True)
        assert not reads_bare(bare_records=False)
    finally:
        monkeypatch.undo()
        client._bare_records_installed.cache_clear()
        for consumer in built:
            await consumer.stop()  # never started: closes what its constructor opened


async def test_an_aiokafka_that_no_longer_copies_through_the_known_method_keeps_its_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same class and parameters, but each record built some other way: not bare."""

    def copies_elsewhere(self: Any) -> Any:
        for batch in iter(self._records.next_batch, None):
            for parsed in batch:
                yield record(TP, parsed.offset, parsed.key, parsed.value, parsed.timestamp)

    settings = Settings(topics=("t",), group_id="g", bootstrap_servers="127.0.0.1:1")
    monkeypatch.setattr(client._BareRecords, "_unpack_records", copies_elsewhere)
    client._bare_records_installed.cache_clear()
    consumer = client.build_consumer(settings, bare_records=True)
    try:
        assert not client.reads_bare_records(consumer)
    finally:
        monkeypatch.undo()
        client._bare_records_installed.cache_clear()
        await consumer.stop()


def test_deserializers_and_bare_records_do_not_go_together() -> None:
    settings = Settings(topics=("t",), group_id="g", bootstrap_servers="127.0.0.1:1")
    with pytest.raises(ValueError, match="no deserializer"):
        client.build_consumer(settings, key_deserializer=lambda raw: raw, bare_records=True)
