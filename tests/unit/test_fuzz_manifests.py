"""Fuzzing `codeforge run --dry-run` with seeded mutations of the example Workflows (issue #9).

Each case is a file: an example from examples/workflows/ mutated once (deep nesting, huge strings, long or
deep CEL, wrong types, unknown keys, wrong apiVersion/kind, numeric extremes, unicode, duplicated keys,
truncation, byte flips, extra documents). Batches of cases run in a subprocess (tests/support/
validate_many.py), so a segfault is a failure and is pinned on its case by re-running the batch one file at
a time. Every case must end in exit 0 (still valid) or 2 (refused), never a crash or a traceback; a refusal
names its field and stays short; a mutation that certainly breaks the manifest must be refused.

A few hundred cases run in the fast suite, thousands under the `slow` marker (CODEFORGE_FUZZ_CASES
overrides the count, CODEFORGE_FUZZ_SEED the seed).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from codeforge.api import limits

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "workflows").glob("*.yaml"))
DRIVER = ROOT / "tests" / "support" / "validate_many.py"
BATCH = 100
SEED = int(os.environ.get("CODEFORGE_FUZZ_SEED", "9"))
#: The longest refusal on stderr: messages repeat at most a prefix of a bad value.
MAX_MESSAGE = 6000

JSON = Any
Path_ = tuple[str | int, ...]


@dataclass
class Case:
    label: str
    text: bytes
    must_refuse: bool = False
    name: str = ""


@dataclass
class Mutable:
    """Documents with placeholders: a placeholder string is replaced by raw YAML text after dumping."""

    docs: list[JSON]
    raw: dict[str, str] = field(default_factory=dict)

    def placeholder(self, text: str) -> str:
        key = f"PLACEHOLDER{len(self.raw)}X"
        self.raw[key] = text
        return key

    def render(self) -> str:
        text = yaml.safe_dump_all(self.docs, sort_keys=False, allow_unicode=True, width=10**9)
        for key, value in self.raw.items():
            text = text.replace(key, value)
        return text


def examples() -> list[list[JSON]]:
    return [[d for d in yaml.safe_load_all(path.read_text()) if d is not None] for path in EXAMPLES]


def paths(node: JSON, prefix: Path_ = ()) -> list[Path_]:
    """Every path to a value inside `node` (not `node` itself)."""
    found: list[Path_] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        found.append((*prefix, key))
        found += paths(value, (*prefix, key))
    return found


def get(node: JSON, path: Path_) -> JSON:
    for part in path:
        node = node[part]
    return node


def put(node: JSON, path: Path_, value: JSON) -> None:
    get(node, path[:-1])[path[-1]] = value


def workflow_index(docs: list[JSON]) -> int:
    return next(i for i, d in enumerate(docs) if d.get("kind") == "Workflow")


# --- mutations: each changes `m` and says whether the result must be refused ------------------------------


def deep(rng: random.Random, m: Mutable) -> tuple[str, bool]:
    i = rng.randrange(len(m.docs))
    path = rng.choice(paths(m.docs[i]) or [("spec",)])
    depth = rng.choice([10, 40, 63, 65, 100, 500, 2000, 20000])
    style = rng.choice(["list", "map"])
    text = "[" * depth + "1" + "]" * depth if style == "list" else "{a: " * depth + "1" + "}" * depth
    put(m.docs[i], path, m.placeholder(text))
    return f"deep-{style}-{depth}", depth >= 64


def huge_string(rng: random.Random, m: Mutable) -> tuple[str, bool]:
    i = rng.randrange(len(m.docs))
    path = rng.choice(paths(m.docs[i]))
    size = rng.choice([64, 254, 600, 5000, 70_000] + [600_000] * (rng.random() < 0.05))
    put(m.docs[i], path, rng.choice("xY7-") * size)
    return f"huge-string-{size}", size >= 600_000 and m.docs[i].get("kind") == "Workflow"


CEL_TOKENS = [
    "result", "state", "input", "step", ".", "x", "(", ")", "[", "]", "{", "}", ",", ":", "?", "+", "-", "*",
    "/", "%", "==", "!=", "<", ">=", "&&", "||", "!", "1", "2.5", "3u", '"s"', "'t'", "b'x'", "true", "null",
    "size", "has", "map", "all", "exists", "in", "foo", "int", "🙂", "\\", "'''", "0x1F", "1e309",
]  # fmt: skip


def cel_expression(rng: random.Random) -> tuple[str, bool]:
    kind = rng.choice(["plus", "parens", "member", "not", "index", "soup", "macros", "unicode", "list"])
    n = rng.choice([5, 30, 100, 600, 1500, 5000, 40_000])
    if kind == "plus":
        text = "1" + " + 1" * n
    elif kind == "parens":
        text = "(" * n + "1" + ")" * n
    elif kind == "member":
        text = "result" + ".b" * n
    elif kind == "not":
        text = "!" * n + "true"
    elif kind == "index":
        text = "result" + "[0]" * n
    elif kind == "list":
        text = "[" * n + "]" * n
    elif kind == "macros":
        text = "result.items" + ".map(x, x)" * min(n, 400) + ".size() > 0"
    elif kind == "unicode":
        char = chr(rng.choice([rng.randrange(0x80, 0xD800), rng.randrange(0xE000, 0x2FFFF)]))  # no surrogates
        text = f"result.t == {json.dumps(char * min(n, 2000), ensure_ascii=False)}"
    else:
        text = " ".join(rng.choice(CEL_TOKENS) for _ in range(min(n, 3000)))
    tokens = len(re.findall(r"\w+|[^\s\w]", text))
    depth = max(text.count("("), text.count("[")) if kind in ("parens", "list", "index") else 0
    over = (
        len(text) > limits.MAX_CEL_LENGTH
        # the count above is at most twice the real one, where no string literal swallows tokens
        or (kind not in ("soup", "unicode") and tokens > 2 * limits.MAX_CEL_TOKENS)
        or (kind in ("parens", "list") and depth > limits.MAX_CEL_DEPTH)
    )
    return text, over


def long_cel(rng: random.Random, m: Mutable) -> tuple[str, bool]:
    w = m.docs[workflow_index(m.docs)]
    text, over = cel_expression(rng)
    where = rng.choice(["when", "input", "forEach"])
    if where == "when" and w["spec"].get("edges"):
        rng.choice(w["spec"]["edges"])["when"] = text
    else:
        step = rng.choice(w["spec"]["steps"])
        step[where if where != "when" else "input"] = text
        if where == "forEach":
            step.pop("parallel", None)
    return f"cel-{where}", over


WRONG: list[JSON] = [
    0,
    -1,
    1.5,
    True,
    False,
    None,
    [],
    {},
    "s",
    "",
    10**30,
    -(10**30),
    [1, "a"],
    {"k": {"k": []}},
]
YAML_ONLY = [
    ".nan",
    ".inf",
    "-.inf",
    "0x10",
    "0o17",
    "~",
    "2020-01-01",
    "2020-01-01T00:00:00Z",
    "!!binary aGk=",
]


def wrong_type(rng: random.Random, m: Mutable) -> tuple[str, bool]:
    i = rng.randrange(len(m.docs))
    path = rng.choice(paths(m.docs[i]))
    value = rng.choice(WRONG) if rng.random() < 0.7 else m.placeholder(rng.choice(YAML_ONLY))
    put(m.docs[i], path, value)
    return "wrong-type", False


def numeric(rng: random.Random, m: Mutable) -> tuple[str, bool]:
    w = m.docs[workflow_index(m.docs)]
    targets: list[Path_] = [
        ("spec", "timeoutSeconds"),
        ("spec", "maxTasksInFlight"),
        ("spec", "maxStepRuns"),
        ("spec", "priority"),
    ]
    step = rng.randrange(len(w["spec"]["steps"]))
    for name in ("timeoutSeconds", "parallel", "priority"):
        targets.append(("spec", "steps", step, name))
    targets.append(("spec", "steps", step, "retries"))
    path = rng.choice(targets)
    value: JSON = rng.choice([0, -1, 2**31, 2**63, 2**64, 10**100, 1e308, -1e308, 1e-308, 0.5, -0.0])
    if rng.random() < 0.3:
        value = m.placeholder(rng.choice([".nan", ".inf", "-.inf", "1e999"]))
    put(w, path, {"max": value} if path[-1] == "retries" else value)
    return "numeric", False


def unicode_text(rng: random.Random) -> str:
    pools = ["é", "ß", "日本", "🙂", "\u202e", "\u200b", "\u0301", "Ω", "\ufeff", "\U0001d518", "a", "-", " "]
    return "".join(rng.choice(pools) for _ in range(rng.randint(1, 40)))


def unicode(rng: random.Random, m: Mutable) -> tuple[str, bool]:
    i = rng.randrange(len(m.docs))
    if rng.random() < 0.3:
        target = rng.choice([p for p in paths(m.docs[i]) if isinstance(get(m.docs[i], p), dict)] or [()])
        get(m.docs[i], target)[unicode_text(rng)] = unicode_text(rng)
    else:
        put(m.docs[i], rng.choice(paths(m.docs[i])), unicode_text(rng))
    return "unicode", False


FREE = {"input", "params", "metadata", "settings"}


def unknown_key(rng: random.Random, m: Mutable) -> tuple[str, bool]:
    i = workflow_index(m.docs) if rng.random() < 0.8 else rng.randrange(len(m.docs))
    doc = m.docs[i]
    targets = [()] + [p for p in paths(doc) if isinstance(get(doc, p), dict)]
    path = rng.choice(targets)
    node = get(doc, path)
    camel = [k for k in node if isinstance(k, str) and re.search("[a-z][A-Z]", k)]
    key = (
        re.sub("([A-Z])", lambda c: "_" + c.group(1).lower(), rng.choice(camel))
        if camel and rng.random() < 0.5
        else rng.choice(["sepc", "extra", "Kind", "stepz", "x" * 300, "when_", "ñ"])
    )
    node[key] = 1
    free = bool(FREE & {str(p) for p in path})
    strict = doc.get("kind") == "Workflow" or path == ()
    return "unknown-key", strict and not free


def api_kind(rng: random.Random, m: Mutable) -> tuple[str, bool]:
    doc = rng.choice(m.docs)
    if rng.random() < 0.5:
        doc["apiVersion"] = rng.choice(["codeforge.ai/v2", "v1", "", "codeforge.ai/v1alpha1/x", 1, None])
    else:
        doc["kind"] = rng.choice(["Workflo", "workflow", "Pod", "", 7, ["Workflow"], "AgentPool", "Workflow"])
    changed = doc.get("apiVersion", "codeforge.ai/v1alpha1") != "codeforge.ai/v1alpha1" or doc.get(
        "kind"
    ) not in ("Workflow", "AgentPool")
    workflows = sum(d.get("kind") == "Workflow" for d in m.docs)
    return "api-kind", changed or workflows != 1


def delete(rng: random.Random, m: Mutable) -> tuple[str, bool]:
    i = rng.randrange(len(m.docs))
    path = rng.choice(paths(m.docs[i]))
    parent = get(m.docs[i], path[:-1])
    del parent[path[-1]]
    return "delete", False


def documents(rng: random.Random, m: Mutable) -> tuple[str, bool]:
    choice = rng.choice(["twice", "scalar", "list", "empty"])
    if choice == "twice":
        m.docs.append(m.docs[workflow_index(m.docs)])
    elif choice == "scalar":
        m.docs.insert(rng.randrange(len(m.docs) + 1), "just a string")
    elif choice == "list":
        m.docs.append([1, 2])
    else:
        m.docs.append({})  # an empty mapping is a document without a kind
    return f"documents-{choice}", True


MUTATIONS: list[Callable[[random.Random, Mutable], tuple[str, bool]]] = [
    deep,
    huge_string,
    long_cel,
    long_cel,
    wrong_type,
    numeric,
    unicode,
    unknown_key,
    api_kind,
    delete,
    documents,
]


def text_mutation(rng: random.Random, text: str) -> tuple[str, bytes, bool]:
    kind = rng.choice(["duplicate", "truncate", "flip", "nul"])
    if kind == "duplicate":
        lines = text.splitlines(keepends=True)
        keyed = [i for i, line in enumerate(lines) if re.match(r"^\s*[A-Za-z_][\w-]*:( |$)", line)]
        i = rng.choice(keyed)
        lines.insert(i + 1, lines[i] if lines[i].endswith("\n") else lines[i] + "\n")
        return "duplicate-key", "".join(lines).encode(), True
    data = bytearray(text.encode())
    if kind == "truncate":
        return "truncate", bytes(data[: rng.randrange(len(data))]), False
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return "flip", bytes(data), False
    data.insert(rng.randrange(len(data)), 0)
    return "nul", bytes(data), True


def make_case(rng: random.Random, sources: list[list[JSON]]) -> Case:
    m = Mutable(json.loads(json.dumps(rng.choice(sources))))
    if rng.random() < 0.15:
        label, data, refuse = text_mutation(rng, m.render())
        return Case(label, data, refuse)
    label, refuse = rng.choice(MUTATIONS)(rng, m)
    return Case(label, m.render().encode(), refuse)


# --- running and judging ---------------------------------------------------------------------------------

#: A field path as messages write it: spec.steps[0].name, or a quoted odd key: spec.params['a b'].
PATH = r"""[\w.-]*(?:\[(?:\d+|'[^'\n]*'[^\]\n]*|"[^"\n]*"[^\]\n]*)\][\w.-]*)*"""
#: How a refusal names what is wrong: a field path after the document, or a place in the file.
FIELD_NAMED = [
    re.compile(r"\(document \d+, \w+\):\n(  " + PATH + r": [^\n]+\n?)+$"),
    re.compile(r"\(document \d+(, \w+)?\): (kind|apiVersion|" + PATH + "): "),
    re.compile(r"\(document \d+(, \w+)?\): (metadata\.name|spec[\w.]*) "),
    re.compile(r"not valid YAML: .*\(line \d+, column \d+\)", re.S),
    re.compile(r": expected exactly one document with `kind: Workflow`, found \d+"),
    re.compile(r": (not UTF-8 text \(byte \d+\)|larger than \d+ bytes|more than \d+ documents)"),
]


def judge(case: Case, report: dict[str, Any]) -> list[str]:
    problems = []
    err, out = report.get("err", ""), report.get("out", "")
    where = f"{case.name} [{case.label}]"
    if "crash" in report:
        return [f"{where}: raised instead of exiting:\n{report['crash']}"]
    if "Traceback" in err + out:
        problems.append(f"{where}: a traceback:\n{err[-3000:]}")
    code = report["code"]
    if code not in (0, 2) or (case.must_refuse and code != 2):
        problems.append(
            f"{where}: exit {code}, expected {'2' if case.must_refuse else '0 or 2'}:\n{err[:600]}"
        )
    if code == 2:
        message = err.strip().removeprefix("codeforge run: ")
        if not any(p.search(message) for p in FIELD_NAMED):
            problems.append(f"{where}: the refusal names no field:\n{message[:600]}")
        if report["err_length"] > MAX_MESSAGE:
            problems.append(f"{where}: a {report['err_length']}-character message")
    return problems


def run_batch(files: list[Path]) -> tuple[int, dict[str, dict[str, Any]]]:
    done = subprocess.run(
        [sys.executable, str(DRIVER), *map(str, files)], capture_output=True, text=True, timeout=600
    )
    reports = {}
    for line in done.stdout.splitlines():
        report = json.loads(line)
        reports[report["file"]] = report
    return done.returncode, reports


def fuzz(tmp_path: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    sources = examples()
    cases = []
    for i in range(count):
        case = make_case(rng, sources)
        case.name = str(tmp_path / f"case-{i:05d}-{case.label}.yaml")
        Path(case.name).write_bytes(case.text)
        cases.append(case)
    failures: list[str] = []
    for start in range(0, len(cases), BATCH):
        batch = cases[start : start + BATCH]
        code, reports = run_batch([Path(c.name) for c in batch])
        for case in batch:
            if case.name not in reports:
                alone, single = run_batch([Path(case.name)])
                if case.name not in single:
                    failures.append(f"{case.name} [{case.label}]: the validating process died (exit {alone})")
                    continue
                reports[case.name] = single[case.name]
            failures += judge(case, reports[case.name])
        if code not in (0, None) and not failures:
            failures.append(f"batch at {start}: the driver exited {code} after reporting every case")
    labels = sorted({c.label.split("-")[0] for c in cases})
    assert not failures, (
        f"{len(failures)} of {count} cases failed (seed {seed}, kinds {labels}):\n" + "\n".join(failures[:15])
    )


def test_the_examples_are_valid_for_the_driver(tmp_path: Path) -> None:
    code, reports = run_batch(EXAMPLES)
    assert code == 0
    assert [reports[str(p)]["code"] for p in EXAMPLES] == [0] * len(EXAMPLES), reports


def test_fuzzed_manifests_are_refused_cleanly(tmp_path: Path) -> None:
    fuzz(tmp_path, int(os.environ.get("CODEFORGE_FUZZ_CASES", "300")), SEED)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzzed_manifests_are_refused_cleanly_many(tmp_path: Path) -> None:
    fuzz(tmp_path, int(os.environ.get("CODEFORGE_FUZZ_CASES", "3000")), SEED + 1)
