"""The Workflow shards (`controller/sharding.py`): the API server's hash, ranges that cover the hash space
once, the configuration's errors, one Lease per shard, and the handlers' filters.

That the API server splits real uids the same way is tests/e2e/test_operator_shards.py."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import kopf
import pytest

from codeforge.controller import kopf_settings, services
from codeforge.controller.env import ConfigError
from codeforge.controller.leader import ElectionConfig
from codeforge.controller.sharding import MAX_SHARDS, SPACE, Refusal, Shard, fnv1a64
from codeforge.controller.workflow import handlers as workflow_handlers


@pytest.mark.parametrize(
    ("value", "digest"),
    [  # Go's hash/fnv New64a, printed by a Go program (what the API server's shard selector hashes with)
        ("", 0xCBF29CE484222325),
        ("a", 0xAF63DC4C8601EC8C),
        ("0b6c2f4e-8a1d-4c1e-9f3a-2d5e7b9c1a3f", 0x3B8A865A7C0C073D),
        ("ünï", 0x8406649DFD5E4E56),  # UTF-8 bytes, not code points
    ],
)
def test_the_hash_is_fnv1a_64_as_the_api_server_computes_it(value: str, digest: int) -> None:
    assert fnv1a64(value) == digest


@pytest.mark.parametrize("count", [1, 2, 3, 7, MAX_SHARDS])
def test_the_ranges_cover_the_hash_space_once(count: int) -> None:
    shards = [Shard(index=i, count=count) for i in range(count)]
    assert shards[0].bounds[0] == 0
    assert shards[-1].bounds[1] == SPACE
    for left, right in itertools.pairwise(shards):
        assert left.bounds[1] == right.bounds[0]
    for uid in [str(uuid.uuid4()) for _ in range(500)]:
        assert sum(shard.owns(uid) for shard in shards) == 1


def test_a_single_shard_owns_everything_and_selects_nothing_special() -> None:
    shard = Shard()
    assert not shard.sharded
    assert shard.runs_pools
    assert shard.owns(str(uuid.uuid4()))


def test_selectors_use_the_api_servers_16_digit_bounds() -> None:
    assert [Shard(index=i, count=2).selector() for i in range(2)] == [
        "shardRange(object.metadata.uid, '0x0000000000000000', '0x8000000000000000')",
        "shardRange(object.metadata.uid, '0x8000000000000000', '0x10000000000000000')",
    ]
    assert Shard(index=1, count=3).selector() == (
        "shardRange(object.metadata.uid, '0x5555555555555555', '0xaaaaaaaaaaaaaaaa')"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CODEFORGE_SHARDS": "0"}, "CODEFORGE_SHARDS='0': expected a whole number of at least 1"),
        ({"CODEFORGE_SHARDS": "two"}, "CODEFORGE_SHARDS='two'"),
        ({"CODEFORGE_SHARDS": "65"}, "CODEFORGE_SHARDS=65: expected 1 to 64"),
        ({"CODEFORGE_SHARDS": "2", "CODEFORGE_SHARD": "2"}, "CODEFORGE_SHARD=2: expected 0 to 1"),
        (
            {"CODEFORGE_SHARDS": "2", "CODEFORGE_SHARD": "-1"},
            "CODEFORGE_SHARD='-1': expected the shard's index",
        ),
        ({"CODEFORGE_SHARD": "1"}, "CODEFORGE_SHARD=1: expected 0 to 0 (CODEFORGE_SHARDS=1)"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Shard.from_env(env)
    assert message in str(caught.value)


def test_settings_from_the_environment() -> None:
    assert Shard.from_env({}) == Shard(index=0, count=1)
    assert Shard.from_env({"CODEFORGE_SHARDS": " 4 ", "CODEFORGE_SHARD": "3"}) == Shard(index=3, count=4)
    # What a process is given to be a shard is what it reads back.
    assert Shard().environment() == {}
    assert Shard.from_env(Shard(index=2, count=5).environment()) == Shard(index=2, count=5)


def test_each_shard_elects_on_its_own_lease() -> None:
    election = ElectionConfig.from_env({"CODEFORGE_LEASE_NAME": "ops", "CODEFORGE_NAMESPACE": "cf"})
    assert election.for_shard(Shard()).lease_name == "ops"
    assert election.for_shard(Shard(index=2, count=3)).lease_name == "ops-2"


def test_kopf_asks_the_api_server_for_the_shards_workflows_only() -> None:
    settings = kopf.OperatorSettings()
    kopf_settings.configure(settings, Shard())
    assert dict(settings.watching.shard_selectors) == {}
    shard = Shard(index=1, count=2)
    kopf_settings.configure(settings, shard)
    workflows = kopf.Resource("codeforge.ai", "v1alpha1", "workflows", kind="Workflow", namespaced=True)
    pools = kopf.Resource("codeforge.ai", "v1alpha1", "agentpools", kind="AgentPool", namespaced=True)
    assert settings.watching.shard_selectors.collect(workflows) == [shard.selector()]
    assert settings.watching.shard_selectors.collect(pools) == []


def _meta(uid: str) -> Any:
    return kopf.Meta(kopf.Body({"metadata": {"uid": uid, "name": "w", "namespace": "n"}}))


def test_the_workflow_handlers_take_their_shards_workflows_and_stop_on_another_shards(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    uids = [str(uuid.uuid4()) for _ in range(64)]
    assert all(workflow_handlers.owned(meta=_meta(uid)) for uid in uids)  # unsharded: everything
    stops: list[bool] = []
    for index in range(3):
        shard = Shard(index=index, count=3)
        monkeypatch.setattr(workflow_handlers, "CONFIG", dataclasses.replace(services.CONFIG, shard=shard))
        refuse = Refusal(stop=lambda: stops.append(True))
        monkeypatch.setattr(workflow_handlers, "REFUSE", refuse)
        mine = [uid for uid in uids if workflow_handlers.owned(meta=_meta(uid))]
        assert mine == [uid for uid in uids if shard.owns(uid)]
        # Any other shard's uid: the API server did not filter; the shard stops once, saying why.
        assert refuse.stopped
    assert stops == [True, True, True]
    assert "Sharding needs Kubernetes 1.36+ with the ShardedListAndWatch feature gate" in caplog.text
    assert "shard 2 of 3 received Workflow n/w, which is another shard's" in caplog.text


SHOW_HANDLERS = """
import kopf, codeforge.controller
registry = kopf.get_default_registry()
plurals = {h.selector.plural or h.selector.any_name for r in (registry._changing, registry._spawning,
           registry._indexing, registry._watching) for h in r.get_all_handlers()}
print(sorted(p for p in plurals if p))
"""


@pytest.mark.parametrize(
    ("shard", "kinds"), [("0", ["agentpools", "deployments", "workflows"]), ("1", ["workflows"])]
)
def test_only_shard_0_registers_the_agentpool_handlers(shard: str, kinds: list[str]) -> None:
    """A shard that registered them would watch the pools and take shard 0's finalizer off them."""
    env = {**os.environ, "CODEFORGE_SHARDS": "2", "CODEFORGE_SHARD": shard}
    out = subprocess.run(
        [sys.executable, "-c", SHOW_HANDLERS], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == repr(kinds)


async def test_each_shard_writes_its_share_of_the_status_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """CODEFORGE_STATUS_WRITES_PER_SECOND caps the API server's load from all shards together."""
    monkeypatch.setenv("CODEFORGE_STATUS_WRITES_PER_SECOND", "20")
    for count, rate in [(1, 20.0), (4, 5.0)]:
        shard = Shard(index=0, count=count)
        monkeypatch.setattr(workflow_handlers, "CONFIG", dataclasses.replace(services.CONFIG, shard=shard))
        memo = kopf.Memo()
        start: Any = workflow_handlers.start_workflows  # the plain coroutine under Kopf's decorator
        await start(memo=memo)
        try:
            assert memo.workflows.writer.bucket.rate == rate
        finally:
            await memo.workflows.close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CODEFORGE_SHARDS": "2", "CODEFORGE_SHARD": "5"}, "CODEFORGE_SHARD=5: expected 0 to 1"),
        ({"CODEFORGE_LEASE_DURATION": "x"}, "CODEFORGE_LEASE_DURATION='x': expected whole seconds"),
    ],
)
@pytest.mark.parametrize(
    "entrypoint", [("codeforge", "operator"), ("kopf", "run", "-m", "codeforge.controller")]
)
def test_the_operator_refuses_a_bad_setting_without_a_traceback(
    env: dict[str, str], message: str, entrypoint: tuple[str, ...]
) -> None:
    """`codeforge operator`, and `kopf run -m codeforge.controller` (the image's entrypoint)."""
    command = [str(Path(sys.executable).with_name(entrypoint[0])), *entrypoint[1:]]
    out = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("codeforge operator: ")
    assert message in out.stderr
    assert "Traceback" not in out.stderr
