"""Kopf handlers of leader election (the election itself is `controller/leader.py`).

Imported last by `codeforge.controller`: Kopf runs cleanup handlers in the order they were registered, so the
Lease is released after every other cleanup (the Workflow status writer's last flush among them) is done, and
a standby that takes over never overlaps with this replica's last writes (tests/unit/test_leader.py checks
the order).
"""

from __future__ import annotations

from typing import Any

import kopf


@kopf.on.cleanup()
async def release_leadership(*, memo: Any, **_: Any) -> None:
    """On a graceful shutdown (SIGTERM), after Kopf stopped handling: release the Lease for a standby."""
    services = getattr(memo, "services", None)
    leadership = getattr(services, "leadership", None)
    if leadership is not None:
        await leadership.resign()


@kopf.on.probe(id="leader")
def leader_probe(**_: Any) -> bool:
    """Kopf serves its liveness endpoint only once startup is done, i.e. on the replica that leads (a
    standby's probe, `leader.StandbyProbe`, says false)."""
    return True
