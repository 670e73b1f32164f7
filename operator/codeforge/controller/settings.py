"""Kopf settings for the CodeForge operator.

- Kopf's own bookkeeping (handler progress, the last-handled spec) lives in `codeforge.ai/*` annotations, so
  the status schema of our CRDs stays strict and holds only what users read.
- High availability: run two replicas with peering. Each replica takes a random priority, so exactly one is
  active (the lower one pauses while it sees the higher one) and the standby takes over once the active one's
  peering record expires (`CODEFORGE_PEERING_LIFETIME`, default 60 s). `CODEFORGE_PEERING=standalone`
  disables peering (one replica, or tests).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from typing import Final

import kopf

ANNOTATIONS_PREFIX: Final = "codeforge.ai"
FINALIZER: Final = "codeforge.ai/finalizer"
PEERING_NAME: Final = "codeforge"


def configure(settings: kopf.OperatorSettings, env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER

    peering = env.get("CODEFORGE_PEERING", "auto").strip().lower()
    settings.peering.name = env.get("CODEFORGE_PEERING_NAME", PEERING_NAME)
    settings.peering.clusterwide = env.get("CODEFORGE_PEERING_CLUSTERWIDE", "true").lower() != "false"
    settings.peering.standalone = peering == "standalone"
    settings.peering.mandatory = peering == "mandatory"
    # An operator pauses while it sees a peer of higher or equal priority: equal ones would pause both.
    settings.peering.priority = random.randint(1, 2**31 - 1)
    settings.peering.stealth = True
    # Seconds a peer's keep-alive stays valid: how long a standby waits after the active replica dies.
    # Kopf refreshes its record 5-10 s before this runs out, so keep it at 15 or more.
    settings.peering.lifetime = max(15, int(env.get("CODEFORGE_PEERING_LIFETIME", "60") or 60))

    # Our Events carry the scale decisions and health changes; Kopf's per-handler ones are noise.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "codeforge-operator"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.queueing.error_delays = (1, 2, 5, 10, 20, 30)
