"""How ``sqlstate verify`` prints what it found: lines for people, a JSON document for programs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlstate.app.state_diff import Difference, TableDiff
from sqlstate.app.verdict import PartitionCheck, Verdict
from sqlstate.cli.output import key_json, key_text


def as_document(verdict: Verdict) -> dict[str, Any]:
    return {
        "database": str(verdict.database),
        "isolation_level": verdict.isolation_level,
        "processors": verdict.processors,
        "status": verdict.status,
        "exit_code": verdict.exit_code,
        "records": verdict.records,
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "status": p.status,
                "stored_offset": p.stored_offset,
                "first_offset": p.first_offset,
                "end_offset": p.end_offset,
                "recomputed_offset": p.reached,
                "records": p.records,
                "unchecked": p.unchecked,
                "problems": p.problems,
                "tables": [_table_document(t) for t in p.tables],
            }
            for p in verdict.partitions
        ],
        "tables": [_table_document(t) for t in verdict.tables],
    }


def _table_document(diff: TableDiff) -> dict[str, Any]:
    return {
        "table": diff.table,
        "missing": diff.missing,
        "extra": diff.extra,
        "different": diff.different,
        "certain": diff.certain,
        "samples": [
            {
                "kind": d.kind,
                "key": _values_json(d.key),
                "file": None if d.file is None else _values_json(d.file),
                "recomputed": None if d.recomputed is None else _values_json(d.recomputed),
            }
            for d in diff.samples
        ],
    }


def _values_json(values: Mapping[str, Any]) -> dict[str, Any]:
    return {column: key_json(value) for column, value in values.items()}


def as_text(verdict: Verdict) -> str:
    lines = [
        f"verified {verdict.database} ({verdict.isolation_level}; processors"
        f" {', '.join(verdict.processors)}): {len(verdict.partitions)} partition(s),"
        f" {verdict.records} record(s) recomputed"
    ]
    for check in verdict.partitions:
        lines += _partition_lines(check)
    if verdict.tables:
        lines.append(f"tables compared whole: {verdict.tables_status.upper()}")
        for diff in verdict.tables:
            lines += _table_lines(diff)
    code = verdict.exit_code
    accepted = (
        " (accepted: --allow-unchecked)" if verdict.status != "identical" and not code else ""
    )
    lines.append(f"result: {verdict.status}{accepted} (exit {code})")
    return "\n".join(lines)


def _partition_lines(check: PartitionCheck) -> list[str]:
    status = check.status if check.status == "identical" else check.status.upper()
    read = (
        f"read {check.read_from}-{check.reached - 1} ({check.records} records)"
        if check.reached is not None
        and check.read_from is not None
        and check.reached > check.read_from
        else "nothing read"
    )
    lines = [f"{check.topic}-{check.partition}  position {check.stored_offset}  {read}  {status}"]
    lines += [f"  {problem}" for problem in check.problems]
    if check.unchecked:
        lines.append(f"  not checked: {check.unchecked}")
    for diff in check.tables:
        lines += _table_lines(diff)
    return lines


def _table_lines(diff: TableDiff) -> list[str]:
    maybe = "" if diff.certain else " (may come from the deleted records)"
    lines = [
        f"  {diff.table}: {diff.missing} missing, {diff.extra} extra,"
        f" {diff.different} different{maybe}"
    ]
    lines += [f"    {_sample(d)}" for d in diff.samples]
    if len(diff.samples) < diff.rows:
        lines.append(f"    ... and {diff.rows - len(diff.samples)} more")
    return lines


def _sample(difference: Difference) -> str:
    key = _values_text(difference.key)
    if difference.kind == "missing":
        return f"missing  {key}  recomputed: {_values_text(difference.recomputed)}"
    if difference.kind == "extra":
        return f"extra    {key}  in the file: {_values_text(difference.file)}"
    return (
        f"different  {key}  file: {_values_text(difference.file)}"
        f"  recomputed: {_values_text(difference.recomputed)}"
    )


def _values_text(values: Mapping[str, Any] | None) -> str:
    if not values:
        return "-"
    return " ".join(f"{column}={_value_text(value)}" for column, value in values.items())


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, bytes) or value is None:
        return key_text(value)
    return str(value)
