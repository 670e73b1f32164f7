"""spec.fairShare: the field's validation and the key a run's tasks carry (README, "Fair share")."""

from __future__ import annotations

import pytest

from codeforge.api.limits import MAX_FAIR_KEY
from codeforge.api.workflow import WorkflowSpec, WorkflowSpecError, parse_workflow_spec
from codeforge.orchestrator.fairness import FairShare, fair_share_of

STEPS = [{"name": "a", "pool": "p"}]


def spec_with(fair_share: dict[str, object], **extra: object) -> WorkflowSpec:
    return parse_workflow_spec({"steps": STEPS, "fairShare": fair_share, **extra})


@pytest.mark.parametrize(
    ("fair_share", "message"),
    [
        ({"concurrencyKey": "team.name"}, "spec.fairShare.concurrencyKey: unknown variable 'team'"),
        ({"concurrencyKey": ""}, "spec.fairShare.concurrencyKey: CEL expression is empty"),
        ({"concurrencyKey": "x" * 5000}, "spec.fairShare.concurrencyKey: String should have at most 4096"),
        ({"maxConcurrency": 0}, "spec.fairShare.maxConcurrency: Input should be greater than or equal to 1"),
        ({"weight": 101}, "spec.fairShare.weight: Input should be less than or equal to 100"),
        ({"max_concurrency": 2}, "write 'maxConcurrency'"),
        # A constant key groups every Workflow of the namespace: only a string constant is meant.
        (
            {"concurrencyKey": "1"},
            "concurrencyKey: the key must be a non-empty string; this one always gives 1",
        ),
        (
            {"concurrencyKey": "null"},
            "concurrencyKey: the key must be a non-empty string; this one always gives null",
        ),
        ({"concurrencyKey": "true"}, "always gives true: use a field of `workflow` or `input`"),
        ({"concurrencyKey": "''"}, "always gives ''"),
        ({"concurrencyKey": "[1, 2]"}, "always gives [1, 2]"),
    ],
)
def test_bad_fair_share_is_refused_naming_the_field(fair_share: dict[str, object], message: str) -> None:
    with pytest.raises(WorkflowSpecError) as err:
        spec_with(fair_share)
    assert message in str(err.value)


async def test_without_fair_share_each_workflow_is_its_own_key() -> None:
    spec = parse_workflow_spec({"steps": STEPS})
    assert await fair_share_of(spec, "uid-1", name="w", namespace="team-a") == FairShare()


async def test_the_key_is_evaluated_over_workflow_and_input_and_scoped_to_the_namespace() -> None:
    spec = spec_with(
        {"concurrencyKey": "workflow.labels.team + '/' + input.repo", "weight": 3, "maxConcurrency": 5},
        input={"repo": "api"},
    )
    fair = await fair_share_of(spec, "uid-1", name="w", namespace="team-a", labels={"team": "payments"})
    assert fair == FairShare(key="team-a/payments/api", weight=3, max_concurrency=5)
    # The same value in another namespace is another key: no joining (or starving) another tenant's key.
    other = await fair_share_of(spec, "uid-2", name="w", namespace="team-b", labels={"team": "payments"})
    assert other.key == "team-b/payments/api"


async def test_a_key_that_cannot_be_evaluated_falls_back_to_the_workflow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = spec_with({"concurrencyKey": "workflow.labels.team", "maxConcurrency": 2})
    fair = await fair_share_of(spec, "uid-1", namespace="team-a", labels={})
    assert fair == FairShare(key="", weight=1, max_concurrency=2)
    assert "the Workflow is its own key" in caplog.text
    listed = spec_with({"concurrencyKey": "input.xs"}, input={"xs": [1, 2]})
    assert (await fair_share_of(listed, "uid-1", namespace="team-a")).key == ""


async def test_a_long_or_odd_value_becomes_a_bounded_digest() -> None:
    spec = spec_with({"concurrencyKey": "input.team"}, input={"team": "t\n" * 400})
    key = (await fair_share_of(spec, "uid-1", namespace="team-a")).key
    again = (await fair_share_of(spec, "uid-2", namespace="team-a")).key
    assert key == again
    assert key.startswith("team-a/sha256:")
    assert len(key) <= MAX_FAIR_KEY


def test_a_constant_string_key_is_one_key_for_the_namespace() -> None:
    assert spec_with({"concurrencyKey": "'nightly'"}).fair_share.concurrency_key == "'nightly'"
