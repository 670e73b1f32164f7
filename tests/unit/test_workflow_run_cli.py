"""`codeforge run`: exit codes, JSON output, and clear errors (never a traceback) for bad manifests."""

from __future__ import annotations

import json
import subprocess
import sys
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


def test_undeclared_pools_get_echo_agents_only_when_asked(tmp_path: Path) -> None:
    code, out, err = invoke(write(tmp_path, GOOD), "-o", "json", "--input", '{"x": 42}')
    assert code == 2
    assert out == ""
    assert "spec.steps[0].pool: 'echo' is not declared in the file" in err
    assert "--echo-pools" in err
    code, out, _ = invoke(write(tmp_path, GOOD), "-o", "json", "--input", '{"x": 42}', "--echo-pools")
    assert code == 0
    assert json.loads(out)["results"]["a"]["input"] == 42


def test_a_failed_workflow_exits_1(tmp_path: Path) -> None:
    text = GOOD + "---\nkind: AgentPool\nmetadata: {name: echo}\nspec: {handler: {kind: fail}}\n"
    code, out, _ = invoke(write(tmp_path, text), "-o", "json")
    assert code == 1
    outcome = json.loads(out)
    assert outcome["status"] == "failed"
    assert outcome["error"].startswith("step 'a' failed: fail handler")


def test_whole_floats_are_integers_as_the_api_server_stores_them(tmp_path: Path) -> None:
    # The API server accepts `3.0` in an integer field and stores 3 (its JSON round trip writes float64 3 as
    # `3`, in free-form fields too); `3.5` it refuses, and so does `codeforge run`, naming the field.
    text = GOOD.replace("input: {x: 1}", "input: {x: 2.0, y: 2.5, z: 1.0e+21}\n  maxTasksInFlight: 3.0")
    pools = "---\nkind: AgentPool\nmetadata: {name: echo}\nspec: {concurrency: 2.0}\n"
    code, out, err = invoke(write(tmp_path, text + pools), "-o", "json")
    assert code == 0, err
    echoed = json.loads(out)["results"]["a"]["input"]
    assert echoed == 2
    assert isinstance(echoed, int)
    whole = text.replace("state.input.x", "state.input")
    code, out, err = invoke(write(tmp_path, whole + pools), "-o", "json")
    assert code == 0, err
    assert json.loads(out)["results"]["a"]["input"] == {"x": 2, "y": 2.5, "z": 1e21}  # Go writes 1e+21
    half = text.replace("maxTasksInFlight: 3.0", "maxTasksInFlight: 3.5")
    code, _, err = invoke(write(tmp_path, half + pools))
    assert code == 2
    assert "spec.maxTasksInFlight: Input should be a valid integer" in err


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
        (
            GOOD.replace("kind: Workflow\n", ""),
            "(document 1): kind: missing: add kind: Workflow or kind: AgentPool",
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
        (
            GOOD + "---\nkind: AgentPool\nmetadata: {name: echo}\nspec: {queue: {leaseSeconds: 0}}\n",
            "AgentPool): spec.queue.leaseSeconds must be seconds, > 0 and <= 86400, got 0",
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
    code, _, err = invoke(write(tmp_path, GOOD), "--input", "[" * 100_000 + "]" * 100_000)
    assert (code, "--input nests too deeply" in err) == (2, True), err
    code, _, err = invoke(write(tmp_path, GOOD), "--input", "[" * 100 + "]" * 100)
    assert (code, "--input nests more than 64 levels deep" in err) == (2, True), err
    code, _, err = invoke(write(tmp_path, GOOD), "--input", '"%s"' % ("x" * 600_000))
    assert (code, "--input is 600002 bytes of JSON, over the limit of 524288" in err) == (2, True), err
    code, _, err = invoke(write(tmp_path, GOOD), "--queue", "kafka://x")
    assert code == 2
    assert "scheme 'kafka' is not supported" in err


# --- hostile input (issue #9) ------------------------------------------------------------------------------


def deep_block(depth: int) -> str:
    lines = [f"{'  ' * i}k{i}:" for i in range(depth)]
    return GOOD.replace("input: {x: 1}", "input:\n" + "\n".join("    " + line for line in lines) + " 1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("input: {x: 1}", "input: " + "[" * 500 + "]" * 500), "nesting deeper than 64 levels"),
        (deep_block(500), "nesting deeper than 64 levels: flatten the document (line"),
        (GOOD.replace("input: {x: 1}", "input: " + "[" * 5000 + "]" * 5000), "nesting deeper than 64 levels"),
        (
            GOOD.replace("codeforge.ai/v1alpha1", "codeforge.ai/v2"),
            "apiVersion: 'codeforge.ai/v2' is not served: use codeforge.ai/v1alpha1",
        ),
        (GOOD + "extra: 1\n", "extra: unknown field"),
        (GOOD + "---\nkind: AgentPool\nmetadata: {name: echo}\nspce: {}\n", "spce: unknown field"),
        (
            GOOD.replace("  input: {x: 1}", "  input: {x: 1}\n  input: {x: 2}"),
            "duplicate key 'input': keep one",
        ),
        (
            GOOD.replace("steps:", "timeout_seconds: 5\n  steps:"),
            "spec.timeout_seconds: Extra inputs are not permitted: fields are camelCase, "
            "write 'timeoutSeconds'",
        ),
        (
            GOOD.replace("input: {x: 1}", "input: {x: '%s'}" % ("y" * 1_000_000)),
            "spec.input: input is 1000008",
        ),
        (GOOD.replace("state.input.x", "1 / 0"), "spec.steps[0].input: 1 / 0 is an error: division by zero"),
        ("- 1\n- 2\n", "(document 1): kind: missing, the document is a list"),
        (GOOD.replace("kind: Workflow", "kind: '[red]x'"), "kind: '[red]x' is not supported"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
                for p, c in zip("abcdefg", "bcdefgh", strict=True)
            ),
            "more than 200000 values once aliases are expanded",
        ),
        # values PyYAML's constructors cannot build (they raised ValueError, KeyError, AttributeError)
        (GOOD.replace("input: {x: 1}", "input: " + "9" * 5000), "cannot read '99999"),
        (GOOD.replace("input: {x: 1}", "input: !!bool abc"), "cannot read 'abc' as bool ('abc') (line 6"),
        (GOOD.replace("input: {x: 1}", "input: !!timestamp abc"), "cannot read 'abc' as timestamp"),
        (GOOD.replace("input: {x: 1}", "input: 2001-13-45"), "as timestamp (month must be in 1..12) (line 6"),
        (GOOD.replace("input: {x: 1}", "input: !!set abc"), "cannot fill a collection (not enough values"),
        (GOOD.replace("input: {x: 1}", "input: {x: !!int abc}"), "cannot read 'abc' as int"),
    ],
)
def test_hostile_manifests_exit_2_naming_the_field(tmp_path: Path, text: str, expected: str) -> None:
    code, out, err = invoke(write(tmp_path, text))
    assert code == 2, err[-2000:]
    assert expected in " ".join(err.split()), err[:2000]
    assert "Traceback" not in err + out
    assert len(err) < 2000, err[:500]


def test_an_input_of_too_many_digits_exits_2(tmp_path: Path) -> None:
    code, out, err = invoke(write(tmp_path, GOOD), "--dry-run", "--input", "9" * 5000)
    assert code == 2, err[-2000:]
    assert "--input is not JSON this accepts: Exceeds the limit (4300 digits)" in " ".join(err.split())
    assert "Traceback" not in err + out


def test_a_manifest_that_is_not_utf8_or_too_large_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_bytes(GOOD.encode() + b"\xff\xfe")
    code, _, err = invoke(str(path))
    assert (code, "not UTF-8 text" in err) == (2, True), err
    path.write_bytes(b"# " + b"x" * (5 * 1024 * 1024))
    code, _, err = invoke(str(path))
    assert (code, "larger than 4194304 bytes" in err) == (2, True), err


def test_a_100_kb_when_exits_2_instead_of_crashing(tmp_path: Path) -> None:
    # A subprocess: the CEL compiler overflowed the native stack and `codeforge run` exited -11.
    text = GOOD + "  edges: [{from: a, to: END, when: '%s'}]\n" % ("1" + " + 1" * 40_000)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "codeforge"), "run", write(tmp_path, text), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "spec.edges[0].when: String should have at most 4096 characters" in done.stderr


def test_dry_run_validates_only(tmp_path: Path) -> None:
    code, out, err = invoke(str(ROOT / "examples/workflows/feature-development.yaml"), "--dry-run")
    assert code == 0, err
    assert "valid: Workflow feature-development, 6 steps" in " ".join(out.split())
