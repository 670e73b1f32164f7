"""A process's RSS and CPU time (/proc), and Prometheus text from the control plane and the operator: API
request counts by verb and resource, histogram quantiles (bench/operator_scale.py, operator_footprint.py)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

TICKS = os.sysconf("SC_CLK_TCK")
#: (verb, resource, subresource) -> requests
RequestCounts = dict[tuple[str, str, str], float]


def request_counts(text: str) -> RequestCounts:
    """`apiserver_request_total` of a kube-apiserver /metrics page, summed over codes and scopes."""
    counts: RequestCounts = {}
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if sample.name != "apiserver_request_total":
                continue
            labels = sample.labels
            key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""))
            counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def rate_by_key(before: RequestCounts, after: RequestCounts, seconds: float) -> dict[str, float]:
    """Requests per second between two scrapes, keyed "VERB resource[/subresource]", busiest first, zeros
    left out."""
    rates: dict[str, float] = {}
    for key, value in after.items():
        delta = value - before.get(key, 0.0)
        if delta > 0 and seconds > 0:
            verb, resource, sub = key
            rates[f"{verb} {resource}{'/' + sub if sub else ''}"] = delta / seconds
    return dict(sorted(rates.items(), key=lambda item: -item[1]))


def histogram_buckets(text: str, name: str) -> list[tuple[float, float]]:
    """The cumulative (upper bound, count) buckets of histogram `name` (without `_bucket`), label sets
    summed, sorted by bound."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return sorted(buckets.items())


def bucket_delta(
    before: Iterable[tuple[float, float]], after: Iterable[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The observations made between two scrapes of a histogram."""
    old: Mapping[float, float] = dict(before)
    return [(bound, count - old.get(bound, 0.0)) for bound, count in after]


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of cumulative buckets, interpolated linearly inside its bucket (as PromQL's
    histogram_quantile does); None without observations; the last finite bound if it falls in +Inf."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def gauge_values(text: str, name: str, label: str) -> dict[str, float]:
    """A gauge's samples by one label's value (e.g. codeforge_workflows by phase), summed over the other
    labels and over the pages in `text` (several operators' scrapes, one after the other)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == name:
            for sample in family.samples:
                key = sample.labels.get(label, "")
                values[key] = values.get(key, 0.0) + sample.value
    return values


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS
