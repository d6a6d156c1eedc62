"""``docs/grafana-dashboard.json`` is a dashboard Grafana imports, and its PromQL is read right.

Whether its metric names are the ones ``/metrics`` serves is checked against a running daemon in
``tests/acceptance/test_operations.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import grafana

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def test_the_dashboard_is_one_grafana_imports() -> None:
    dashboard = grafana.load()
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36  # datasources referenced by uid
    assert dashboard["title"] == "sqlstate"
    assert dashboard["id"] is None  # Grafana assigns it on import
    # The import form asks for a Prometheus data source and writes its uid for this input.
    assert [(i["name"], i["type"], i["pluginId"]) for i in dashboard["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    # A provisioned file skips the import form; then a datasource variable of the same name
    # resolves ${DS_PROMETHEUS}.
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"job", "instance", "topic"} <= set(variables)

    panels = list(grafana.panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert len(graphs) >= 8
    for panel in graphs:
        assert panel["title"], panel
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert grafana.metric_names(target["expr"]), (panel["title"], target["expr"])
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


def test_the_dashboard_shows_what_an_operator_asks_about() -> None:
    used = {
        name for expr in grafana.expressions(grafana.load()) for name in grafana.metric_names(expr)
    }
    assert {
        "sqlstate_records_consumed_total",
        "sqlstate_partition_lag",
        "sqlstate_commit_duration_seconds_bucket",
        "sqlstate_rebalances_total",
        "sqlstate_fenced_batches_total",
        "sqlstate_database_busy_retries_total",
        "sqlstate_out_of_range_resets_total",
        "sqlstate_healthy",
    } <= used


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.99, sum by (instance, le)"
            ' (rate(sqlstate_commit_duration_seconds_bucket{job=~"$job"}[$__rate_interval])))',
            {"sqlstate_commit_duration_seconds_bucket"},
        ),
        (
            'sum without (pod) (rate(a_total{x="rate(b_total)", y!~"c|d"}[5m] offset 1h))'
            " / on (instance) group_left (version) build_info > bool 1e-3",
            {"a_total", "build_info"},
        ),
        (
            "sqlstate_partition_lag and ignoring(topic) up == 0x1F or vector(1)",
            {"sqlstate_partition_lag", "up"},
        ),
        (
            "rate(sqlstate_recrods_consumed_total[${__rate_interval}])",
            {"sqlstate_recrods_consumed_total"},
        ),
        ("max_over_time(x[10m:1m]) + Inf - NaN", {"x"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert grafana.metric_names(expr) == names


def test_variable_queries_are_read_too() -> None:
    variable: dict[str, Any] = {
        "name": "instance",
        "type": "query",
        "query": {"query": 'label_values(b_info{job=~"$job", x="y"}, instance)'},
    }
    dashboard: dict[str, Any] = {
        "panels": [{"title": "p", "targets": [{"expr": "rate(a_total[5m])"}]}],
        "templating": {
            "list": [
                {"name": "ds", "type": "datasource", "query": "prometheus"},
                variable,
            ]
        },
    }
    found = grafana.expressions(dashboard)
    assert found == {
        "rate(a_total[5m])": ["p"],
        'b_info{job=~"$job", x="y"}': ["variable instance"],
    }
    variable["query"] = "metrics(sqlstate_.*)"
    with pytest.raises(ValueError, match="query form not known"):
        grafana.expressions(dashboard)
