"""The one quantile method of every benchmark's raw samples: linear interpolation between the two nearest
ranks (numpy's default; `statistics.quantiles(..., method="inclusive")`), so a p99 means the same in every
table. Histograms scraped from /metrics are read as PromQL reads them (tests/cluster/metrics.py)."""

from __future__ import annotations


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (q in 0..100) of an already sorted, non-empty list."""
    pos = (len(sorted_values) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)
