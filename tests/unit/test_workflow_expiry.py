"""spec.ttlSecondsAfterFinished: when a finished run's data goes, from the stored status (so a restart or a
failover keeps the deadline), and the operator-wide default."""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import pytest

from codeforge.controller.config import OperatorConfig
from codeforge.controller.env import ConfigError
from codeforge.controller.kstatus import ObjectRef
from codeforge.controller.services import OperatorServices
from codeforge.controller.workflow.expiry import (
    default_ttl,
    expired_status,
    expires_at,
    schedule_expiry,
)
from codeforge.controller.workflow.registry import WorkflowRegistry
from codeforge.controller.workflow.settings import WorkflowSettings
from codeforge.controller.workflow.status_writer import StatusWriter
from codeforge.controller.workflow.supervisor import WatchedWorkflow

DONE = {"phase": "Succeeded", "completionTime": "2026-12-02T10:00:00Z"}
AT = datetime.datetime(2026, 12, 2, 10, tzinfo=datetime.UTC).timestamp()


def test_expiry_counts_from_completion() -> None:
    assert expires_at({"ttlSecondsAfterFinished": 60}, DONE, None) == AT + 60
    assert expires_at({}, DONE, 3600) == AT + 3600  # the operator-wide default
    assert expires_at({"ttlSecondsAfterFinished": 0}, DONE, 3600) == AT  # the spec wins, 0 included
    assert expires_at({}, DONE, None) is None  # no TTL anywhere: kept
    assert expires_at({"ttlSecondsAfterFinished": 60}, {"phase": "Running"}, None) is None
    assert expires_at({"ttlSecondsAfterFinished": 60}, {"phase": "Failed"}, None) is None  # no time yet


def test_an_expired_workflow_is_not_expired_again() -> None:
    patch = expired_status(DONE, 60, 3, None)
    (condition,) = patch["status"]["conditions"]
    assert condition["type"] == "Expired"
    assert condition["reason"] == "TTLExpired"
    assert patch["status"]["resultRef"] is None
    assert expires_at({"ttlSecondsAfterFinished": 60}, {**DONE, **patch["status"]}, None) is None


def test_the_default_ttl_from_the_environment() -> None:
    assert default_ttl({}) is None
    assert default_ttl({"CODEFORGE_WORKFLOW_TTL_SECONDS": "86400"}) == 86400
    for bad in ("soon", "-1", str(10**9)):
        with pytest.raises(ConfigError, match="CODEFORGE_WORKFLOW_TTL_SECONDS"):
            default_ttl({"CODEFORGE_WORKFLOW_TTL_SECONDS": bad})


async def test_one_wait_per_expiring_workflow_dropped_once_expired_or_deleted() -> None:
    """`schedule_expiry` on every watch event: a finished Workflow with a TTL gets one waiting task, which
    later events of the same deadline keep (with the latest status) and an Expired status or a deletion
    stops."""
    workflows = WorkflowRegistry(settings=WorkflowSettings(), writer=StatusWriter(_no_patch))
    services = OperatorServices(OperatorConfig())
    ref = ObjectRef("team-a", "wf", "uid-wf")
    spec = {"steps": [{"name": "one", "pool": "p"}], "ttlSecondsAfterFinished": 3600}
    log = logging.getLogger("test")

    def event(status: dict[str, Any], **fields: Any) -> WatchedWorkflow:
        return WatchedWorkflow(ref, 1, spec, status, {}, **fields)

    schedule_expiry(workflows, services, event({"phase": "Running"}), None, log)
    assert workflows.expiries == {}  # not finished: nothing to wait for
    schedule_expiry(workflows, services, event(DONE), None, log)
    first = workflows.expiries["uid-wf"]
    assert first.at == AT + 3600
    later = {**DONE, "message": "later"}
    schedule_expiry(workflows, services, event(later), None, log)
    assert workflows.expiries["uid-wf"] is first
    assert first.status == later
    expired = {**DONE, **expired_status(DONE, 3600, 1, None)["status"]}
    schedule_expiry(workflows, services, event(expired), None, log)
    assert workflows.expiries == {}
    assert first.stopped.is_set()
    schedule_expiry(workflows, services, event(DONE), None, log)
    again = workflows.expiries["uid-wf"]
    schedule_expiry(workflows, services, event(DONE, deleting=True), None, log)
    assert workflows.expiries == {}
    assert again.stopped.is_set()
    await asyncio.sleep(0)
    assert first.task is not None
    assert again.task is not None
    assert first.task.done()
    assert again.task.done()


async def _no_patch(ref: ObjectRef, body: dict[str, Any]) -> None:
    raise AssertionError("nothing is written")
