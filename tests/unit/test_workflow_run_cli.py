"""`codeforge run`: exit codes, JSON output, and clear errors (never a traceback) for bad manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from codeforge.cli import _register, app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
_register()

GOOD = """
apiVersion: codeforge.ai/v1alpha1
kind: Workflow
metadata: {name: t}
spec:
  input: {x: 1}
  steps: [{name: a, pool: echo, input: state.input.x}]
"""


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["run", *args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        result.exception
    )
    return result.exit_code, result.stdout, result.stderr


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    return str(path)


def test_hello_world_json_output() -> None:
    code, out, _ = invoke(str(ROOT / "examples/workflows/hello-world.yaml"), "-o", "json")
    assert code == 0
    outcome = json.loads(out)
    assert outcome["status"] == "succeeded"
    assert outcome["results"]["hello"]["input"] == "hello, world"


def test_undeclared_pools_get_echo_agents(tmp_path: Path) -> None:
    code, out, _ = invoke(write(tmp_path, GOOD), "-o", "json", "--input", '{"x": 42}')
    assert code == 0
    assert json.loads(out)["results"]["a"]["input"] == 42


def test_a_failed_workflow_exits_1(tmp_path: Path) -> None:
    text = GOOD + "---\nkind: AgentPool\nmetadata: {name: echo}\nspec: {handler: {kind: fail}}\n"
    code, out, _ = invoke(write(tmp_path, text), "-o", "json")
    assert code == 1
    outcome = json.loads(out)
    assert outcome["status"] == "failed"
    assert outcome["error"].startswith("step 'a' failed: fail handler")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD.replace("state.input.x", "state.input.("),
            "spec.steps[0].input: CEL expression does not compile",
        ),
        (GOOD.replace("pool: echo", "pool: Echo"), "spec.steps[0].pool: invalid pool name 'Echo'"),
        (
            GOOD.replace("kind: Workflow", "kind: Workflo"),
            "(document 1): kind: 'Workflo' is not supported here: use Workflow or AgentPool",
        ),
        (GOOD.replace("metadata: {name: t}", "metadata: {}"), "metadata.name: Field required"),
        ("a: [", "not valid YAML"),
        (
            GOOD + "---\nkind: AgentPool\nmetadata: {name: echo}\nspec: {concurrency: 0}\n",
            "AgentPool): spec.concurrency must be a whole number >= 1",
        ),
        (
            GOOD + "---\nkind: AgentPool\nmetadata: {name: echo}\nspec: {handler: {kind: python}}\n",
            "the python handler needs --python-function / CODEFORGE_PYTHON_FUNCTION",
        ),
    ],
)
def test_invalid_manifests_exit_2_naming_the_field(tmp_path: Path, text: str, expected: str) -> None:
    code, out, err = invoke(write(tmp_path, text))
    assert code == 2
    assert expected in " ".join(err.split()), err
    assert "Traceback" not in err + out


def test_missing_file_and_bad_options_exit_2(tmp_path: Path) -> None:
    code, _, err = invoke(str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "cannot read it" in err
    code, _, err = invoke(write(tmp_path, GOOD), "--input", "{nope")
    assert code == 2
    assert "--input is not JSON" in err
    code, _, err = invoke(write(tmp_path, GOOD), "--queue", "kafka://x")
    assert code == 2
    assert "scheme 'kafka' is not supported" in err
