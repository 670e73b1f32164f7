"""Leader election's settings, the standby's liveness endpoint and the order of its Kopf handlers.

The election itself (acquire, renew, take over, release) runs against a real API server in
tests/e2e/test_leader_election.py.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime, timedelta, timezone

import pytest

from codeforge.controller.env import ConfigError
from codeforge.controller.kstatus import micro_time
from codeforge.controller.leader import ElectionConfig
from codeforge.controller.standby import StandbyProbe, liveness_endpoint
from codeforge.testing.redis_server import free_port


def test_defaults_are_controller_runtime_timings_and_election_is_off() -> None:
    config = ElectionConfig.from_env({"POD_ID": "op-1", "CODEFORGE_NAMESPACE": "cf"})
    assert not config.enabled
    assert (config.lease_duration, config.renew_deadline, config.retry_period) == (15, 10.0, 2.0)
    assert (config.namespace, config.lease_name) == ("cf", "codeforge-operator")
    # The pod name, then a random suffix: a restarted container is a new candidate.
    assert config.identity.startswith("op-1_")
    assert config.identity != ElectionConfig.from_env({"POD_ID": "op-1"}).identity


def test_settings_from_the_environment() -> None:
    config = ElectionConfig.from_env(
        {
            "CODEFORGE_LEADER_ELECTION": "true",
            "CODEFORGE_LEASE_NAME": "cf-leader",
            "CODEFORGE_LEASE_NAMESPACE": "ops",
            "CODEFORGE_NAMESPACE": "ignored",
            "CODEFORGE_LEASE_DURATION": "6",
            "CODEFORGE_LEASE_RENEW_DEADLINE": "4",
            "CODEFORGE_LEASE_RETRY_PERIOD": "0.5",
        }
    )
    assert config.enabled
    assert (config.namespace, config.lease_name) == ("ops", "cf-leader")
    assert (config.lease_duration, config.renew_deadline, config.retry_period) == (6, 4.0, 0.5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CODEFORGE_LEADER_ELECTION": "maybe"}, "CODEFORGE_LEADER_ELECTION='maybe': use true or false"),
        ({"CODEFORGE_LEASE_DURATION": "7.5"}, "CODEFORGE_LEASE_DURATION='7.5': expected whole seconds"),
        ({"CODEFORGE_LEASE_DURATION": "10"}, "CODEFORGE_LEASE_DURATION=10 must be greater than"),
        (
            {"CODEFORGE_LEASE_RETRY_PERIOD": "9"},
            "RENEW_DEADLINE=10.0 must be greater than 1.2",
        ),
        (
            {"CODEFORGE_LEASE_RENEW_DEADLINE": "-1"},
            "RENEW_DEADLINE='-1': must be greater than 0",
        ),
        ({"CODEFORGE_LEASE_NAME": "Leader_1"}, "CODEFORGE_LEASE_NAME='Leader_1': use a DNS name"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ElectionConfig.from_env(env)
    assert message in str(caught.value)


def test_the_standby_finds_the_liveness_endpoint_kopf_will_serve() -> None:
    url = "http://0.0.0.0:8081/healthz"
    # `codeforge operator` and the chart set the variable; "off" means none.
    assert liveness_endpoint({"CODEFORGE_LIVENESS_ENDPOINT": url}, ["kopf", "run"]) == url
    assert liveness_endpoint({"CODEFORGE_LIVENESS_ENDPOINT": "off"}, ["x", f"--liveness={url}"]) is None
    # `kopf run -m codeforge.controller --liveness=...` (the image's entrypoint): the last one wins.
    argv = ["kopf", "run", "-m", "codeforge.controller", "--liveness=http://a:1/h", "--liveness", url]
    assert liveness_endpoint({}, argv) == url
    assert liveness_endpoint({}, ["kopf", "run", "-m", "codeforge.controller"]) is None


async def test_the_standby_probe_answers_not_leader_and_frees_its_port() -> None:
    port = free_port()
    probe = StandbyProbe(f"http://127.0.0.1:{port}/healthz", lambda: "op-0_1234")
    await probe.start()
    try:

        def get() -> tuple[int, dict[str, object]]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                return int(r.status), json.loads(r.read())

        status, body = await asyncio.to_thread(get)
        assert status == 200
        assert body == {"leader": False, "holder": "op-0_1234"}
    finally:
        await probe.stop()
    # Kopf binds the same address once this replica leads.
    again = StandbyProbe(f"http://127.0.0.1:{port}/healthz", lambda: "")
    await again.start()
    await again.stop()


def test_micro_time_is_rfc3339_with_microseconds_in_utc() -> None:
    moment = datetime(2026, 1, 2, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=1)))
    assert micro_time(moment) == "2026-01-02T03:05:06.000007Z"
    assert micro_time(datetime(2026, 1, 2, tzinfo=UTC)).endswith("T00:00:00.000000Z")


def test_the_lease_is_released_after_every_other_cleanup_and_acquired_before_the_queue_connects() -> None:
    """Kopf runs cleanup handlers in registration order: the release must come last, so no write of this
    replica follows a standby's takeover."""
    from kopf._core.intents import causes, registries

    import codeforge.controller  # noqa: F401  (registers the handlers)

    activities = registries.get_default_registry()._activities
    cleanups = [h.id for h in activities.get_handlers(activity=causes.Activity.CLEANUP)]
    assert cleanups[-1] == "release_leadership", cleanups
    assert len(cleanups) > 1
    probes = [h.id for h in activities.get_handlers(activity=causes.Activity.PROBE)]
    assert "leader" in probes


def test_a_lost_lease_ends_the_process_at_once_with_a_non_zero_status() -> None:
    """controller-runtime's reaction: no graceful stop (handlers would go on writing), exit 1, log why."""
    import subprocess
    import sys

    code = (
        "import logging, time; logging.basicConfig(level=logging.INFO)\n"
        "from codeforge.controller.leader import exit_at_once\n"
        "exit_at_once('no renewal succeeded within the renew deadline (10s)')\n"
        "time.sleep(5); print('still running')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "still running" not in done.stdout
    assert "leader election lost: no renewal succeeded within the renew deadline (10s)" in done.stderr


async def test_without_election_the_replica_acts_at_once() -> None:
    from prometheus_client import REGISTRY

    from codeforge.controller.leader import lead

    assert await lead(ElectionConfig(enabled=False), probe_endpoint=None) is None
    assert REGISTRY.get_sample_value("codeforge_leader") == 1
