"""How two copies of a state table differ: rows missing, extra and different, per partition.

``sqlstate verify`` reads each state table twice: from the file being checked and from the
state it recomputed from Kafka's records. A table whose rows carry ``topic`` and ``partition``
(every built-in's, and any processor's that keeps the partition in its rows, as the contract
asks) is compared partition by partition; any other as a whole. A row is identified by its
table's key (``TableShape.key``): the same key with other values is *different*; a key only the
recomputed state has is *missing* from the file; one only the file has is *extra*. A table with
no key is compared as a multiset of whole rows (missing and extra only).

Pure functions of rows: no database, no Kafka.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlstate.state.table_rows import Row, TableShape

#: A partition of a topic, or None for a table compared as a whole.
Group = tuple[str, int] | None
Kind = Literal["missing", "extra", "different"]
_PLACE_COLUMNS = ("topic", "partition")


@dataclass(frozen=True)
class Difference:
    """One row that differs. ``key``: the identifying columns (the whole row for a table
    without a key), without topic and partition; ``file`` and ``recomputed``: the other
    columns on each side (None on the side that has no such row)."""

    kind: Kind
    key: dict[str, Any]
    file: dict[str, Any] | None
    recomputed: dict[str, Any] | None


@dataclass
class TableDiff:
    """How one table differs within one group: how many rows of each kind, and a sample."""

    table: str
    missing: int = 0
    extra: int = 0
    different: int = 0
    samples: list[Difference] = field(default_factory=list)
    # False when the difference may come from records Kafka no longer has (``verify.py``).
    certain: bool = True

    @property
    def rows(self) -> int:
        return self.missing + self.extra + self.different


def grouped_by_partition(table: TableShape) -> bool:
    """Whether ``table``'s rows say which partition they come from."""
    return all(column in table.columns for column in _PLACE_COLUMNS)


def compare(
    table: TableShape,
    file_rows: Iterable[Row],
    recomputed_rows: Iterable[Row],
    partitions: Collection[tuple[str, int]],
    topics: Collection[str],
    samples: int,
) -> dict[Group, TableDiff]:
    """Each group of ``table`` that differs, with at most ``samples`` rows shown.

    Grouped by partition, only rows of ``topics`` are compared (the file may hold others), and a
    row of a partition outside ``partitions`` is kept under its own group: the file holds state
    of a partition it has no position for.
    """
    by_partition = grouped_by_partition(table)
    file_groups = _groups(table, file_rows, by_partition, topics)
    recomputed_groups = _groups(table, recomputed_rows, by_partition, topics)
    diffs: dict[Group, TableDiff] = {}
    for group in sorted(
        set(file_groups) | set(recomputed_groups) | (set(partitions) if by_partition else set()),
        key=_group_order,
    ):
        diff = _compare_group(
            table, file_groups.get(group, []), recomputed_groups.get(group, []), samples
        )
        if diff.rows:
            diffs[group] = diff
    return diffs


def _group_order(group: Group) -> tuple[str, int]:
    return ("", -1) if group is None else group


def _groups(
    table: TableShape, rows: Iterable[Row], by_partition: bool, topics: Collection[str]
) -> dict[Group, list[Row]]:
    if not by_partition:
        return {None: list(rows)}
    topic_at = table.columns.index("topic")
    partition_at = table.columns.index("partition")
    groups: defaultdict[Group, list[Row]] = defaultdict(list)
    for row in rows:
        if row[topic_at] in topics:
            groups[(row[topic_at], row[partition_at])].append(row)
    return dict(groups)


def _compare_group(
    table: TableShape, file_rows: Sequence[Row], recomputed_rows: Sequence[Row], samples: int
) -> TableDiff:
    diff = TableDiff(table.name)
    shown = [c for c in table.key or table.columns if c not in _PLACE_COLUMNS]
    key_at = [table.columns.index(c) for c in table.key]
    rest = [c for c in table.columns if c not in table.key] if table.key else []

    def described(kind: Kind, row: Row, other: Row | None, file_side: bool) -> None:
        if len(diff.samples) >= samples:
            return
        values = dict(zip(table.columns, row, strict=True))
        mine = {c: values[c] for c in rest} or None
        theirs = None if other is None else dict(zip(table.columns, other, strict=True))
        theirs = None if theirs is None else {c: theirs[c] for c in rest}
        file, recomputed = (mine, theirs) if file_side else (theirs, mine)
        diff.samples.append(Difference(kind, {c: values[c] for c in shown}, file, recomputed))

    if not key_at:
        file_counts = Counter(map(_typed, file_rows))
        recomputed_counts = Counter(map(_typed, recomputed_rows))
        for typed, n in sorted((recomputed_counts - file_counts).items(), key=repr):
            diff.missing += n
            described("missing", _untyped(typed), None, file_side=False)
        for typed, n in sorted((file_counts - recomputed_counts).items(), key=repr):
            diff.extra += n
            described("extra", _untyped(typed), None, file_side=True)
        return diff
    file_keyed = _keyed(file_rows, key_at)
    recomputed_keyed = _keyed(recomputed_rows, key_at)
    for key in sorted(set(file_keyed) | set(recomputed_keyed), key=repr):
        in_file, expected = file_keyed.get(key), recomputed_keyed.get(key)
        if in_file is not None and expected is not None and _typed(in_file) == _typed(expected):
            continue
        if in_file is None:
            assert expected is not None
            diff.missing += 1
            described("missing", expected, None, file_side=False)
        elif expected is None:
            diff.extra += 1
            described("extra", in_file, None, file_side=True)
        else:
            diff.different += 1
            described("different", in_file, expected, file_side=True)
    return diff


def _keyed(rows: Iterable[Row], key_at: Sequence[int]) -> Mapping[Row, Row]:
    return {_typed(tuple(row[i] for i in key_at)): row for row in rows}


def _typed(row: Row) -> Row:
    """``row`` with each value's type beside it: SQLite's INTEGER 5 and REAL 5.0 (and TEXT and
    BLOB) are different values, which Python's == and hash would take for the same."""
    return tuple((type(value).__name__, value) for value in row)


def _untyped(typed: Row) -> Row:
    return tuple(value for _, value in typed)
