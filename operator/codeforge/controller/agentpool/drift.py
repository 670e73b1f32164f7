"""Drift between what the operator built and what is in the cluster.

The API server adds defaults (imagePullPolicy, terminationMessagePath, ...) and canonicalises quantities
("0.5" -> "500m"), so "drifted" means: some field the operator sets has a different value, not "the objects
differ". Extra fields in the live object are ignored.
"""

from __future__ import annotations

from decimal import InvalidOperation
from typing import Any

from kubernetes.utils.quantity import parse_quantity


def _same_scalar(path: str, wanted: Any, actual: Any) -> bool:
    if wanted == actual:
        return True
    if ".resources." in path and isinstance(wanted, str | int) and isinstance(actual, str | int):
        try:
            same: bool = parse_quantity(wanted) == parse_quantity(actual)  # type: ignore[no-untyped-call]
        except (ValueError, InvalidOperation):
            return False
        return same
    return False


def differences(wanted: Any, actual: Any, path: str = "") -> list[str]:
    """Paths (like `.spec.template.spec.containers[0].image`) where `actual` does not carry `wanted`."""
    if isinstance(wanted, dict):
        if not isinstance(actual, dict):
            return [path or "."]
        found: list[str] = []
        for key, value in wanted.items():
            found += differences(value, actual.get(key), f"{path}.{key}")
        return found
    if isinstance(wanted, list):
        if not isinstance(actual, list) or len(actual) != len(wanted):
            return [path]
        found = []
        for index, (w, a) in enumerate(zip(wanted, actual, strict=True)):
            found += differences(w, a, f"{path}[{index}]")
        return found
    return [] if _same_scalar(path, wanted, actual) else [path]
