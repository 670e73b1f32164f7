"""Image hygiene of the images `make images` builds (hack/images.sh): run with podman as a user would.

Non-root, a read-only root filesystem is enough, no compilers or package caches in the final stage, and the
sizes (printed; a sudden growth fails here first).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence

import pytest

from cluster.real_node import image_env, why_no_real_node

pytestmark = [pytest.mark.slow]

#: Upper bounds in MB (today: agent ~322 with git and its perl for workspaces, operator ~420): room to grow,
#: but not by a forgotten build tree.
SIZE_LIMITS_MB = {"AGENT_IMAGE": 380, "OPERATOR_IMAGE": 550}
#: Commands the agent and the operator run to prove they start (no network, no cluster needed).
SMOKE = {
    "AGENT_IMAGE": ["codeforge-agent", "--help"],
    "OPERATOR_IMAGE": ["python", "-c", "import codeforge.controller, kopf, kubernetes, langgraph"],
}


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    reason = why_no_real_node()
    if reason is not None:
        pytest.skip(f"images: {reason}")
    env = image_env()
    os.environ["CONTAINERS_STORAGE_CONF"] = env["CONTAINERS_STORAGE_CONF"]
    os.environ["CONTAINERS_CONF"] = env["CONTAINERS_CONF"]
    return env


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)


def run(image: str, argv: Sequence[str], *extra: str) -> subprocess.CompletedProcess[str]:
    """`podman run` with a read-only root filesystem, no network, a tmpfs /tmp and no added privileges. The
    limits are small ones: the VM lacks CAP_SYS_RESOURCE, and runc may not set podman's (higher) defaults."""
    return podman(
        "run", "--rm", "--read-only", "--network=none", "--tmpfs=/tmp", "--cap-drop=ALL",
        "--security-opt=no-new-privileges", "--ulimit=nofile=4096:4096", "--ulimit=nproc=4096:4096",
        *extra, "--entrypoint", argv[0], image, *argv[1:],
    )  # fmt: skip


@pytest.mark.parametrize("which", ["AGENT_IMAGE", "OPERATOR_IMAGE"])
def test_image_is_non_root_and_runs_on_a_read_only_root_filesystem(
    images: dict[str, str], which: str
) -> None:
    image = images[which]
    (config,) = json.loads(podman("image", "inspect", image).stdout)
    assert config["Config"]["User"] == "10001", config["Config"].get("User")

    out = run(image, SMOKE[which])
    assert out.returncode == 0, out.stdout + out.stderr
    uid = run(image, ["python", "-c", "import os; print(os.getuid(), os.getgid())"])
    assert uid.stdout.split() == ["10001", "10001"], uid.stdout + uid.stderr
    # The root filesystem really is read-only; /tmp (an emptyDir in the chart) is the place to write.
    probe = run(image, ["sh", "-c", "touch /opt/x 2>/dev/null && echo writable; touch /tmp/x && echo tmp-ok"])
    assert probe.stdout.split() == ["tmp-ok"], probe.stdout + probe.stderr


@pytest.mark.parametrize("which", ["AGENT_IMAGE", "OPERATOR_IMAGE"])
def test_final_stage_has_no_compilers_or_package_caches(images: dict[str, str], which: str) -> None:
    script = r"""
for tool in gcc cc g++ c++ clang make ld as; do
  command -v "$tool" >/dev/null 2>&1 && echo "compiler:$tool"
done
for dir in /root/.cache /tmp/.cache /var/cache/apt/archives /var/lib/apt/lists /opt/venv/.cache; do
  left="$(ls -A "$dir" 2>/dev/null | grep -v '^partial$\|^lock$\|^auxfiles$')"
  [ -n "$left" ] && echo "cache:$dir"
done
# Wheels other than the interpreter's own ensurepip bundle (Debian keeps it in /usr/share/python-wheels).
find / -xdev \( -path /usr/share/python-wheels -o -path '*/ensurepip/_bundled' -o -path /proc \) -prune -o \
  \( -name '*.whl' -o -name 'pip-*.tar.gz' -o -path '*/uv/cache*' \) -print 2>/dev/null | head -n 5 |
  sed 's/^/cache:/'
[ -e /opt/uv ] && echo "builder-tool:/opt/uv"
true
"""
    out = run(images[which], ["sh", "-c", script])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [], out.stdout


@pytest.mark.parametrize("which", ["AGENT_IMAGE", "OPERATOR_IMAGE"])
def test_image_size(images: dict[str, str], which: str) -> None:
    (config,) = json.loads(podman("image", "inspect", images[which]).stdout)
    size_mb = config["Size"] / 1e6
    print(f"{images[which]}: {size_mb:.0f} MB")
    assert size_mb < SIZE_LIMITS_MB[which], f"{images[which]} is {size_mb:.0f} MB"
