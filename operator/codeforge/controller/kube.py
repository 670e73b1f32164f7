"""A small async Kubernetes REST client for the few calls the reconcilers make: get, create, patch, list.

Kopf keeps its own API access private, and the official client is synchronous; this one rides on aiohttp
and reads its credentials from the `kubernetes` client's configuration, which Kopf's login
(`login_via_client`: in-cluster service account, else kubeconfig) fills in before any handler runs.
The bearer token is read per request, so rotated service-account tokens are picked up.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp

JSON = dict[str, Any]
MERGE_PATCH: Final = "application/merge-patch+json"
REQUEST_TIMEOUT: Final = aiohttp.ClientTimeout(total=30)


class KubeApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        """Conflicts, throttling and server errors pass; anything else is our (or the spec's) fault."""
        return self.status in (409, 429) or self.status >= 500


class NotFoundError(KubeApiError):
    pass


@dataclass(frozen=True, slots=True)
class Kind:
    """Where a kind lives in the REST API."""

    group_version: str  # "v1", "apps/v1", "policy/v1"
    plural: str

    def path(self, namespace: str, name: str | None = None) -> str:
        prefix = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        path = f"{prefix}/namespaces/{quote(namespace)}/{self.plural}"
        return f"{path}/{quote(name)}" if name else path


DEPLOYMENTS: Final = Kind("apps/v1", "deployments")
SERVICES: Final = Kind("v1", "services")
PODS: Final = Kind("v1", "pods")
PDBS: Final = Kind("policy/v1", "poddisruptionbudgets")
LEASES: Final = Kind("coordination.k8s.io/v1", "leases")
EVENTS: Final = Kind("v1", "events")
SECRETS: Final = Kind("v1", "secrets")
AGENTPOOLS: Final = Kind("codeforge.ai/v1alpha1", "agentpools")


def kind_of(body: Mapping[str, Any]) -> Kind:
    known = {("apps/v1", "Deployment"): DEPLOYMENTS, ("v1", "Service"): SERVICES, ("v1", "Pod"): PODS}
    known[("policy/v1", "PodDisruptionBudget")] = PDBS
    known[("coordination.k8s.io/v1", "Lease")] = LEASES
    known[("v1", "Event")] = EVENTS
    known[("v1", "Secret")] = SECRETS
    return known[(body["apiVersion"], body["kind"])]


class KubeApi:
    def __init__(self, server: str, session: aiohttp.ClientSession, token: Any = None) -> None:
        self._server = server.rstrip("/")
        self._session = session
        self._token = token  # a zero-argument callable returning "Bearer ..." or None

    @classmethod
    def from_kubernetes_config(cls, configuration: Any = None) -> KubeApi:
        """Credentials from the `kubernetes` client's default configuration (filled by Kopf's login), or from
        the given `kubernetes.client.Configuration` (its token is then read from it, not the default)."""
        from kubernetes.client import Configuration

        config = Configuration.get_default_copy() if configuration is None else configuration
        context: ssl.SSLContext | bool = False
        if config.host.startswith("https"):
            context = ssl.create_default_context(cafile=config.ssl_ca_cert) if config.verify_ssl else False
            if isinstance(context, ssl.SSLContext) and config.cert_file:
                context.load_cert_chain(config.cert_file, config.key_file)

        def token() -> str | None:
            # The default configuration itself, not a copy: its refresh hook re-reads a rotated token file
            # in place, and `get_default_copy` deep-copies the whole configuration on every request (5 % of
            # the operator's CPU with thousands of Workflows).
            current = Configuration.get_default() if configuration is None else configuration
            value: str | None = current.get_api_key_with_prefix(
                "BearerToken"
            ) or current.get_api_key_with_prefix("authorization")
            return value

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), timeout=REQUEST_TIMEOUT)
        return cls(config.host, session, token)

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        body: JSON | None = None,
        params: Mapping[str, str] | None = None,
        decode: bool = True,
    ) -> JSON:
        headers = {"Accept": "application/json"}
        if self._token is not None and (token := self._token()):
            headers["Authorization"] = token if " " in token else f"Bearer {token}"
        data = None
        if body is not None:
            headers["Content-Type"] = MERGE_PATCH if method == "PATCH" else "application/json"
            data = json.dumps(body)
        async with self._session.request(
            method, self._server + path, data=data, headers=headers, params=params
        ) as response:
            text = await response.text()
            if response.status >= 400:
                try:
                    status: JSON = json.loads(text)
                except ValueError:
                    status = {}
                error = NotFoundError if response.status == 404 else KubeApiError
                raise error(
                    response.status, status.get("reason", response.reason or ""), status.get("message", text)
                )
            result: JSON = json.loads(text) if text and decode else {}
            return result

    async def get(self, kind: Kind, namespace: str, name: str) -> JSON | None:
        try:
            return await self._request("GET", kind.path(namespace, name))
        except NotFoundError:
            return None

    async def create(self, body: JSON, kind: Kind | None = None) -> JSON:
        """POST the object; `kind` for kinds `kind_of` does not know (custom resources)."""
        meta = body["metadata"]
        return await self._request("POST", (kind or kind_of(body)).path(meta["namespace"]), body)

    async def replace(self, body: JSON) -> JSON:
        """PUT the whole object: with `metadata.resourceVersion` set, the API server refuses (409) a write
        based on an outdated read (optimistic concurrency)."""
        meta = body["metadata"]
        return await self._request("PUT", kind_of(body).path(meta["namespace"], meta["name"]), body)

    async def patch(self, kind: Kind, namespace: str, name: str, patch: JSON, *, result: bool = True) -> JSON:
        """An RFC 7386 merge patch: lists (containers, env) are replaced whole, so stray entries go. With
        `result=False` the object the server returns is not decoded ({} instead): the status writer sends
        thousands of patches and reads none of them."""
        return await self._request("PATCH", kind.path(namespace, name), patch, decode=result)

    async def delete(self, kind: Kind, namespace: str, name: str) -> None:
        try:
            await self._request("DELETE", kind.path(namespace, name))
        except NotFoundError:
            pass

    async def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[JSON]:
        """Objects carrying all `labels` (also checked here, for API emulators that ignore selectors)."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        result = await self._request("GET", kind.path(namespace), params={"labelSelector": selector})
        items: list[JSON] = result.get("items", [])
        return [
            item
            for item in items
            if all(item.get("metadata", {}).get("labels", {}).get(k) == v for k, v in labels.items())
        ]
