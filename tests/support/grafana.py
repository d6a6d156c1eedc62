"""Read ``docs/grafana-dashboard.json``: its panels, its PromQL, and the metric names in it.

The metric names are what a test checks against what ``/metrics`` serves, so that a panel naming a
metric that does not exist (a typo, a renamed metric) fails a test instead of showing "No data".
PromQL is not parsed in full here; what is not a metric name is taken out first: strings, label
matchers, ranges, grouping clauses, Grafana's ``$variables``, numbers and durations, then every
identifier followed by ``(`` (a function or an aggregation) and the language's keywords.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
# An identifier that starts a token: not the exponent of 1e-3, not the unit of 5m, not hex.
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
    | {"by", "without", "on", "ignoring", "group_left", "group_right"}
)
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*\w+\s*\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.DOTALL)


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """Each PromQL expression of the dashboard, with where it is (a panel's or a variable's title).

    Every ``expr`` anywhere in the tree (panel targets, annotations) and the query of every
    query variable. A variable query in a form this does not know fails, rather than going
    unchecked.
    """
    found: dict[str, list[str]] = {}

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            where = str(node.get("title") or node.get("name") or where)
            expr = node.get("expr")
            if isinstance(expr, str):
                found.setdefault(expr, []).append(where)
            for value in node.values():
                walk(value, where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    walk({key: value for key, value in dashboard.items() if key != "templating"}, "dashboard")
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text) or _QUERY_RESULT.match(text)
        if match is None:
            raise ValueError(f"variable {variable['name']}: query form not known: {text!r}")
        found.setdefault(match[1], []).append(f"variable {variable['name']}")
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _VARIABLES.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        called = text[match.end() :].lstrip().startswith("(")
        if not called and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def unserved(dashboard: dict[str, Any], served: set[str]) -> dict[str, list[str]]:
    """The metric names the dashboard reads that are not in ``served``, with where it reads them."""
    missing: dict[str, set[str]] = {}
    for expr, places in expressions(dashboard).items():
        for name in metric_names(expr) - served:
            missing.setdefault(name, set()).update(places)
    return {name: sorted(places) for name, places in missing.items()}
