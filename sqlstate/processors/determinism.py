"""Which SQL a processor may call: SQLite's deterministic built-in functions, and the clock never.

State must be a function of the records alone (docs/guarantees.md), so that a replay, a reset or
a standby makes the same rows. SQLite marks its deterministic functions internally, but that
mark is not visible from Python; so the processor guard (``guard.py``) lets a statement call only
the functions listed here, by name, as SQLite's authorizer reports each call. Everything else is
refused at start: ``random()``, ``changes()``, ``last_insert_rowid()``, ``total_changes()``,
``sqlite_version()``, ``load_extension()``, ``fts3_tokenizer()``, any function an extension adds.

The date and time functions are deterministic only when given a time value that is not
``'now'``: ``date(:timestamp / 1000, 'unixepoch')`` is, ``date()`` and ``date('now')`` read the
clock. The authorizer reports the call but not its arguments, so ``clock_reading`` reads the
statement's text: a call with too few arguments (the time value then defaults to now), a
``'now'`` literal beside a date function, the ``'localtime'`` and ``'utc'`` modifiers (the
host's time zone), and the keywords ``CURRENT_TIMESTAMP``,
``CURRENT_DATE`` and ``CURRENT_TIME`` (a column's DEFAULT too) are refused. A time value that
reaches a date function as data (a record's value that reads ``now``) cannot be seen before it
runs; that is the processor's own input, documented in docs/guarantees.md.
"""

from __future__ import annotations

import re

# SQLite's built-in functions whose result depends on their arguments alone, by kind.
_SCALAR = """
    abs char coalesce concat concat_ws format glob hex if ifnull iif instr length like
    likelihood likely lower ltrim max min nullif octet_length printf quote replace round rtrim
    sign soundex substr substring trim typeof unhex unicode unistr unistr_quote unlikely upper
    zeroblob
"""
_AGGREGATE = """
    avg count group_concat string_agg sum total median percentile percentile_cont percentile_disc
"""
_WINDOW = """
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value
    nth_value
"""
_MATH = """
    acos acosh asin asinh atan atan2 atanh ceil ceiling cos cosh degrees exp floor ln log log10
    log2 mod pi pow power radians sin sinh sqrt tan tanh trunc
"""
# ``->`` and ``->>`` are reported as functions too.
_JSON = """
    json jsonb json_array jsonb_array json_array_length json_error_position json_extract
    jsonb_extract json_insert jsonb_insert json_object jsonb_object json_patch jsonb_patch
    json_pretty json_quote json_remove jsonb_remove json_replace jsonb_replace json_set jsonb_set
    json_type json_valid json_group_array jsonb_group_array json_group_object jsonb_group_object
    -> ->>
"""
#: What a processor may call, besides the date and time functions below.
DETERMINISTIC_FUNCTIONS = frozenset(
    name for kind in (_SCALAR, _AGGREGATE, _WINDOW, _MATH, _JSON) for name in kind.split()
)
#: The date and time functions, and how many arguments each needs before the time value is
#: given (fewer: the time value defaults to now).
CLOCK_FUNCTIONS = {
    "date": 1,
    "time": 1,
    "datetime": 1,
    "julianday": 1,
    "unixepoch": 1,
    "strftime": 2,
    "timediff": 2,
}
#: Date and time modifiers that convert between UTC and the host's time zone: another host, or
#: the same one after a change of zone or daylight saving rules, makes other rows.
LOCAL_MODIFIERS = frozenset({"localtime", "utc"})
#: Keywords that SQLite turns into a reading of the clock (reported as functions of that name).
CLOCK_KEYWORDS = frozenset({"current_timestamp", "current_date", "current_time"})

_FOR_STATE = "state must be a function of the records"

_TOKEN = re.compile(
    r"""
      (?P<space>\s+|--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<string>'(?:[^']|'')*'?)
    | (?P<name>"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?)
    | (?P<word>[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def function_refusal(function: str) -> str | None:
    """Why a processor may not call ``function`` (as SQLite's authorizer names it), or None."""
    name = function.lower()
    if name in CLOCK_KEYWORDS:
        return f"{function.upper()} reads the clock: {_FOR_STATE} (use :timestamp)"
    if name in DETERMINISTIC_FUNCTIONS or name in CLOCK_FUNCTIONS:
        return None
    return (
        f"{function}() is not repeatable: {_FOR_STATE}; a processor may call SQLite's"
        " deterministic built-in functions only"
    )


def clock_reading(text: str) -> str | None:
    """Why the SQL ``text`` reads the clock through a date or time function, or None."""
    tokens = [
        (match.lastgroup, match.group())
        for match in _TOKEN.finditer(text)
        if match.lastgroup != "space"
    ]
    calls = False
    for at, (kind, value) in enumerate(tokens):
        if kind == "word" and value.lower() in CLOCK_KEYWORDS:
            return f"{value.upper()} reads the clock: {_FOR_STATE} (use :timestamp)"
        name = _unquoted(kind, value).lower()
        if name not in CLOCK_FUNCTIONS or tokens[at + 1 : at + 2] != [("other", "(")]:
            continue
        calls = True
        if _arguments(tokens, at + 2) < CLOCK_FUNCTIONS[name]:
            return (
                f"{value}() without a time value reads the clock: {_FOR_STATE}; give it one,"
                f" such as {value}(:timestamp / 1000, 'unixepoch')"
            )
    if not calls:
        return None
    literals = {value[1:-1].strip().lower() for kind, value in tokens if kind == "string"}
    if "now" in literals:
        return f"'now' reads the clock: {_FOR_STATE}; give date and time functions :timestamp"
    local = sorted(literals & LOCAL_MODIFIERS)
    if local:
        return (
            f"the '{local[0]}' modifier depends on the host's time zone: {_FOR_STATE}, the same"
            " on every host; keep times in UTC"
        )
    return None


def _unquoted(kind: str | None, value: str) -> str:
    if kind == "name" and len(value) >= 2:
        return value[1:-1]
    return value


def _arguments(tokens: list[tuple[str | None, str]], start: int) -> int:
    """How many arguments the call whose ``(`` is just before ``tokens[start]`` has."""
    depth, count = 0, 0
    for kind, value in tokens[start:]:
        if kind != "other":
            count = count or 1
        elif value == "(":
            depth, count = depth + 1, count or 1
        elif value == ")":
            if depth == 0:
                return count
            depth -= 1
        elif value == "," and depth == 0:
            count += 1
        else:
            count = count or 1
    return count
