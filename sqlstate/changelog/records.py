"""The changelog's record format (see the package's docstring): the position record, and a
record decoded back into the row it carries.

Row records are encoded by SQLite itself (``table_sql.py``), never here: the canonical text
comes from one place, and the owner's hot path does not re-encode rows in Python. (One value
may not survive: the SQLite 3.40 that sqlstate is tested on writes an infinite REAL as ``Inf``,
which is not JSON, and such a record is refused here as unreadable; so are ``NaN`` and
``Infinity``, which Python's JSON reader would otherwise accept.)

A changelog topic is input like any other: whoever can write to it can write anything there.
``decode`` refuses what is not a record at all; ``row_problem`` says what is wrong with a row for
the table it names (its columns, its key, the partition it belongs to), so that the caller can
set such a record aside rather than write it.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlstate.errors import ProcessorError
from sqlstate.state.start import StartedAt

POSITION_KEY = b'["$position"]'
_BLOB = "$blob"
# A tagged BLOB as its bytes begin. Inside a JSON string every '"' is escaped as '\"', so these
# bytes appear in a record only where a tag is: a record without them needs no untagging.
_TAG = b'{"$blob"'
# A SQLite INTEGER is 64 bits: a larger one cannot be stored (a position of 2**64, for one).
_INTEGER_MAX = 2**63 - 1


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON value")


# str in: json.loads would first work out the encoding of the bytes, a third of its time here.
_decoder = json.JSONDecoder(parse_constant=_not_json)
_loads = _decoder.decode
# The scanner under ``decode``, without the two regular expressions ``decode`` runs around it for
# whitespace: half of a small document's reading. Same parser, same constants. An attribute of
# CPython's decoder that its documentation does not name: without it, ``decode`` reads it all.
_scan: Callable[[str, int], tuple[Any, int]] | None = getattr(_decoder, "scan_once", None)


def _json(data: bytes) -> Any:
    """``data`` read as one JSON document, as ``_loads`` reads it. Text with whitespace around
    the document, or that is not JSON, goes to ``_loads``, which reads the first and raises for
    the second."""
    text = data.decode()
    if _scan is None:
        return _loads(text)
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return _loads(text)
    return value if end == len(text) else _loads(text)


class ChangelogRecord(NamedTuple):
    """One changelog record as read back: a row's key, its full value (None for a deleted
    row), and its offset in the changelog."""

    key: bytes
    value: bytes | None
    offset: int


class RowChange(NamedTuple):
    """A state row's new value, or its deletion (``row`` None). A tuple: a restore makes one
    per row, and a frozen dataclass costs twice as much to make."""

    table: str
    key: tuple[Any, ...]
    row: dict[str, Any] | None


@dataclass(frozen=True)
class PositionChange:
    """The input partition's next offset after the owner's batch, and the ID of the input topic
    it was consumed from (None: a record written before positions carried it, or by an owner
    whose brokers give no topic IDs)."""

    next_offset: int
    topic_id: str | None = None
    # Where the partition's state begins (--start-from, or an out-of-range reset): None in a
    # record written before positions carried it.
    start: StartedAt | None = None
    # The hand-over whose seed this position ends (``seed.py``); None in any other record.
    seed: str | None = None


def position_record(
    next_offset: int,
    topic_id: str | None = None,
    start: StartedAt | None = None,
    seed: str | None = None,
) -> tuple[bytes, bytes]:
    """The record that carries the input partition's position after a batch, and the ID of the
    input topic (``topic_id``) that position counts in: an offset means nothing in another
    incarnation of the topic. With ``start``, where the partition's state begins; with
    ``seed``, the hand-over whose seed this is (``seed.py``)."""
    # Compact separators, as SQLite writes the row records.
    if start is not None or seed is not None:
        fields: dict[str, object] = {"next_offset": next_offset}
        if topic_id is not None:
            fields["topic_id"] = topic_id
        if start is not None:
            fields |= {"start_from": start.policy, "start_offset": start.offset}
            if start.topic_partitions is not None:
                fields["topic_partitions"] = start.topic_partitions
        if seed is not None:
            fields["seed"] = seed
        return POSITION_KEY, json.dumps(fields, separators=(",", ":")).encode()
    if topic_id is None:
        return POSITION_KEY, b'{"next_offset":%d}' % next_offset
    return POSITION_KEY, b'{"next_offset":%d,"topic_id":%s}' % (
        next_offset,
        json.dumps(topic_id).encode(),
    )


def decode(key: bytes, value: bytes | None) -> RowChange | PositionChange:
    """The change a changelog record carries; ``ProcessorError`` for one this sqlstate cannot
    read (written by another program or version)."""
    try:
        if key == POSITION_KEY:
            if value is None:
                raise ValueError("a position record without a value")
            position = _json(value)
            if not isinstance(position, dict):
                raise ValueError("the value is not a JSON object")
            next_offset = position["next_offset"]
            if type(next_offset) is not int or not 0 <= next_offset <= _INTEGER_MAX:
                raise ValueError("next_offset is not an offset")
            # Absent in records written before positions carried it: read as before.
            topic_id = position.get("topic_id")
            if topic_id is not None and type(topic_id) is not str:
                raise ValueError("topic_id is not a string")
            seed = position.get("seed")  # only a seed's
            if seed is not None and type(seed) is not str:
                raise ValueError("seed is not a string")
            return PositionChange(next_offset, topic_id, _start(position), seed)
        parts = _json(key)
        if not (isinstance(parts, list) and len(parts) >= 2 and isinstance(parts[0], str)):
            raise ValueError('the key is not ["table", key values...]')
        row = None
        if value is not None:
            row = _json(value)
            if not isinstance(row, dict):
                raise ValueError("the value is not a JSON object")
            if _TAG in value:
                row = {column: _untagged(cell) for column, cell in row.items()}
        # Without a tag, an object or array left in a row (a record sqlstate did not write) is
        # refused by SQLite when bound: checking every cell here would cost a sixth of a restore.
        key_values = tuple(map(_untagged, parts[1:])) if _TAG in key else tuple(parts[1:])
        return RowChange(parts[0], key_values, row)
    except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
        raise ProcessorError(
            f"a changelog record this sqlstate cannot read ({error}): key {key[:200]!r}"
        ) from error


def _start(position: dict[str, Any]) -> StartedAt | None:
    """The start a position record carries, both fields or neither."""
    policy, offset = position.get("start_from"), position.get("start_offset")
    if policy is None and offset is None:
        return None  # written before positions carried it
    if type(policy) is not str or type(offset) is not int or not 0 <= offset <= _INTEGER_MAX:
        raise ValueError("start_from and start_offset are not a start")
    partitions = position.get("topic_partitions")  # absent in records written before
    if partitions is not None and (
        type(partitions) is not int or not 0 < partitions <= _INTEGER_MAX
    ):
        raise ValueError("topic_partitions is not a partition count")
    return StartedAt(policy, offset, partitions)


def highest_position(records: Iterable[tuple[bytes, bytes | None, int]]) -> int | None:
    """The highest position that the readable position records among ``records`` carry."""
    highest: int | None = None
    for key, value, _ in records:
        if key == POSITION_KEY:
            try:
                change = decode(key, value)
            except ProcessorError:
                continue  # set aside when applied
            assert isinstance(change, PositionChange)
            highest = max(highest or 0, change.next_offset)
    return highest


class RowCheck:
    """Checks row changes against one table (keyed by ``key_columns``, with ``columns``) in the
    changelog of input partition (``topic``, ``partition``). Built once per table and apply:
    ``problem`` runs for every row of a restore. The values' types are left to SQLite, which
    refuses what it cannot store."""

    def __init__(
        self,
        table: str,
        key_columns: Sequence[str],
        columns: Iterable[str],
        topic: str,
        partition: int,
    ) -> None:
        self._table = table
        self._key_columns = tuple(key_columns)
        self._columns = frozenset(columns)
        # A row's key columns as a tuple, in C (itemgetter of one column gives a bare value).
        getter = operator.itemgetter(*self._key_columns)
        self._key_of: Callable[[dict[str, Any]], tuple[Any, ...]] = (
            getter if len(self._key_columns) > 1 else lambda row: (getter(row),)
        )
        # Every partition's rows come from its own changelog only: a row of another partition
        # (or topic) there would change state this changelog's owner does not own. A table
        # keyed by its input partition names it so, as the built-in tables and the dead letters
        # do; a column of that name outside the key may mean something else.
        self._placed = [
            (self._key_columns.index(column), column, expected)
            for column, expected in (("topic", topic), ("partition", partition))
            if column in self._key_columns
        ]

    def problem(self, change: RowChange) -> str | None:
        """What is wrong with ``change`` for this table; None if nothing."""
        key, row = change.key, change.row
        if len(key) != len(self._key_columns):
            return (
                f"its key has {len(key)} values; table {self._table} is keyed by"
                f" {len(self._key_columns)} columns"
            )
        if row is not None:
            if row.keys() != self._columns:
                unknown = ", ".join(sorted(map(repr, row.keys() - self._columns))) or "none"
                missing = ", ".join(sorted(self._columns - row.keys())) or "none"
                return (
                    f"its row does not have the columns of table {self._table}"
                    f" (unknown: {unknown}; missing: {missing})"
                )
            # Compared as SQLite compares the key when it deletes the row: 1 and 1.0 are equal.
            if self._key_of(row) != key:
                return f"its key {key!r} is not the key of its row"
        for at, column, expected in self._placed:
            if key[at] != expected:
                return f"its row belongs to {column} {key[at]!r}, not {expected}"
        return None


def _untagged(cell: Any) -> Any:
    """A JSON value as SQLite stores it: ``{"$blob": hex}`` back to bytes."""
    if isinstance(cell, dict):
        if len(cell) != 1 or not isinstance(cell.get(_BLOB), str):
            raise ValueError(f"a JSON object that is not a tagged BLOB: {cell!r}")
        return bytes.fromhex(cell[_BLOB])
    if isinstance(cell, list):
        raise ValueError("a JSON array as a column's value")
    return cell
