"""Hatchet-lite under `codeforge bench workflow`: it cannot be built on this project's machines, and this row
says why instead of leaving it out.

Hatchet-lite is a Go binary (github.com/hatchet-dev/hatchet, cmd/hatchet-lite) that needs PostgreSQL. The only
way to get Go code here is the Go module proxy, and the proxy refuses that module: `go list -m -versions
github.com/hatchet-dev/hatchet` and `@latest` answer 403 "This module version is not available" (checked
2026-12-02 and again the same day: 403 Forbidden for `@v/list` and `@latest`; no version of it is known to
be served, so there is no pinned version to ask for). Its release binaries and container images come from
hosts this machine cannot reach.
"""

from __future__ import annotations

from codeforge.benchmarks.workflow_engine import Unavailable, WorkflowEngine

WHY = (
    "not built: the Go module proxy refuses github.com/hatchet-dev/hatchet (403 'This module version is not "
    "available' for its version list and @latest), and its release binaries and images are on hosts this "
    "machine cannot reach"
)


class HatchetLite(WorkflowEngine):
    name = "hatchet"
    label = "Hatchet-lite"

    def version(self) -> str:
        return "-"

    def describe(self) -> str:
        return "hatchet-lite with PostgreSQL (Debian's package)"

    async def start(self) -> None:
        raise Unavailable(WHY)

    async def stop(self) -> None:
        return None

    async def run(self, shape: str, workflow_id: str) -> None:
        raise Unavailable(WHY)
