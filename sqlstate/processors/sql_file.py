"""Processors written in SQL alone: ``sqlstate run --sql FILE``.

The file has three sections, each started by a line of its own:

    -- sqlstate: schema
    CREATE TABLE ... ;            -- the processor's tables, indexes, views, triggers
    -- sqlstate: record
    INSERT ... ;                  -- one statement, run for each record, in offset order
    -- sqlstate: forget
    DELETE ... ;                  -- what deletes one partition's share of the state

The record statement takes named parameters ``:topic :partition :offset :timestamp :key :value
:headers``; forget statements ``:topic :partition``. Keys and values come as ``--key-format``
and ``--value-format`` make them (with ``bytes``, TEXT when valid UTF-8, else a BLOB; NULL for
null); ``:timestamp`` is the record's Kafka timestamp in milliseconds since the epoch;
``:headers`` a JSON object ``{"name": "value"}`` (a value that is not UTF-8 as
``{"hex": ".."}``; a repeated name keeps its last value). The processor's name is the file's
name without ``.sql``: it namespaces the recorded schema, so keep it.

The record statement runs for a whole batch in one call, as the body of a temporary trigger
(``batched.py``), or, when it cannot be one, with ``executemany``: the same rows either way.

The schema section is applied once and recorded as ``<name>/0001_schema_<hash of its text>``:
a database whose recorded schema differs from the file's is refused at start, since sqlstate
does not know how to change the tables. Everything is checked before the daemon starts (with
the file, line and reason): the sections, SQL that SQLite does not compile, parameters other
than the above, more than one record statement (several statements would each run over the
whole batch, so their result would depend on batch boundaries; update more tables from a
trigger instead), and whatever the guard refuses (``guard.py``: writing sqlstate's tables, an
object in sqlstate's name space, a transaction statement, a function that is not deterministic,
...).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from sqlstate.errors import ProcessorError
from sqlstate.processors.base import NAME, Migration, Record, Records, Statement
from sqlstate.processors.batched import BatchForm
from sqlstate.processors.guard import Guard
from sqlstate.processors.keys import key_json, stored_key
from sqlstate.state import migrate

_SECTION = re.compile(r"^--\s*sqlstate:\s*(\S*)\s*$")
SECTIONS = ("schema", "record", "forget")


def _headers(record: Record) -> str:
    return json.dumps(
        {name: key_json(stored_key(value)) for name, value in record.headers},
        ensure_ascii=False,
    )


def _stored(parts: Iterable[Any]) -> list[Any]:
    # Text (decoded by --key-format/--value-format) and None pass as they are.
    return [part if part is None or type(part) is str else stored_key(part) for part in parts]


#: What each parameter of the record statement is bound to: one value per record, for a batch.
RECORD_PARAMETERS: dict[str, Callable[[Records], list[Any]]] = {
    "topic": lambda records: [record.topic for record in records],
    "partition": lambda records: [record.partition for record in records],
    "offset": lambda records: [record.offset for record in records],
    "timestamp": lambda records: [record.timestamp for record in records],
    "key": lambda records: _stored(record.key for record in records),
    "value": lambda records: _stored(record.value for record in records),
    "headers": lambda records: [_headers(record) for record in records],
}
# The same for every record of a partition's batch: bound once, copied into each row.
_CONSTANT = ("topic", "partition")
FORGET_PARAMETERS = ("topic", "partition")


@dataclass(frozen=True)
class _Located:
    """One statement of the file and the line it starts on."""

    line: int
    text: str


class _Recording(dict[str, Any]):
    """Parameters that note which names SQLite asks for, and refuse the ones not offered."""

    def __init__(self, offered: Sequence[str]) -> None:
        super().__init__()
        self.offered = offered
        self.asked: list[str] = []
        self.unknown: list[str] = []

    def __getitem__(self, name: str) -> Any:
        if name not in self.offered:
            self.unknown.append(name)
            raise KeyError(name)
        self.asked.append(name)
        return None


class SqlFileProcessor:
    """A processor whose schema and statements are one SQL file."""

    def __init__(
        self,
        name: str,
        schema: Migration,
        record: str,
        parameters: Sequence[str],
        forget: Sequence[str],
        batch: BatchForm | None = None,
        path: Path | None = None,
    ) -> None:
        self.name = name
        #: The file it was loaded from, for people.
        self.path = path
        self.migrations: Sequence[Migration] = (schema,)
        self._record = record
        self._constant = tuple(name for name in parameters if name in _CONSTANT)
        self._columns = tuple(
            (name, RECORD_PARAMETERS[name]) for name in parameters if name not in _CONSTANT
        )
        self._forget = tuple(forget)
        #: The record statement over a whole batch in one call (``batched.py``), if it has one.
        self.batch = batch

    @property
    def definition(self) -> str:
        """Every statement that makes its state, as one text: its schema, its record statement
        and its forget statements (``sqlstate rebuild`` compares it with the one recorded)."""
        return "\n;\n".join(
            [*(migration.script for migration in self.migrations), self._record, *self._forget]
        )

    @classmethod
    def load(cls, path: Path) -> SqlFileProcessor:
        """Read and check ``path``; ``ProcessorError`` names the file, the line and the reason."""
        name = path.stem
        if not NAME.match(name):
            raise ProcessorError(
                f"--sql {path}: the file's name is the processor's name, and {name!r} is not one:"
                " lowercase letters, digits, _ and -, starting with a letter"
            )
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ProcessorError(f"--sql {path}: cannot read it: {error}") from error
        sections = _sections(path, text)
        schema, record, forget = (sections[section] for section in SECTIONS)
        if len(record) != 1:
            raise ProcessorError(
                f"{_at(path, record[1].line)}: the record section holds {len(record)} statements;"
                " it must hold one, which runs once per record (update more tables from a trigger"
                " in the schema section)"
            )
        guard = Guard()
        try:
            guard.add_sqlstate_schema(migration.script for migration in migrate.available())
            for statement in schema:
                guard.apply(name, statement.text, _at(path, statement.line))
            parameters = _parameters(guard, name, path, record[0], tuple(RECORD_PARAMETERS))
            for statement in forget:
                _parameters(guard, name, path, statement, FORGET_PARAMETERS)
            batch = _batch_form(guard, name, path, record[0], parameters)
        finally:
            guard.close()
        script = "\n".join(statement.text for statement in schema)
        # The hash leaves out comment lines and indentation: editing those changes nothing.
        code = " ".join(
            line.strip()
            for line in script.splitlines()
            if line.strip() and not line.strip().startswith("--")
        )
        digest = hashlib.sha256(code.encode()).hexdigest()[:12]
        return cls(
            name,
            Migration(f"0001_schema_{digest}", script),
            record[0].text,
            parameters,
            [statement.text for statement in forget],
            batch,
            path,
        )

    def statements(self, tp: TopicPartition, records: Records) -> Sequence[Statement]:
        partition = {"topic": tp.topic, "partition": tp.partition}
        constant = {name: partition[name] for name in self._constant}
        if self.batch is not None:
            document = self.batch.document(records)
            if document is not None:
                row = {**constant, "records": document}
                return [Statement(self.batch.sql, [row], setup=self.batch.setup)]
        # Row by row (executemany). A row per record, filled a parameter at a time: a third of
        # the cost of calling a function per parameter and record.
        rows = [constant.copy() for _ in records]
        for name, column in self._columns:
            for row, value in zip(rows, column(records), strict=True):
                row[name] = value
        return [Statement(self._record, rows)]

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        rows = [{"topic": tp.topic, "partition": tp.partition}]
        return [Statement(text, rows) for text in self._forget]


def _at(path: Path, line: int) -> str:
    return f"{path}, line {line}"


def _sections(path: Path, text: str) -> dict[str, list[_Located]]:
    """The file's statements by section, each with its first line; every error located."""
    sections: dict[str, list[_Located]] = {}
    current: str | None = None
    pending, pending_line = "", 0
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        marker = _SECTION.match(line.strip())
        if marker:
            if _is_code(pending):
                raise ProcessorError(
                    f"{_at(path, pending_line)}: statement not ended with ';' before line {number}"
                )
            current = marker.group(1)
            if current not in SECTIONS:
                raise ProcessorError(
                    f"{_at(path, number)}: unknown section {current!r}; the sections are"
                    f" {', '.join(SECTIONS)}"
                )
            if current in sections:
                raise ProcessorError(f"{_at(path, number)}: a second {current} section")
            sections[current] = []
            pending = ""
            continue
        if not _is_code(pending):
            pending, pending_line = "", number
        pending += line
        if not _is_code(pending):
            continue
        if current is None:
            raise ProcessorError(
                f"{_at(path, pending_line)}: SQL before the first section; start the file with"
                " '-- sqlstate: schema'"
            )
        if sqlite3.complete_statement(pending):
            sections[current].append(
                _Located(_first_code_line(pending, pending_line), pending.strip())
            )
            pending = ""
    if pending.strip() and _is_code(pending):
        raise ProcessorError(f"{_at(path, pending_line)}: statement not ended with ';'")
    for section in SECTIONS:
        if not sections.get(section):
            raise ProcessorError(
                f"{path}: no {section} section, or it is empty; the file needs"
                f" '-- sqlstate: {section}' followed by its statements"
            )
    return sections


def _is_code(text: str) -> bool:
    """Whether ``text`` holds more than blank lines and ``--`` comments."""
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())


def _first_code_line(text: str, first: int) -> int:
    for offset, line in enumerate(text.splitlines()):
        if line.strip() and not line.strip().startswith("--"):
            return first + offset
    return first


def _parameters(
    guard: Guard, name: str, path: Path, statement: _Located, offered: Sequence[str]
) -> tuple[str, ...]:
    """Check one run-time statement; return the parameter names it uses, in order."""
    recording = _Recording(offered)
    try:
        guard.check(name, statement.text, recording, _at(path, statement.line))
    except ProcessorError as error:
        if recording.unknown:
            raise ProcessorError(
                f"{_at(path, statement.line)}: unknown parameter :{recording.unknown[0]}; this"
                f" statement can use {', '.join(':' + p for p in offered)}"
            ) from error
        raise
    return tuple(dict.fromkeys(recording.asked))


def _batch_form(
    guard: Guard, name: str, path: Path, statement: _Located, parameters: Sequence[str]
) -> BatchForm | None:
    """The record statement's batch form, if SQLite and the guard take it as a trigger."""
    batch = BatchForm.of(
        name,
        statement.text,
        [p for p in parameters if p in _CONSTANT],
        [(p, RECORD_PARAMETERS[p]) for p in parameters if p not in _CONSTANT],
    )
    if batch is None:
        return None
    row = {p: None for p in parameters if p in _CONSTANT} | {"records": "[]"}
    try:
        guard.check(name, batch.sql, row, _at(path, statement.line), batch.setup)
    except ProcessorError:
        # The statement itself passed the guard: what fails is only its form as a trigger's
        # body (say, a WITH clause), so it runs with executemany.
        return None
    return batch
