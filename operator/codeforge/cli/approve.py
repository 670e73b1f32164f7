"""`codeforge approve | reject WORKFLOW STEP [--message TEXT]`: decide a waiting approval step on a cluster.

The decision is the Workflow's `approval.codeforge.ai/<step>` annotation (`codeforge.api.approval`), written
with a merge patch, so RBAC on `patch workflows` is who may decide. `by` is who the API server says the
kubeconfig's credentials are (a SelfSubjectReview, authentication.k8s.io/v1); `visit` is the visit the step's
status shows waiting, so a decision never carries over to a later visit of a step in a loop.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import typer

from codeforge.api.approval import MAX_DECISION_MESSAGE, Decision, annotation_key, now_rfc3339
from codeforge.cli.errors import CliError, guarded
from codeforge.cli.kube import WORKFLOWS, Kube
from codeforge.cli.options import Context, Kubeconfig, Namespace, connect

WAITING: Final = "Waiting"
Name = Annotated[str, typer.Argument(help="The Workflow.", show_default=False)]
Step = Annotated[str, typer.Argument(help="Its approval step that waits.", show_default=False)]
Message = Annotated[str, typer.Option("--message", "-m", help="A note recorded with the decision.")]


def whoami(kube: Kube, fallback: str) -> str:
    """The authenticated user, as the API server sees the caller (SelfSubjectReview); `fallback` when the
    server does not offer it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        review = client.AuthenticationV1Api(kube.api_client).create_self_subject_review(
            body=client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
        )
    except ApiException:
        return fallback
    user = getattr(getattr(review, "status", None), "user_info", None)
    return str(getattr(user, "username", "") or fallback)


def waiting_visit(workflow: dict[str, Any], step: str) -> int:
    """The visit of `step` that waits for a decision; CliError saying why there is none."""
    spec_steps = {s.get("name"): s for s in (workflow.get("spec") or {}).get("steps") or []}
    approvals = sorted(str(n) for n, s in spec_steps.items() if s.get("kind") == "approval")
    if step not in spec_steps:
        raise CliError(
            f"no step {step!r} in this Workflow (approval steps: {', '.join(approvals) or 'none'})"
        )
    if step not in approvals:
        raise CliError(f"step {step!r} is not an approval step (kind: approval)")
    status = workflow.get("status") or {}
    current = next((s for s in status.get("steps") or [] if s.get("name") == step), None)
    if current is None or current.get("phase") != WAITING:
        phase = (current or {}).get("phase") or "not started"
        decided = (current or {}).get("approval") or {}
        note = f", {decided.get('decision')} by {decided.get('by')}" if decided else ""
        raise CliError(f"step {step!r} is not waiting for a decision ({phase}{note})")
    return int(current.get("visits") or 1)


def decide(kube: Kube, name: str, step: str, approved: bool, message: str) -> str:
    """Write the decision; returns the line to print."""
    if len(message) > MAX_DECISION_MESSAGE:
        raise CliError(f"--message is longer than {MAX_DECISION_MESSAGE} characters")
    visit = waiting_visit(kube.get(WORKFLOWS, name), step)
    by = whoami(kube, fallback=kube.api_client.configuration.username or "unknown")
    decision = Decision(approved, by, message, now_rfc3339(), visit)
    kube.patch(WORKFLOWS, name, {"metadata": {"annotations": {annotation_key(step): decision.encode()}}})
    verb = "approved" if approved else "rejected"
    return f"Workflow {kube.namespace}/{name}: step {step} (visit {visit}) {verb} by {by}"


@guarded
def approve_command(
    name: Name,
    step: Step,
    message: Message = "",
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Approve a waiting approval step (the annotation approval.codeforge.ai/STEP)."""
    typer.echo(decide(connect(kubeconfig, context, namespace), name, step, True, message))


@guarded
def reject_command(
    name: Name,
    step: Step,
    message: Message = "",
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Reject a waiting approval step: it fails; only an edge like `when: '!result.approved'` routes it."""
    typer.echo(decide(connect(kubeconfig, context, namespace), name, step, False, message))


def register(app: typer.Typer) -> None:
    app.command("approve")(approve_command)
    app.command("reject")(reject_command)
