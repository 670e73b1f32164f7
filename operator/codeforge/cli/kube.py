"""The CLI's view of a cluster: kubeconfig like kubectl (KUBECONFIG, --kubeconfig, --context, the context's
namespace), the official `kubernetes` client (synchronous: one command, a few calls), and every failure a
user will meet turned into one `CliError` line (no cluster, CRDs missing, not found, forbidden)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from codeforge.api import agentpool
from codeforge.cli.errors import CliError

JSON = dict[str, Any]
GROUP: Final = agentpool.GROUP
VERSION: Final = agentpool.VERSION
#: (connect, read) seconds per request: an unreachable API server fails fast instead of hanging.
REQUEST_TIMEOUT: Final = (5, 30)
#: `codeforge.api.workflow.PLURAL` and `KIND`, repeated: that module loads the CEL library, which takes
#: seconds to import, and the CLI only needs the names (a unit test compares them).
WORKFLOWS: Final = "workflows"
WORKFLOW_KIND: Final = "Workflow"
KINDS: Final = {WORKFLOWS: WORKFLOW_KIND, agentpool.PLURAL: agentpool.KIND}
INSTALL_HINT: Final = "install the chart (helm install codeforge helm/codeforge) or kubectl apply -f crds/"


class NotFound(CliError):
    pass


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command looks: kubeconfig options, as kubectl takes them."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False


def _status(exc: Any) -> JSON:
    try:
        body: JSON = json.loads(exc.body or "{}")
        return body if isinstance(body, dict) else {}
    except (TypeError, ValueError):
        return {}


class Kube:
    """A connected client and the namespace commands default to."""

    def __init__(self, api_client: Any, namespace: str, host: str) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.namespace = namespace
        self.host = host
        # The client's methods return `object`: treat them as Any, and the JSON as what the API documents.
        self.custom: Any = client.CustomObjectsApi(api_client)
        self.core: Any = client.CoreV1Api(api_client)
        self.apps: Any = client.AppsV1Api(api_client)

    @classmethod
    def connect(cls, target: Target) -> Kube:
        from kubernetes import client
        from kubernetes import config as kube_config
        from kubernetes.config.config_exception import ConfigException

        config: Any = kube_config  # untyped package

        configuration = client.Configuration()
        namespace = "default"
        try:
            if (
                target.kubeconfig
                or os.environ.get("KUBECONFIG")
                or not os.environ.get("KUBERNETES_SERVICE_HOST")
            ):
                config.load_kube_config(
                    config_file=target.kubeconfig,
                    context=target.context,
                    client_configuration=configuration,
                    persist_config=False,
                )
                contexts, active = config.list_kube_config_contexts(config_file=target.kubeconfig)
                chosen = next((c for c in contexts if c["name"] == target.context), active)
                namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
            else:
                config.load_incluster_config(client_configuration=configuration)
                namespace = _in_cluster_namespace()
        except (ConfigException, OSError, TypeError) as exc:
            where = target.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise CliError(
                f"no usable kubeconfig ({where}): {exc}; set KUBECONFIG or pass --kubeconfig / --context"
            ) from None
        configuration.retries = 0  # one clear error at once, not three silent retries
        return cls(client.ApiClient(configuration), target.namespace or namespace, configuration.host)

    @contextmanager
    def calling(
        self, plural: str | None = None, name: str | None = None, namespace: str | None = None
    ) -> Iterator[None]:
        """Translate the client's exceptions into one line naming what was asked for."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            yield
        except ApiException as exc:
            raise self._api_error(exc, plural, name, namespace) from None
        except (HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise CliError(
                f"cannot reach the Kubernetes API server at {self.host}: {_short(reason)} "
                "(is the cluster up? check KUBECONFIG, --kubeconfig or --context)"
            ) from None

    def _api_error(self, exc: Any, plural: str | None, name: str | None, namespace: str | None) -> CliError:
        status = _status(exc)
        message = status.get("message") or exc.reason or "no message"
        kind = KINDS.get(plural or "", plural or "object")
        if exc.status == 404 and plural in KINDS and not (status.get("details") or {}).get("name"):
            return CliError(
                f"the {kind} resource ({plural}.{GROUP}) is not installed in this cluster: {INSTALL_HINT}"
            )
        if exc.status == 404 and name:
            return NotFound(f"{kind} {name!r} not found in namespace {namespace or self.namespace!r}")
        if exc.status == 401:
            return CliError(f"the Kubernetes API server at {self.host} refused our credentials: {message}")
        if exc.status == 403:
            return CliError(f"forbidden: {message}")
        return CliError(f"Kubernetes API: {exc.status} {exc.reason}: {_short(message)}")

    # -- custom resources ------------------------------------------------------------------------------

    def list_objects(self, plural: str, namespace: str | None) -> list[JSON]:
        """Objects of one namespace, or of all (None), sorted by namespace and name."""
        with self.calling(plural):
            if namespace is None:
                found = self.custom.list_cluster_custom_object(
                    GROUP, VERSION, plural, _request_timeout=REQUEST_TIMEOUT
                )
            else:
                found = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, _request_timeout=REQUEST_TIMEOUT
                )
        items: list[JSON] = found.get("items", [])
        return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))

    def get(self, plural: str, name: str, namespace: str | None = None) -> JSON:
        namespace = namespace or self.namespace
        with self.calling(plural, name, namespace):
            obj: JSON = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, _request_timeout=REQUEST_TIMEOUT
            )
        return obj

    def patch(self, plural: str, name: str, patch: JSON, namespace: str | None = None) -> JSON:
        """A merge patch (the client sends merge-patch+json for a dict body on custom objects)."""
        namespace = namespace or self.namespace
        with self.calling(plural, name, namespace):
            obj: JSON = self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, patch, _request_timeout=REQUEST_TIMEOUT,
                _content_type="application/merge-patch+json",
            )  # fmt: skip
        return obj

    def create(self, plural: str, body: JSON, namespace: str | None = None) -> JSON:
        namespace = namespace or self.namespace
        with self.calling(plural, None, namespace):
            obj: JSON = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, body, _request_timeout=REQUEST_TIMEOUT
            )
        return obj

    def apply(self, plural: str, body: JSON, namespace: str | None = None) -> JSON:
        """Server-side apply (as `kubectl apply --server-side`), field manager `codeforge-cli`."""
        namespace = namespace or self.namespace
        name = body["metadata"]["name"]
        with self.calling(plural, None, namespace):
            obj: JSON = self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, body, field_manager="codeforge-cli", force=True,
                _content_type="application/apply-patch+yaml", _request_timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
        return obj

    def watch(
        self, plural: str, name: str, namespace: str, resource_version: str, seconds: int
    ) -> Iterator[JSON]:
        """Each new version of one object, as the API server pushes them (no polling), for `seconds`."""
        from kubernetes import watch as kube_watch
        from kubernetes.client.exceptions import ApiException

        watcher: Any = kube_watch.Watch()  # type: ignore[no-untyped-call]
        stream = watcher.stream(
            self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural,
            field_selector=f"metadata.name={name}", resource_version=resource_version,
            timeout_seconds=seconds, _request_timeout=(REQUEST_TIMEOUT[0], seconds + 5),
        )  # fmt: skip
        with self.calling(plural, name, namespace):
            try:
                for event in stream:
                    if event.get("type") == "DELETED":
                        raise NotFound(f"{KINDS.get(plural, plural)} {name!r} was deleted")
                    obj = event.get("object")
                    if isinstance(obj, dict) and event.get("type") in ("ADDED", "MODIFIED"):
                        yield obj
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: our version is too old to watch from; the caller re-reads
                    raise

    # -- core objects ----------------------------------------------------------------------------------

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[JSON]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        with self.calling("pods", None, namespace):
            found = self.core.list_namespaced_pod(
                namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
            )
        pods: list[JSON] = self.api_client.sanitize_for_serialization(found).get("items", [])
        return pods

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        with self.calling("pods", pod, namespace):
            text: str = self.core.read_namespaced_pod_log(
                pod, namespace, container=container, _request_timeout=REQUEST_TIMEOUT
            )
        return text

    def deployments(self, labels: Mapping[str, str]) -> list[JSON]:
        """Deployments of every namespace with these labels."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        with self.calling("deployments"):
            found = self.apps.list_deployment_for_all_namespaces(
                label_selector=selector, _request_timeout=REQUEST_TIMEOUT
            )
        items: list[JSON] = self.api_client.sanitize_for_serialization(found).get("items", [])
        return items


def _in_cluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def _short(value: Any, limit: int = 300) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
