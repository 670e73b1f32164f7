"""The chart's monitoring (issue 13): the Grafana dashboard and the PrometheusRule alerts query only metrics
the code exports, and the dashboard ConfigMap, PrometheusRule and agent PodMonitor render only when enabled.

Queries are parsed with a real PromQL parser (promql-parser, the Rust one of GreptimeDB), not by pattern, so a
selector hidden in a binary expression or a subquery is checked too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import promql_parser
import pytest
from prometheus_client.registry import CollectorRegistry

import codeforge.controller  # noqa: F401  (imports every operator metric into the default registry)
from codeforge_agent.metrics import AgentMetrics
from unit.test_chart import CHART, find, helm, needs_helm, one, render

DASHBOARD = Path(__file__).parents[2] / "helm" / "codeforge" / "dashboards" / "codeforge.json"
#: What Grafana substitutes before sending a query; any duration or value parses the same.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "summary": ("_sum", "_count", "_created", ""),
    "info": ("_info",),
    "unknown": ("",),
}


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a /metrics page of this registry can show (counters with _total, histograms with
    _bucket/_sum/_count), whether or not a sample exists yet."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


EXPORTED = exposed_names(prometheus_client.REGISTRY) | exposed_names(AgentMetrics().registry)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (by name or by a `__name__` matcher)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            names.update(m.value for m in node.matchers.matchers if m.name == "__name__")
        elif isinstance(node, promql_parser.MatrixSelector):
            walk(node.vector_selector)
        elif isinstance(node, promql_parser.BinaryExpr):
            walk(node.lhs)
            walk(node.rhs)
        elif isinstance(node, promql_parser.Call):
            for arg in node.args:
                walk(arg)
        elif isinstance(node, promql_parser.AggregateExpr):
            walk(node.expr)
            if node.param is not None:
                walk(node.param)
        elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
            walk(node.expr)

    walk(promql_parser.parse(expr))
    return names


def dashboard_queries() -> Iterator[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    variables = board["templating"]["list"]
    for variable in variables:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            inner = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
            assert inner, f"variable {variable['name']}: unexpected query {query}"
            yield f"variable {variable['name']}", inner.group(1)
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield f"panel {inner['title']!r} {target['refId']}", target["expr"]


def test_the_parser_finds_every_selector() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le) (rate(a_bucket{pool=~"$pool"}[$__rate_interval]))) '
        '/ on (pool) (max(b) + -c offset 5m) > bool scalar(d) or {__name__="e"} '
        "or max_over_time(f[1h:5m]) or topk(1, g)"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d", "e", "f", "g"}


def test_the_exported_names_include_the_issue_13_metrics() -> None:
    """The comparison below is only as good as this set: it holds the operator's and the agents' metrics."""
    assert {
        "codeforge_queue_depth",
        "codeforge_agentpool_busy_agents",
        "codeforge_agentpool_utilization_ratio",
        "codeforge_workflow_duration_seconds_bucket",
        "codeforge_result_notification_latency_seconds_count",
        "codeforge_workflow_coordination_efficiency_ratio_sum",
        "codeforge_agent_queue_wait_seconds_bucket",
        "codeforge_agent_busy_seconds_total",
        "codeforge_agent_task_slots",
    } <= EXPORTED
    assert "codeforge_queue_depth_total" not in EXPORTED


def test_every_dashboard_query_names_metrics_the_code_exports() -> None:
    board = json.loads(DASHBOARD.read_text())
    checked, unknown = 0, []
    for where, expr in dashboard_queries():
        names = metric_names(expr)
        assert names, f"{where}: {expr} selects no metric"
        unknown += [f"{where}: {name}" for name in sorted(names - EXPORTED)]
        checked += 1
    assert not unknown, "queries of metrics nothing exports:\n" + "\n".join(unknown)
    assert checked >= 30
    assert {"datasource", "pool"} <= {v["name"] for v in board["templating"]["list"]}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']!r} sticks out of Grafana's 24 columns"
        columns, rows = range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])
        mine = {(x, y) for x in columns for y in rows}
        assert not cells & mine, f"{panel['title']!r} overlaps another panel"
        cells |= mine


def test_a_misspelt_metric_would_be_caught() -> None:
    names = metric_names("sum by (pool) (rate(codeforge_agent_queue_wait_second_bucket[5m]))")
    assert names - EXPORTED == {"codeforge_agent_queue_wait_second_bucket"}


# ----------------------------------------------------------------------------------------------- the chart


@needs_helm
def test_monitoring_objects_are_off_by_default() -> None:
    objs = render()
    assert not find(objs, "PrometheusRule")
    assert not find(objs, "PodMonitor")
    assert not find(objs, "ConfigMap", "codeforge-dashboard")


@needs_helm
def test_the_dashboard_configmap_carries_the_json_and_the_sidecar_label() -> None:
    objs = render(
        "metrics.grafanaDashboard.enabled=true",
        "metrics.grafanaDashboard.namespace=monitoring",
        "metrics.grafanaDashboard.annotations.grafana_folder=CodeForge",
    )
    config = one(objs, "ConfigMap", "codeforge-dashboard")
    assert config["metadata"]["namespace"] == "monitoring"
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["metadata"]["annotations"] == {"grafana_folder": "CodeForge"}
    assert json.loads(config["data"]["codeforge.json"]) == json.loads(DASHBOARD.read_text())


@needs_helm
def test_the_prometheus_rule_alerts_on_metrics_the_code_exports() -> None:
    objs = render(
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=prom",
        "metrics.prometheusRule.alertLabels.team=platform",
        "metrics.prometheusRule.oldestTask.ageSeconds=120",
    )
    rule = one(objs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    rules = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(rules) == {
        "CodeForgeDeadLettersGrowing",
        "CodeForgeQueuedTaskTooOld",
        "CodeForgeReconcileErrors",
        "CodeForgePoolAtMaxReplicas",
    }
    for name, alert in rules.items():
        assert metric_names(alert["expr"]) <= EXPORTED, name
        assert alert["labels"]["team"] == "platform"
        assert "{{ $labels.pool }}" in alert["annotations"]["summary"], "Prometheus fills it in, not Helm"
    assert rules["CodeForgeQueuedTaskTooOld"]["expr"] == "codeforge_queue_oldest_task_age_seconds > 120"
    assert metric_names(rules["CodeForgePoolAtMaxReplicas"]["expr"]) == {
        "codeforge_agentpool_desired_replicas",
        "codeforge_agentpool_max_replicas",
        "codeforge_queue_depth",
    }


@needs_helm
def test_the_agent_pod_monitor_selects_agent_pods_in_every_namespace() -> None:
    from codeforge.controller.agentpool import builders

    monitor = one(render("metrics.agentPodMonitor.enabled=true"), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    agent_labels = builders.labels("research", "research")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= agent_labels.items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == builders.HEALTH_PORT_NAME


@needs_helm
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ("metrics.prometheusRule.oldestTask.for=soon", "/metrics/prometheusRule/oldestTask/for"),
        ("metrics.prometheusRule.bogus=1", "bogus"),
        ("metrics.prometheusRule.reconcileErrors.threshold=-1", "/metrics/prometheusRule/reconcileErrors"),
    ],
)
def test_bad_monitoring_values_are_refused(sets: str, message: str) -> None:
    out = helm("template", "codeforge", str(CHART), "--set", sets, check=False)
    assert out.returncode != 0
    assert message in out.stderr
