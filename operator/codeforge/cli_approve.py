"""`codeforge approve | reject WORKFLOW STEP [--message TEXT]`: decide a waiting approval step on a cluster.

The decision is the Workflow's `approval.codeforge.ai/<step>` annotation (`codeforge.api.approval`), written
with a merge patch, so RBAC on `patch workflows` is who may decide. `by` is who the API server says the
kubeconfig's credentials are (a SelfSubjectReview, authentication.k8s.io/v1); `visit` is the visit the step's
status shows waiting, so a decision never carries over to a later visit of a step in a loop.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final

import typer
from rich.console import Console
from rich.markup import escape

from codeforge.api.agentpool import GROUP, VERSION
from codeforge.api.approval import MAX_DECISION_MESSAGE, Decision, annotation_key, now_rfc3339
from codeforge.api.workflow import PLURAL

EXIT_ERROR: Final = 1
WAITING: Final = "Waiting"


class ApproveError(Exception):
    """One line for the user: what is wrong and what to do."""


def _clients(kubeconfig: str | None, context: str | None) -> Any:
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    except (ConfigException, OSError) as exc:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException:
            raise ApproveError(f"no cluster configured: {exc}; set KUBECONFIG or pass --kubeconfig") from None
    return client.ApiClient(configuration)


def _api_error(exc: Any, what: str) -> ApproveError:
    status = getattr(exc, "status", 0)
    try:
        message = json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        message = str(getattr(exc, "reason", exc))
    if status == 404 and "could not find the requested resource" in message:
        return ApproveError(
            "the codeforge CRDs are not installed on this cluster (helm install codeforge ...)"
        )
    if status == 404:
        return ApproveError(f"{what} not found")
    if status in (401, 403):
        return ApproveError(f"not allowed: {message[:300]}")
    return ApproveError(f"{what}: the API server answered {status}: {message[:300]}")


def whoami(api: Any, fallback: str) -> str:
    """The authenticated user, as the API server sees the caller (SelfSubjectReview); `fallback` when the
    server does not offer it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            body=client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
        )
    except ApiException:
        return fallback
    user = getattr(getattr(review, "status", None), "user_info", None)
    return str(getattr(user, "username", "") or fallback)


def waiting_visit(workflow: dict[str, Any], step: str) -> int:
    """The visit of `step` that waits for a decision; ApproveError saying why there is none."""
    spec_steps = {s.get("name"): s for s in (workflow.get("spec") or {}).get("steps") or []}
    approvals = sorted(str(n) for n, s in spec_steps.items() if s.get("kind") == "approval")
    if step not in spec_steps:
        raise ApproveError(
            f"no step {step!r} in this Workflow (approval steps: {', '.join(approvals) or 'none'})"
        )
    if step not in approvals:
        raise ApproveError(f"step {step!r} is not an approval step (kind: approval)")
    status = workflow.get("status") or {}
    current = next((s for s in status.get("steps") or [] if s.get("name") == step), None)
    if current is None or current.get("phase") != WAITING:
        phase = (current or {}).get("phase") or "not started"
        decided = (current or {}).get("approval") or {}
        note = f", {decided.get('decision')} by {decided.get('by')}" if decided else ""
        raise ApproveError(f"step {step!r} is not waiting for a decision ({phase}{note})")
    return int(current.get("visits") or 1)


def decide(
    workflow_name: str,
    step: str,
    approved: bool,
    message: str,
    namespace: str | None,
    kubeconfig: str | None,
    context: str | None,
) -> str:
    """Write the decision; returns the line to print."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    if len(message) > MAX_DECISION_MESSAGE:
        raise ApproveError(f"--message is longer than {MAX_DECISION_MESSAGE} characters")
    api = _clients(kubeconfig, context)
    if namespace is None:
        try:
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            namespace = (active or {}).get("context", {}).get("namespace") or "default"
        except Exception:  # in-cluster or an odd kubeconfig: the default namespace
            namespace = "default"
    objects = client.CustomObjectsApi(api)
    what = f"Workflow {namespace}/{workflow_name}"
    try:
        workflow = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, workflow_name)
    except ApiException as exc:
        raise _api_error(exc, what) from None
    except Exception as exc:  # urllib3: connection refused, DNS, TLS
        raise ApproveError(f"no cluster reachable: {str(exc)[:300]}") from None
    visit = waiting_visit(workflow if isinstance(workflow, dict) else {}, step)
    by = whoami(api, fallback=api.configuration.username or "unknown")
    decision = Decision(approved, by, message, now_rfc3339(), visit)
    patch = {"metadata": {"annotations": {annotation_key(step): decision.encode()}}}
    try:
        objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, workflow_name, patch)
    except ApiException as exc:
        raise _api_error(exc, what) from None
    verb = "approved" if approved else "rejected"
    return f"{what}: step {step} (visit {visit}) {verb} by {by}"


Namespace = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Default: the kubeconfig context's.")
]
Kubeconfig = Annotated[str | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file.")]
Context = Annotated[str | None, typer.Option("--context", help="Kubeconfig context.")]
Message = Annotated[str, typer.Option("--message", "-m", help="A note recorded with the decision.")]


def _run(workflow: str, step: str, approved: bool, message: str, ns: Any, kc: Any, ctx: Any) -> None:
    try:
        line = decide(workflow, step, approved, message, ns, kc, ctx)
    except ApproveError as exc:
        Console(stderr=True, highlight=False).print(f"[red]codeforge: {escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    Console(highlight=False).print(escape(line), soft_wrap=True)


def approve_command(
    workflow: Annotated[str, typer.Argument(help="The Workflow.")],
    step: Annotated[str, typer.Argument(help="Its approval step that waits.")],
    message: Message = "",
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Approve a waiting approval step (the annotation approval.codeforge.ai/STEP)."""
    _run(workflow, step, True, message, namespace, kubeconfig, context)


def reject_command(
    workflow: Annotated[str, typer.Argument(help="The Workflow.")],
    step: Annotated[str, typer.Argument(help="Its approval step that waits.")],
    message: Message = "",
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Reject a waiting approval step: it fails; only an edge like `when: '!result.approved'` routes it."""
    _run(workflow, step, False, message, namespace, kubeconfig, context)
