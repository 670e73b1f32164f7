"""The Helm chart (helm/codeforge), its rendered copy (manifests/) and the operator image's Dockerfile.

The chart tests run the pinned helm that hack/cluster/build.sh builds (or helm on PATH); they skip, saying so,
only when neither exists. The Redis Cluster scripts of the chart run against real local redis-servers.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.control_plane import bin_dir_for, default_cache
from codeforge.controller.config import OperatorConfig
from codeforge.testing.redis_server import free_port
from support.dockerfiles import hadolint, stages

REPO = Path(__file__).parents[2]
CHART = REPO / "helm" / "codeforge"
MANIFESTS = REPO / "manifests"
DOCKERFILE = REPO / "operator" / "Dockerfile"
RELEASE = "codeforge"
NAMESPACE = "codeforge"

Obj = dict[str, Any]

#: Every kind the chart may render, with the apiVersion it must use.
API_VERSIONS = {
    "AgentPool": "codeforge.ai/v1alpha1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "ConfigMap": "v1",
    "CustomResourceDefinition": "apiextensions.k8s.io/v1",
    "Deployment": "apps/v1",
    "Job": "batch/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "PodDisruptionBudget": "policy/v1",
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "Secret": "v1",
    "Service": "v1",
    "ServiceAccount": "v1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "StatefulSet": "apps/v1",
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def find_helm() -> Path | None:
    built = bin_dir_for(default_cache()) / "helm"
    if built.is_file() and os.access(built, os.X_OK):
        return built
    found = shutil.which("helm")
    return Path(found) if found else None


HELM = find_helm()
needs_helm = pytest.mark.skipif(
    HELM is None,
    reason="no helm binary: hack/cluster/build.sh (make cluster-build) builds the pinned one; or put helm on "
    "PATH",
)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    out = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, f"helm {' '.join(args)} failed:\n{out.stdout}{out.stderr}"
    return out


@functools.cache
def _render(sets: tuple[str, ...], include_crds: bool) -> tuple[Obj, ...]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if include_crds:
        args.append("--include-crds")
    for s in sets:
        args += ["--set", s]
    return tuple(d for d in yaml.safe_load_all(helm(*args).stdout) if d)


def render(*sets: str, include_crds: bool = False) -> list[Obj]:
    return list(_render(tuple(sets), include_crds))


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(objs: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]


def operator_env(objs: list[Obj]) -> dict[str, Any]:
    container = one(objs, "Deployment", "codeforge-operator")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


#: One operator replica without leader election.
SINGLE = ("operator.replicas=1", "operator.leaderElection.enabled=false")

MODES = [
    pytest.param((), id="defaults"),
    pytest.param(("redis.mode=standalone",), id="standalone"),
    pytest.param(
        ("redis.mode=external", "redis.external.url=rediss://redis.example.com:6380/0"), id="external"
    ),
    pytest.param(("rbac.scope=namespaced",), id="namespaced"),
    pytest.param(
        (
            "examplePools.enabled=true",
            "metrics.serviceMonitor.enabled=true",
            "metrics.agentPodMonitor.enabled=true",
            "metrics.grafanaDashboard.enabled=true",
            "metrics.prometheusRule.enabled=true",
            "operator.watchNamespaces={a,b}",
        ),
        id="everything-on",
    ),
]


# ---------------------------------------------------------------------------------------------- lint, render


@needs_helm
@pytest.mark.parametrize("sets", MODES)
def test_helm_lint_is_clean(sets: tuple[str, ...]) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    for s in sets:
        args += ["--set", s]
    out = helm(*args)
    assert "0 chart(s) failed" in out.stdout


@needs_helm
@pytest.mark.parametrize("sets", MODES)
def test_every_object_has_the_right_api_version_and_namespace(sets: tuple[str, ...]) -> None:
    objs = render(*sets, include_crds=True)
    assert objs
    for o in objs:
        kind = o["kind"]
        assert kind in API_VERSIONS, f"unexpected kind {kind}"
        assert o["apiVersion"] == API_VERSIONS[kind], f"{kind} must be {API_VERSIONS[kind]}"
        meta = o["metadata"]
        assert meta["name"]
        if kind in CLUSTER_SCOPED:
            assert "namespace" not in meta, f"{kind}/{meta['name']} is cluster-scoped"
        else:
            assert meta.get("namespace"), f"{kind}/{meta['name']} must name its namespace"
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), "two objects with the same kind, namespace and name"


@needs_helm
def test_defaults_render_the_whole_system() -> None:
    objs = render(include_crds=True)
    kinds = {o["kind"] for o in objs}
    assert kinds == {
        "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
        "RoleBinding", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "Secret",
        "ConfigMap", "StatefulSet", "Job",
    }  # fmt: skip
    crds = {o["metadata"]["name"] for o in find(objs, "CustomResourceDefinition")}
    # Leader election is on a Lease: Kopf's peering CRDs are gone.
    assert crds == {"agentpools.codeforge.ai", "workflows.codeforge.ai"}
    assert not find(objs, "AgentPool"), "example pools are off by default"
    assert not find(objs, "ServiceMonitor"), "the ServiceMonitor is opt-in"


@needs_helm
def test_operator_deployment_two_replicas_one_active_with_liveness_and_metrics() -> None:
    objs = render()
    deploy = one(objs, "Deployment", "codeforge-operator")
    assert deploy["spec"]["replicas"] == 2
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/codeforge/codeforge-operator:0.1.0", "tag defaults to appVersion"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert container["args"] == ["--all-namespaces", "--log-format=json"]
    env = operator_env(objs)
    assert env["CODEFORGE_LEADER_ELECTION"] == "true"
    assert env["CODEFORGE_LEASE_NAME"] == "codeforge-operator"
    assert (env["CODEFORGE_LEASE_DURATION"], env["CODEFORGE_LEASE_RENEW_DEADLINE"]) == ("15", "10")
    assert env["CODEFORGE_LEASE_RETRY_PERIOD"] == "2"
    assert env["CODEFORGE_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8080/healthz"
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["CODEFORGE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    pdb = one(objs, "PodDisruptionBudget", "codeforge-operator")
    assert pdb["spec"]["minAvailable"] == 1
    service = one(objs, "Service", "codeforge-operator-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]


@needs_helm
def test_the_operator_accepts_the_environment_the_chart_gives_it() -> None:
    """The chart's env feeds the operator's own parsers: OperatorConfig and the leader election's."""
    from codeforge.controller.leader import ElectionConfig
    from codeforge.controller.standby import liveness_endpoint

    for sets, url in [
        ((), "redis+cluster://codeforge-redis.codeforge.svc.cluster.local:6379?durability=replicated"),
        (
            ("redis.mode=standalone",),
            "redis://codeforge-redis.codeforge.svc.cluster.local:6379/0?durability=fsync",
        ),
        (("redis.mode=external", "redis.external.url=redis://r.example:6379/2"), "redis://r.example:6379/2"),
    ]:
        env = {k: v for k, v in operator_env(render(*sets)).items() if isinstance(v, str)}
        config = OperatorConfig.from_env(env)
        assert config.queue_url == url
        assert config.agents.queue_url == url
        assert config.agents.log_format == "json"
        if "redis.mode=external" in sets:
            assert config.agents.redis_password_secret is None, "an external Redis without a Secret"
        else:
            assert config.agents.redis_password_secret == ("codeforge-redis", "password")
        # The pod's namespace and name come from the downward API.
        election = ElectionConfig.from_env({**env, "CODEFORGE_NAMESPACE": NAMESPACE, "POD_ID": "op-1"})
        assert election.enabled
        assert (election.namespace, election.lease_name) == (NAMESPACE, "codeforge-operator")
        assert (election.lease_duration, election.renew_deadline, election.retry_period) == (15, 10, 2)
        assert election.identity.startswith("op-1_")
        assert liveness_endpoint(env, ["kopf", "run"]) == "http://0.0.0.0:8080/healthz"
    single = {k: v for k, v in operator_env(render(*SINGLE)).items() if isinstance(v, str)}
    assert not ElectionConfig.from_env(single).enabled


@needs_helm
def test_sharded_operators_are_one_deployment_per_shard_each_with_its_lease() -> None:
    """operator.shards=3: three Deployments (and PDBs) whose selectors do not overlap, each telling the
    operator its shard; the leader-election Role names each shard's Lease; the metrics Service selects all."""
    from codeforge.controller.leader import ElectionConfig

    objs = render("operator.shards=3")
    deployments = find(objs, "Deployment")
    operators = [d for d in deployments if d["metadata"]["name"].startswith("codeforge-operator")]
    assert [d["metadata"]["name"] for d in operators] == [f"codeforge-operator-{i}" for i in range(3)]
    leases = []
    for index, deploy in enumerate(operators):
        selector = deploy["spec"]["selector"]["matchLabels"]
        assert selector["codeforge.ai/shard"] == str(index)
        assert deploy["spec"]["template"]["metadata"]["labels"]["codeforge.ai/shard"] == str(index)
        assert deploy["spec"]["replicas"] == 2
        container = deploy["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        config = OperatorConfig.from_env(env)
        assert (config.shard.index, config.shard.count) == (index, 3)
        election = ElectionConfig.from_env({**env, "CODEFORGE_NAMESPACE": NAMESPACE}).for_shard(config.shard)
        leases.append(election.lease_name)
        pdb = one(objs, "PodDisruptionBudget", f"codeforge-operator-{index}")
        assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert leases == [f"codeforge-operator-{i}" for i in range(3)]
    role = one(objs, "Role", "codeforge-operator-leader-election")
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert [r["resourceNames"] for r in named] == [leases]
    service = one(objs, "Service", "codeforge-operator-metrics")
    assert "codeforge.ai/shard" not in service["spec"]["selector"]
    # Unsharded (the default): one Deployment under the operator's own name, no shard in its environment.
    env = operator_env(render())
    assert "CODEFORGE_SHARDS" not in env
    assert "CODEFORGE_SHARD" not in env


@needs_helm
def test_the_operator_wide_workflow_ttl_is_a_value_the_operator_reads() -> None:
    from codeforge.controller.workflow.expiry import TTL_ENV, default_ttl

    assert TTL_ENV not in operator_env(render())  # unset: finished runs keep their data
    assert default_ttl({}) is None
    env = operator_env(render("operator.workflowTTLSecondsAfterFinished=86400"))
    assert env[TTL_ENV] == "86400"
    assert default_ttl(env) == 86400
    assert default_ttl(operator_env(render("operator.workflowTTLSecondsAfterFinished=0"))) == 0
    for bad in ("-1", "31536001", "1.5"):
        value = f"operator.workflowTTLSecondsAfterFinished={bad}"
        out = helm("template", RELEASE, str(CHART), "--set", value, check=False)
        assert out.returncode != 0, bad
        assert "/operator/workflowTTLSecondsAfterFinished" in out.stderr, out.stderr


# ------------------------------------------------------------------------------------------- security, RBAC


@needs_helm
@pytest.mark.parametrize("sets", MODES)
def test_pods_are_non_root_with_read_only_root_filesystems(sets: tuple[str, ...]) -> None:
    specs = list(pod_specs(render(*sets)))
    assert specs
    for where, spec in specs:
        pod_ctx = spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True, where
        assert pod_ctx["runAsUser"] > 0, where
        assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in spec.get("initContainers", []) + spec["containers"]:
            ctx = c["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, f"{where}/{c['name']}"
            assert ctx["allowPrivilegeEscalation"] is False, f"{where}/{c['name']}"
            assert ctx["capabilities"]["drop"] == ["ALL"], f"{where}/{c['name']}"
            assert "add" not in ctx["capabilities"], f"{where}/{c['name']}"
            assert c.get("resources", {}).get("requests"), f"{where}/{c['name']} needs resource requests"
            assert ":" in c["image"], f"{where}: pin the image tag"
            assert not c["image"].endswith(":latest"), f"{where}: pin the image tag"


def _rules(role: Obj) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


OPERATOR_NEEDS = {
    ("codeforge.ai", "agentpools"): {"get", "list", "watch", "patch"},
    ("codeforge.ai", "workflows"): {"get", "list", "watch", "patch", "delete"},  # delete: ttlDeletesWorkflow
    ("codeforge.ai", "agentpools/status"): {"patch"},
    ("codeforge.ai", "workflows/status"): {"patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"create", "patch", "delete"},
    ("", "pods"): {"list", "watch", "patch"},
    ("", "events"): {"create"},
}


def assert_leader_election_role(objs: list[Obj]) -> None:
    """Leases in the release namespace: create, and get/update on the chart's Lease only; Events."""
    name = "codeforge-operator-leader-election"
    role = one(objs, "Role", name)
    assert role["metadata"]["namespace"] == NAMESPACE
    lease_rules = [r for r in role["rules"] if r["apiGroups"] == ["coordination.k8s.io"]]
    assert {(tuple(r.get("resourceNames", ())), tuple(sorted(r["verbs"]))) for r in lease_rules} == {
        ((), ("create",)),
        (("codeforge-operator",), ("get", "update")),
    }
    assert _rules(role)[("", "events")] == {"create"}
    binding = one(objs, "RoleBinding", name)
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"]["name"] == name
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "codeforge-operator", "namespace": NAMESPACE}
    ]


@needs_helm
def test_rbac_cluster_scope_is_one_cluster_role_without_wildcards_or_secrets() -> None:
    objs = render()
    # The only Role: leader election in the release namespace.
    assert [r["metadata"]["name"] for r in find(objs, "Role")] == ["codeforge-operator-leader-election"]
    assert_leader_election_role(objs)
    assert not find(render(*SINGLE), "Role"), "a single replica elects nothing"
    role = one(objs, "ClusterRole")
    rules = _rules(role)
    for key, verbs in OPERATOR_NEEDS.items():
        assert verbs <= rules.get(key, set()), f"the operator needs {sorted(verbs)} on {key}"
    for (group, resource), verbs in rules.items():
        assert "*" not in verbs, "no wildcards"
        assert "*" not in (group, resource), "no wildcards"
        assert resource not in ("clusterroles", "roles", "rolebindings"), f"no access to {resource}"
    # Secrets: only the pools' Redis password Secrets it makes (agent.redisIdentity), never listed or watched.
    assert rules[("", "secrets")] == {"get", "create", "delete"}
    without = _rules(one(render("agent.redisIdentity.enabled=false"), "ClusterRole"))
    assert ("", "secrets") not in without
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "codeforge-operator", "namespace": NAMESPACE}
    ]


@needs_helm
def test_rbac_namespaced_scope_grants_nothing_cluster_wide() -> None:
    objs = render("rbac.scope=namespaced", "operator.watchNamespaces={team-a,team-b}")
    assert not find(objs, "ClusterRole")
    assert not find(objs, "ClusterRoleBinding")
    assert_leader_election_role(objs)
    roles = find(objs, "Role", "codeforge-operator")
    assert {r["metadata"]["namespace"] for r in roles} == {"team-a", "team-b"}
    for role in roles:
        rules = _rules(role)
        for key, verbs in OPERATOR_NEEDS.items():
            assert verbs <= rules.get(key, set())
        assert ("", "namespaces") not in rules
    bindings = find(objs, "RoleBinding", "codeforge-operator")
    assert {b["metadata"]["namespace"] for b in bindings} == {"team-a", "team-b"}
    container = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["--namespace=team-a", "--namespace=team-b"]


@needs_helm
def test_rbac_namespaced_scope_defaults_to_the_release_namespace() -> None:
    objs = render("rbac.scope=namespaced")
    assert [r["metadata"]["namespace"] for r in find(objs, "Role", "codeforge-operator")] == [NAMESPACE]
    assert operator_env(objs)["CODEFORGE_WATCH_NAMESPACES"] == NAMESPACE


@needs_helm
def test_network_policies_restrict_the_operator_and_redis() -> None:
    objs = render()
    operator_np = one(objs, "NetworkPolicy", "codeforge-operator")
    assert operator_np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert operator_np["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    redis_np = one(objs, "NetworkPolicy", "codeforge-redis")
    ports = {p["port"] for rule in redis_np["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {6379, 16379}
    agents = [f for rule in redis_np["spec"]["ingress"] for f in rule["from"] if "namespaceSelector" in f]
    assert agents[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "codeforge-agent"
    assert not find(render("networkPolicy.enabled=false"), "NetworkPolicy")


# ----------------------------------------------------------------------------------------------------- Redis


@needs_helm
def test_redis_cluster_mode_is_a_six_pod_statefulset_with_volumes_aof_and_an_idempotent_init_job() -> None:
    objs = render()
    sts = one(objs, "StatefulSet", "codeforge-redis")
    assert sts["spec"]["replicas"] == 6
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == "codeforge-redis-headless"
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "redis:7.2"
    assert {p["containerPort"] for p in container["ports"]} == {6379, 16379}
    secret_refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secret_refs == {"codeforge-redis"}
    config = one(objs, "ConfigMap", "codeforge-redis")["data"]["redis.conf"]
    for line in (
        "appendonly yes",
        "cluster-enabled yes",
        "cluster-config-file /data/nodes.conf",
        "dir /data",
    ):
        assert line in config.splitlines()
    assert not [line for line in config.splitlines() if line.startswith(("requirepass", "masterauth"))], (
        "the password stays in the Secret"
    )
    headless = one(objs, "Service", "codeforge-redis-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    secret = one(objs, "Secret", "codeforge-redis")
    assert len(secret["data"]["password"]) >= 40
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    job = one(objs, "Job", "codeforge-redis-cluster-init")
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert hooks == ["post-install", "post-upgrade"]
    assert "--cluster create" in one(objs, "ConfigMap")["data"]["form-cluster.sh"]
    assert "--cluster-replicas" in one(objs, "ConfigMap")["data"]["form-cluster.sh"]
    assert one(objs, "PodDisruptionBudget", "codeforge-redis")["spec"]["maxUnavailable"] == 1


DURABILITY = [
    # (--set values, the servers' appendfsync or None without servers, the queue URL's ?durability=)
    pytest.param((), "always", "replicated", id="default-cluster-with-replicas"),
    pytest.param(("redis.mode=standalone",), "always", "fsync", id="default-standalone"),
    pytest.param(
        ("redis.cluster.replicasPerMaster=0", "redis.cluster.nodes=3"), "always", "fsync", id="no-replicas"
    ),
    pytest.param(("redis.durability=fast",), "everysec", "fast", id="fast"),
    pytest.param(("redis.durability=fsync",), "always", "fsync", id="fsync"),
    pytest.param(
        ("redis.mode=external", "redis.external.url=redis://r.example.com:6379/0?ssl_cert_reqs=none"),
        None,
        None,
        id="external-as-its-url-says",
    ),
    pytest.param(
        (
            "redis.mode=external",
            "redis.external.url=redis://r.example.com:6379/0",
            "redis.durability=replicated",
        ),
        None,
        "replicated",
        id="external-explicit",
    ),
]


@needs_helm
@pytest.mark.parametrize(("sets", "appendfsync", "durability"), DURABILITY)
def test_redis_durability_sets_the_servers_fsync_and_the_queue_url(
    sets: tuple[str, ...], appendfsync: str | None, durability: str | None
) -> None:
    objs = render(*sets)
    url = operator_env(objs)["CODEFORGE_QUEUE_URL"]
    if durability is None:
        assert "durability=" not in url
    else:
        assert url.endswith(("?", "&")[url.count("?") > 1] + f"durability={durability}")
    if appendfsync is None:
        assert not find(objs, "ConfigMap")
    else:
        config = one(objs, "ConfigMap", "codeforge-redis")["data"]["redis.conf"].splitlines()
        assert "appendonly yes" in config
        assert f"appendfsync {appendfsync}" in config


@needs_helm
def test_redis_durability_replicated_without_replicas_is_refused() -> None:
    out = helm(
        "template", RELEASE, str(CHART),
        "--set", "redis.mode=standalone", "--set", "redis.durability=replicated",
        check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "redis.durability replicated needs replicas" in out.stderr


@needs_helm
def test_redis_existing_secret_replaces_the_generated_one() -> None:
    objs = render("redis.auth.existingSecret=my-redis", "redis.auth.existingSecretPasswordKey=pw")
    assert not find(objs, "Secret")
    env = operator_env(objs)
    assert env["CODEFORGE_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "my-redis", "key": "pw"}}
    assert env["CODEFORGE_AGENT_REDIS_PASSWORD_SECRET"] == "my-redis/pw"


@needs_helm
def test_redis_standalone_mode_is_one_pod_without_an_init_job() -> None:
    objs = render("redis.mode=standalone")
    sts = one(objs, "StatefulSet", "codeforge-redis")
    assert sts["spec"]["replicas"] == 1
    assert not find(objs, "Job")
    assert not find(objs, "PodDisruptionBudget", "codeforge-redis")
    config = one(objs, "ConfigMap")["data"]
    assert "cluster-enabled" not in config["redis.conf"]
    assert "form-cluster.sh" not in config
    assert "appendonly yes" in config["redis.conf"]


@needs_helm
def test_redis_external_mode_deploys_no_redis() -> None:
    objs = render(
        "redis.mode=external",
        "redis.external.url=redis+cluster://redis.example.com:6379",
        "redis.external.existingSecret=ext-redis",
    )
    assert not find(objs, "StatefulSet")
    assert not find(objs, "Job")
    assert not find(objs, "Secret")
    assert not find(objs, "ConfigMap")
    assert not find(objs, "NetworkPolicy", "codeforge-redis")
    env = operator_env(objs)
    assert env["CODEFORGE_QUEUE_URL"] == "redis+cluster://redis.example.com:6379"
    assert env["CODEFORGE_AGENT_REDIS_PASSWORD_SECRET"] == "ext-redis/password"


# ---------------------------------------------------------------------------------------- pools, monitoring


@needs_helm
def test_example_pools_are_agent_pools_with_the_agent_defaults() -> None:
    objs = render("examplePools.enabled=true", "agent.image.tag=dev")
    pools = {p["metadata"]["name"]: p for p in find(objs, "AgentPool")}
    assert set(pools) == {"research", "debate", "implementation", "testing", "review"}
    crd = next(
        d
        for d in yaml.safe_load_all((CHART / "crds" / "codeforge.ai_agentpools.yaml").read_text())
        if d and d["kind"] == "CustomResourceDefinition"
    )
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for name, pool in pools.items():
        spec = pool["spec"]
        assert spec["image"] == "ghcr.io/codeforge/codeforge-agent:dev"
        assert spec["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
        assert set(schema["required"]) <= set(spec), f"{name} lacks a required field"
        assert set(spec) <= set(schema["properties"]), f"{name} has fields the CRD does not know"
    assert pools["research"]["spec"]["autoscaling"] == {
        "minReplicas": 3,
        "maxReplicas": 500,
        "targetTasksPerAgent": 1,
    }


@needs_helm
def test_service_monitor_is_optional() -> None:
    objs = render("metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom")
    monitor = one(objs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = one(objs, "Service", "codeforge-operator-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


# -------------------------------------------------------------------------------------------------- schema


@needs_helm
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("redis.mode=bogus",), "at '/redis/mode': value must be one of 'cluster', 'standalone', 'external'"),
        (("rbac.scope=everything",), "at '/rbac/scope': value must be one of 'cluster', 'namespaced'"),
        (("operator.replica=3",), "additional properties 'replica' not allowed"),
        (("redis.mode=external",), "at '/redis/external/url'"),
        (("redis.mode=external", "redis.external.url=http://x"), "does not match pattern"),
        (("operator.logFormat=yaml",), "at '/operator/logFormat'"),
        (("redis.cluster.nodes=4",), "redis.cluster.nodes (4) must be a multiple of"),
        (
            ("operator.leaderElection.enabled=false",),
            "operator.replicas > 1 needs operator.leaderElection.enabled",
        ),
        (("operator.leaderElection.renewDeadline=15",), "renewDeadline must be less than leaseDuration"),
        (("operator.leaderElection.retryPeriod=9",), "renewDeadline must be more than 1.2 x retryPeriod"),
        (("operator.leaderElection.leaseDuration=1.5",), "at '/operator/leaderElection/leaseDuration'"),
        (("operator.shards=0",), "at '/operator/shards': minimum: got 0, want 1"),
        (("operator.shards=65",), "at '/operator/shards': maximum: got 65, want 64"),
    ],
)
def test_bad_values_fail_with_a_clear_message(sets: tuple[str, ...], message: str) -> None:
    args = ["template", RELEASE, str(CHART)]
    for s in sets:
        args += ["--set", s]
    out = helm(*args, check=False)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_values_schema_is_strict_draft_07() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert "additionalProperties" in node, f"{path} must say whether unknown keys are allowed"
            for key, value in node.items():
                walk(value, f"{path}/{key}")

    walk(schema, "")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


def test_chart_pins_its_app_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"


# ------------------------------------------------------------------------------------------ manifests drift


@needs_helm
def test_manifests_equal_a_fresh_render_of_the_chart() -> None:
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "sync-chart.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "HELM": str(HELM)},
    )
    assert out.returncode == 0, "manifests/ drifted; run hack/sync-chart.sh\n" + out.stdout + out.stderr


def test_manifests_kustomization_lists_its_files() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (MANIFESTS / resource).exists(), resource
    rendered = [d for d in yaml.safe_load_all((MANIFESTS / "codeforge.yaml").read_text()) if d]
    assert not [d for d in rendered if d["kind"] == "Secret"], "manifests/ must not ship a password"


# ------------------------------------------------------------------------------------- operator Dockerfile


def test_operator_dockerfile_passes_hadolint() -> None:
    out = hadolint(DOCKERFILE)
    assert out.returncode == 0, out.stdout + out.stderr


def test_operator_image_is_multi_stage_non_root_and_runs_kopf_with_liveness() -> None:
    parts = stages(DOCKERFILE)
    assert len(parts) >= 2, "multi-stage: build tools stay in the builder"
    final = parts[-1]
    assert "\nUSER 10001" in final
    for tool in ("gcc", "build-essential", "g++", "apt-get install", "pip install", "uv "):
        assert tool not in final, f"{tool} must not be in the final stage"
    assert "PYTHONDONTWRITEBYTECODE=1" in final
    assert (
        'ENTRYPOINT ["kopf", "run", "-m", "codeforge.controller", "--liveness=http://0.0.0.0:8080/healthz"]'
        in final
    )


# ---------------------------------------------------------------------- Redis Cluster scripts on real Redis


@needs_helm
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (make deps)")
def test_redis_scripts_form_a_cluster_once_and_are_safe_to_run_again(tmp_path: Path) -> None:
    """start.sh and form-cluster.sh from the chart's ConfigMap, run on six local redis-servers."""
    data = one(render(), "ConfigMap", "codeforge-redis")["data"]
    (tmp_path / "redis.conf").write_text(data["redis.conf"].replace("dir /data", f"dir {tmp_path}"))
    (tmp_path / "start.sh").write_text(data["start.sh"])
    (tmp_path / "form-cluster.sh").write_text(data["form-cluster.sh"])
    password = "test-password"
    ports = [free_port() for _ in range(6)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, port in enumerate(ports):
            node = tmp_path / f"node{i}"
            node.mkdir()
            env = {
                **os.environ,
                "REDIS_PASSWORD": password,
                "POD_NAME": f"codeforge-redis-{i}",
                "HEADLESS_SERVICE": "localhost",
                "RUNTIME_CONF": str(node / "runtime.conf"),
                "REDIS_CONF": str(tmp_path / "redis.conf"),
            }
            args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(node)]
            args += ["--cluster-config-file", str(node / "nodes.conf"), "--logfile", str(node / "redis.log")]
            procs.append(subprocess.Popen(["sh", str(tmp_path / "start.sh"), *args], env=env))
        cli_env = {**os.environ, "REDISCLI_AUTH": password}

        def cli(port: int, *args: str) -> str:
            return subprocess.run(
                ["redis-cli", "--no-auth-warning", "-p", str(port), *args],
                capture_output=True, text=True, env=cli_env, timeout=10,
            ).stdout  # fmt: skip

        deadline = time.monotonic() + 20
        while not all(cli(p, "ping").strip() == "PONG" for p in ports):
            assert time.monotonic() < deadline, "the redis-servers did not start"
            time.sleep(0.1)
        assert "requirepass" in (tmp_path / "node0" / "runtime.conf").read_text()
        no_auth = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
        anonymous = subprocess.run(
            ["redis-cli", "-p", str(ports[0]), "ping"],
            capture_output=True,
            text=True,
            env=no_auth,
            timeout=10,
        )
        assert "NOAUTH" in anonymous.stdout + anonymous.stderr, "the password must be required"

        form_env = {**cli_env, "NODE_ADDRESSES": " ".join(f"127.0.0.1:{p}" for p in ports)}
        form = ["sh", str(tmp_path / "form-cluster.sh")]
        first = subprocess.run(form, capture_output=True, text=True, env=form_env, timeout=120)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "the cluster is formed" in first.stdout
        info = cli(ports[0], "cluster", "info")
        assert "cluster_state:ok" in info
        assert "cluster_known_nodes:6" in info
        assert "cluster_size:3" in info, "three masters serve the slots, each with one replica"
        assert "codeforge-redis-" in cli(ports[0], "cluster", "shards"), "nodes announce their DNS names"
        assert cli(ports[0], "config", "get", "appendonly").split() == ["appendonly", "yes"]

        again = subprocess.run(form, capture_output=True, text=True, env=form_env, timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already formed" in again.stdout
        assert "creating the cluster" not in again.stdout
        assert "cluster_state:ok" in cli(ports[0], "cluster", "info")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


TENANTS = (
    "tenants.namespaces[0].namespace=team-a",
    "tenants.namespaces[0].subjects[0].kind=Group",
    "tenants.namespaces[0].subjects[0].name=team-a-devs",
    "tenants.namespaces[0].subjects[0].apiGroup=rbac.authorization.k8s.io",
    "tenants.namespaces[1].namespace=team-b",
    "tenants.namespaces[1].subjects[0].kind=User",
    "tenants.namespaces[1].subjects[0].name=bob",
    "tenants.namespaces[1].subjects[0].apiGroup=rbac.authorization.k8s.io",
)


@needs_helm
def test_tenants_read_secrets_of_their_own_namespace_only() -> None:
    """The tenant ClusterRole is bound by RoleBindings in each team's namespace, never cluster-wide, so a
    team reads the Secrets (its pools' Redis passwords included) of its namespace and no other."""
    objs = render(*TENANTS)
    role = one(objs, "ClusterRole", "codeforge-tenant")
    rules = _rules(role)
    assert {"get", "list"} <= rules[("", "secrets")]
    assert {"create", "delete"} <= rules[("codeforge.ai", "workflows")]
    assert {"create", "delete"} <= rules[("codeforge.ai", "agentpools")]
    for (group, resource), verbs in rules.items():
        assert "*" not in verbs, "no wildcards"
        assert "*" not in (group, resource), "no wildcards"
        assert resource not in ("namespaces", "clusterroles", "roles", "rolebindings", "nodes")
    for binding in find(objs, "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] != "codeforge-tenant", "never bound cluster-wide"
    bindings = [b for b in find(objs, "RoleBinding") if b["roleRef"]["name"] == "codeforge-tenant"]
    by_namespace = {b["metadata"]["namespace"]: b["subjects"] for b in bindings}
    assert by_namespace == {
        "team-a": [{"kind": "Group", "name": "team-a-devs", "apiGroup": "rbac.authorization.k8s.io"}],
        "team-b": [{"kind": "User", "name": "bob", "apiGroup": "rbac.authorization.k8s.io"}],
    }
    assert not [o for o in render() if o["metadata"]["name"] == "codeforge-tenant"], "none without tenants"


@needs_helm
def test_the_operator_gives_pools_their_own_redis_identity_by_default() -> None:
    env = operator_env(render())
    assert env["CODEFORGE_AGENT_REDIS_ACL"] == "true"
    env = operator_env(render("agent.redisIdentity.extraKeyPatterns={cf:rl:*}"))
    assert env["CODEFORGE_AGENT_REDIS_ACL_KEYS"] == "cf:rl:*"
    assert operator_env(render("agent.redisIdentity.enabled=false"))["CODEFORGE_AGENT_REDIS_ACL"] == "false"


@needs_helm
def test_the_platforms_fleet_rate_limits_reach_the_operator() -> None:
    from codeforge.controller.config import OperatorConfig
    from codeforge.controller.ratelimits import FLEET_ENV

    assert FLEET_ENV not in operator_env(render())
    env = operator_env(
        render(
            "rateLimits.fleet[0].key=openai/gpt-4.1",
            "rateLimits.fleet[0].requestsPerMinute=500",
            "rateLimits.fleet[0].tokensPerMinute=30000",
        )
    )
    fleet = OperatorConfig.from_env({FLEET_ENV: env[FLEET_ENV]}).agents.fleet_rate_limits
    assert fleet["openai/gpt-4.1"].numbers() == (500, 30000, 1.0)
    with pytest.raises(AssertionError, match="schema"):  # the values schema refuses a malformed entry
        render("rateLimits.fleet[0].rpm=5")
