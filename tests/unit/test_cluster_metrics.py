"""The Prometheus-text helpers of bench/operator_scale.py: request rates and histogram quantiles."""

# ruff: noqa: E501  (apiserver sample lines are long)

from __future__ import annotations

import pytest

from cluster.metrics import (
    bucket_delta,
    gauge_values,
    histogram_buckets,
    quantile,
    rate_by_key,
    request_counts,
)

APISERVER = """\
# HELP apiserver_request_total [STABLE] Counter of apiserver requests.
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="codeforge.ai",resource="workflows",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 40
apiserver_request_total{code="409",component="apiserver",dry_run="",group="codeforge.ai",resource="workflows",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 2
apiserver_request_total{code="201",component="apiserver",dry_run="",group="codeforge.ai",resource="workflows",scope="resource",subresource="",verb="POST",version="v1alpha1"} 10
"""

OPERATOR = """\
# HELP codeforge_workflow_step_dispatch_latency_seconds A step became ready -> enqueued.
# TYPE codeforge_workflow_step_dispatch_latency_seconds histogram
codeforge_workflow_step_dispatch_latency_seconds_bucket{le="0.01"} 50.0
codeforge_workflow_step_dispatch_latency_seconds_bucket{le="0.05"} 90.0
codeforge_workflow_step_dispatch_latency_seconds_bucket{le="0.1"} 100.0
codeforge_workflow_step_dispatch_latency_seconds_bucket{le="+Inf"} 100.0
codeforge_workflow_step_dispatch_latency_seconds_count 100.0
codeforge_workflow_step_dispatch_latency_seconds_sum 2.0
# HELP codeforge_workflows Workflows by phase.
# TYPE codeforge_workflows gauge
codeforge_workflows{phase="Running"} 3.0
codeforge_workflows{phase="Succeeded"} 7.0
"""


def test_request_counts_sum_codes_per_verb_and_resource() -> None:
    counts = request_counts(APISERVER)
    assert counts[("PATCH", "workflows", "status")] == 42
    assert counts[("POST", "workflows", "")] == 10


def test_rates_are_deltas_per_second_busiest_first_without_idle_kinds() -> None:
    before = {("PATCH", "workflows", "status"): 2.0, ("GET", "pods", ""): 5.0}
    after = {
        ("PATCH", "workflows", "status"): 42.0,
        ("POST", "workflows", ""): 10.0,
        ("GET", "pods", ""): 5.0,
    }
    assert rate_by_key(before, after, 2.0) == {"PATCH workflows/status": 20.0, "POST workflows": 5.0}
    assert list(rate_by_key(before, after, 2.0)) == ["PATCH workflows/status", "POST workflows"]


def test_quantiles_interpolate_inside_the_bucket() -> None:
    buckets = histogram_buckets(OPERATOR, "codeforge_workflow_step_dispatch_latency_seconds")
    assert buckets[-1] == (float("inf"), 100.0)
    assert quantile(buckets, 0.5) == pytest.approx(0.01)
    assert quantile(buckets, 0.7) == pytest.approx(0.03)  # halfway from 50 to 90 in (0.01, 0.05]
    assert quantile(buckets, 0.99) == pytest.approx(0.095)


def test_quantile_in_the_open_bucket_is_the_last_bound_and_none_without_observations() -> None:
    assert quantile([(0.1, 1.0), (float("inf"), 10.0)], 0.99) == 0.1
    assert quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None
    assert quantile([], 0.5) is None


def test_bucket_delta_keeps_only_the_observations_in_between() -> None:
    before = [(0.01, 50.0), (float("inf"), 60.0)]
    after = [(0.01, 50.0), (float("inf"), 100.0)]
    assert bucket_delta(before, after) == [(0.01, 0.0), (float("inf"), 40.0)]
    assert quantile(bucket_delta(before, after), 0.5) == 0.01


def test_gauge_by_label() -> None:
    assert gauge_values(OPERATOR, "codeforge_workflows", "phase") == {"Running": 3.0, "Succeeded": 7.0}


def test_several_operators_pages_add_up() -> None:
    """bench/operator_scale.py --shards reads the shards' /metrics pages one after the other."""
    pages = OPERATOR + "\n" + OPERATOR
    assert gauge_values(pages, "codeforge_workflows", "phase") == {"Running": 6.0, "Succeeded": 14.0}
    buckets = histogram_buckets(pages, "codeforge_workflow_step_dispatch_latency_seconds")
    assert buckets[-1] == (float("inf"), 200.0)
    assert quantile(buckets, 0.5) == pytest.approx(0.01)
