"""Chunks of whole changelog transactions: what a fetch that stops inside one carries over; and
the records a fetch gives a restore."""

from __future__ import annotations

from sqlstate.changelog.reader import ChangelogChunk, _records, whole_transactions
from sqlstate.changelog.records import ChangelogRecord, position_record
from sqlstate.kafka import client

POSITION = position_record(7)


def row(offset: int) -> ChangelogRecord:
    return ChangelogRecord(b'["t",%d]' % offset, b"{}", offset)


def position(offset: int) -> ChangelogRecord:
    return ChangelogRecord(*POSITION, offset)


def test_a_fetch_that_ends_with_a_position_record_is_applied_whole() -> None:
    records = [row(0), row(1), position(2)]
    # The consumer stepped over the commit marker (offset 3) too: nothing is left to read there.
    assert whole_transactions(records, 4) == (ChangelogChunk(records, 4), [])


def test_records_after_the_last_position_record_wait_for_the_rest_of_their_transaction() -> None:
    records = [row(0), position(1), row(3), position(4), row(6), row(7)]
    chunk, carried = whole_transactions(records, 8)
    # Recorded as applied: the offset right after the position record (its commit marker), so a
    # restart reads the carried records again and applies them with the rest of their batch.
    assert chunk == ChangelogChunk(records[:4], 5)
    assert carried == [row(6), row(7)]


def test_a_transaction_not_read_to_its_end_yields_no_chunk() -> None:
    assert whole_transactions([row(0), row(1)], 2) == (None, [row(0), row(1)])


def test_a_fetch_of_only_a_commit_marker_moves_the_offset() -> None:
    assert whole_transactions([], 5) == (ChangelogChunk([], 5), [])


def test_a_fetch_s_records_are_taken_below_the_end_read_before_it() -> None:
    """A restore reads up to the last stable offset it read first: records a fetch brings from
    there on are not its own. Taken from the parser's own records, as the reader gets them."""
    parsed = list(client.in_memory([(b"k%d" % n, b"v", 0) for n in range(5)], 10).next_batch())
    assert _records(parsed) == [ChangelogRecord(b"k%d" % n, b"v", 10 + n) for n in range(5)]
    assert [record.offset for record in _records(parsed, below=13)] == [10, 11, 12]
    assert _records(parsed, below=15) == _records(parsed)
    assert _records(parsed, below=10) == []
    assert _records([], below=3) == []
    assert type(_records(parsed)[0]) is ChangelogRecord
