"""Scrape a real process's /metrics and read samples out of it (with prometheus_client's own parser)."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200, f"GET {url}: {response.status}"
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of `name` with exactly these labels; fails naming what there is when absent."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        seen = sorted(str(dict(k[1])) for k in samples if k[0] == name)
        raise AssertionError(f"no sample {name}{labels}; series of that name: {seen or 'none'}")
    return samples[key]
