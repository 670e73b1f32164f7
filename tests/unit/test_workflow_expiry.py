"""spec.ttlSecondsAfterFinished: when a finished run's data goes, from the stored status (so a restart or a
failover keeps the deadline), and the operator-wide default."""

from __future__ import annotations

import datetime

import pytest

from codeforge.controller.env import ConfigError
from codeforge.controller.workflow.expiry import default_ttl, expired_status, expires_at

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
