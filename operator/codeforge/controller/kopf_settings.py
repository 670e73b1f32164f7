"""Kopf settings for the CodeForge operator.

- Kopf's own bookkeeping (handler progress, the last-handled spec) lives in `codeforge.ai/*` annotations, so
  the status schema of our CRDs stays strict and holds only what users read.
- High availability is leader election on a Lease (`controller/leader.py`): only the replica holding it runs
  Kopf's watchers at all, so Kopf's own peering is off (standalone) and needs no peering CRD or object.
"""

from __future__ import annotations

import logging
from typing import Final

import kopf

ANNOTATIONS_PREFIX: Final = "codeforge.ai"
FINALIZER: Final = "codeforge.ai/finalizer"


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    # Without this, Kopf looks for peering objects (of a release installed with an older chart, say).
    settings.peering.standalone = True

    # Our Events carry the scale decisions and health changes; Kopf's per-handler ones are noise.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "codeforge-operator"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.queueing.error_delays = (1, 2, 5, 10, 20, 30)
