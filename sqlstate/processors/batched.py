"""A SQL processor's per-record statement run over a whole batch in one call.

``executemany`` runs the record statement once per record, and so does this, but from inside
SQLite: the batch's records go to SQLite as one JSON array, inserted with one statement into a
temporary view whose ``INSTEAD OF INSERT`` trigger is the user's statement, each ``:name``
rewritten as ``NEW."name"``. The trigger runs once per record, in offset order, in the batch's
transaction: the same statements on the same rows as ``executemany``, so the same state.

Why: CPython's sqlite3 module gives up Python's GIL around each ``sqlite3_step`` and must take it
back to bind the next row, while the event loop, parsing the next batch, may hold it for up to
the 5 ms switch interval. Row by row, the database thread spends much of the batch waiting for
the GIL; one call per batch gives it up once (docs/performance.md has the figures).

The batch form is only an optimisation, and falls back to ``executemany`` whenever it cannot give
the same rows:

- at load, when the statement cannot be rewritten or cannot be a trigger's body (SQLite refuses a
  ``WITH`` clause, a schema-qualified table, ``RETURNING`` or ``INDEXED BY`` there), or the guard
  refuses the trigger (``guard.py`` checks the trigger's statements as it checks the statement);
- per batch, when a parameter is a BLOB (a key or value that is not UTF-8 text, with
  ``--key-format``/``--value-format bytes``) or text holding a NUL character, which JSON
  cannot carry to SQLite exactly.

The temporary view and trigger are per connection; they are created (``IF NOT EXISTS``) by the
statement's ``setup``, in the batch's transaction, so a rolled-back batch takes them with it and
the next one makes them again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlstate.processors import json_text
from sqlstate.processors.base import Records
from sqlstate.state.queries import Queries

#: Temporary objects of processors: a name with this prefix and the processor's name (guard.py
#: refuses any other temporary object).
TEMPORARY_PREFIX = "sqlstate_batch_"

sql = Queries("sqlstate.processors")  # the framework's statements: processors/queries.sql

# The characters that can start something other than plain SQL text: quotes, bracketed names,
# comments, parameters.
_PLAIN = re.compile(r"[^'\"`\[\-/:@$?]+")
# What follows ``:``, ``@`` or ``$`` in a parameter name, as SQLite's tokenizer reads it.
_PARAMETER_NAME = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]+")


def as_trigger_body(statement: str, names: Sequence[str]) -> str | None:
    """``statement`` with each parameter ``:name`` (or ``@name``, ``$name``) as ``NEW."name"``;
    None when it holds anything that could not be rewritten exactly (a name not in ``names``,
    a ``?`` parameter, Tcl-style ``$a::b``, an unterminated quote or comment)."""
    out: list[str] = []
    at, end = 0, len(statement)
    while at < end:
        char = statement[at]
        plain = _PLAIN.match(statement, at)
        if plain:
            out.append(plain.group())
            at = plain.end()
        elif char in "'\"`[":
            close = "]" if char == "[" else char
            stop = statement.find(close, at + 1)
            # A quote inside quotes is written twice: '' "" ``.
            while stop >= 0 and close != "]" and statement.startswith(close, stop + 1):
                stop = statement.find(close, stop + 2)
            if stop < 0:
                return None
            out.append(statement[at : stop + 1])
            at = stop + 1
        elif statement.startswith("--", at):
            stop = statement.find("\n", at)
            stop = end if stop < 0 else stop
            out.append(statement[at:stop])
            at = stop
        elif statement.startswith("/*", at):
            stop = statement.find("*/", at + 2)
            if stop < 0:
                return None
            out.append(statement[at : stop + 2])
            at = stop + 2
        elif char in ":@$":
            name = _PARAMETER_NAME.match(statement, at + 1)
            if name is None or name.group() not in names:
                return None
            if char == "$" and statement.startswith(("::", "("), name.end()):
                return None
            out.append(f'NEW."{name.group()}"')
            at = name.end()
        elif char == "?":
            return None
        else:  # a lone - or /
            out.append(char)
            at += 1
    return "".join(out)


@dataclass(frozen=True)
class BatchForm:
    """How one SQL processor's record statement runs over a batch in one call."""

    #: The statements that create the temporary view and its trigger (``IF NOT EXISTS``).
    setup: tuple[str, str]
    #: The statement that inserts the batch into the view: ``:records`` and the constants.
    sql: str
    #: Per-record parameters, in the order of each row of the JSON array, and how to get them.
    columns: tuple[tuple[str, Callable[[Records], list[Any]]], ...]

    @classmethod
    def of(
        cls,
        processor: str,
        statement: str,
        constants: Sequence[str],
        columns: Sequence[tuple[str, Callable[[Records], list[Any]]]],
    ) -> BatchForm | None:
        """The batch form of ``statement`` (whose parameters are ``constants``, bound once per
        batch, and ``columns``, one per record), or None if it has none."""
        names = [*constants, *(name for name, _ in columns)]
        body = as_trigger_body(statement.strip(), names)
        if body is None:
            return None
        if not body.rstrip().endswith(";"):
            body += ";"
        view = f"{TEMPORARY_PREFIX}{processor}"
        # At least one column: a view needs one, and json_each() a row per record.
        view_columns = names or ["offset"]
        setup = (
            sql("batch_records_view").format(
                view=view, columns=", ".join(f'NULL AS "{name}"' for name in view_columns)
            ),
            sql("batch_records_trigger").format(view=view, body=body),
        )
        if len(columns) == 1:
            extracted = ["value"]
        else:
            extracted = [f"json_extract(value, '$[{index}]')" for index in range(len(columns))]
        insert = sql("insert_batch_records").format(
            view=view,
            names=", ".join(f'"{name}"' for name in view_columns),
            values=", ".join([*(f":{name}" for name in constants), *extracted]) or "NULL",
        )
        return cls(setup, insert, tuple(columns))

    def document(self, records: Records) -> str | None:
        """The batch's per-record parameters as one JSON array (of values, or of one array of
        values per record); None when one of them cannot go through JSON exactly."""
        if not self.columns:
            rows: list[Any] = [None] * len(records)
        elif len(self.columns) == 1:
            rows = self.columns[0][1](records)
        else:
            rows = list(zip(*(column(records) for _, column in self.columns), strict=True))
        return json_text.document(rows)
