"""Bounds on everything a user writes into a Workflow or AgentPool, and the one helper that cuts a bad value
short in a message.

Anyone allowed to create a Workflow must not be able to take the operator down, so every string, list and
map has a bound: the CRD schemas carry them (the API server refuses an oversized object before the operator
sees it) and the pydantic models carry the same ones (the embedded path, `codeforge run`). CEL expressions
are also checked by `codeforge.api.cel_check` before they reach the compiler, whose recursive parser
overflows the stack (a segfault, not an exception) on an expression of about 25,000 terms.
"""

from __future__ import annotations

from typing import Any, Final

#: A task's payload as JSON (`codeforge.api.task`); anything larger belongs in object storage.
MAX_PAYLOAD_BYTES: Final = 512 * 1024
#: A task's result as JSON: it feeds later steps' payloads (the same cap), the run's checkpoints and CEL. The
#: queue's Lua scripts hold it too (lib.lua), so a client that is not codeforge's cannot store a larger one.
MAX_RESULT_BYTES: Final = MAX_PAYLOAD_BYTES
#: A CEL expression (`when`, `input`, `forEach`): characters, tokens and bracket nesting. The compiler
#: crashed at about 20,000 terms (80-100 KB) on the main thread's 8 MiB stack and refuses nesting beyond ~95
#: levels; 512 tokens (at most ~256 terms) compile and evaluate even on a 256 KiB thread stack (measured).
MAX_CEL_LENGTH: Final = 4096
MAX_CEL_TOKENS: Final = 512
MAX_CEL_DEPTH: Final = 32
#: Comprehensions (all, exists, exists_one, map, filter) inside one another: each level multiplies the
#: evaluation's work, which the package neither bounds nor interrupts.
MAX_CEL_COMPREHENSIONS: Final = 2
#: An expression whose work the data decides (a comprehension, or many concatenations) is evaluated in a
#: worker process (`codeforge.api.cel_sandbox`) with these limits: wall-clock seconds and address space.
CEL_SANDBOX_SECONDS: Final = 2.0
CEL_SANDBOX_MEMORY: Final = 1024 * 1024 * 1024
#: The largest value such an evaluation may return (pickled).
CEL_SANDBOX_RESULT_BYTES: Final = 8 * 1024 * 1024
#: `+` operators an expression may hold and still be evaluated in process: a value built with k of them is at
#: most k + 1 times its largest operand, so up to 255 could build one hundreds of times the run's data.
CEL_INLINE_CONCATENATIONS: Final = 8
#: Nesting of a YAML manifest (mappings and sequences); PyYAML's composer recursed until RecursionError.
MAX_YAML_DEPTH: Final = 64
#: A `codeforge run` manifest file.
MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
#: `spec.input` as JSON: the same cap as a task's payload, so a workflow that validates can also dispatch.
MAX_INPUT_BYTES: Final = MAX_PAYLOAD_BYTES
#: A step's `params` (merged into each of its tasks' payloads).
MAX_PARAMS_BYTES: Final = 64 * 1024
MAX_PARAMS_KEYS: Final = 64
MAX_STEPS: Final = 256
#: An approval step's question to its approver.
MAX_APPROVAL_MESSAGE: Final = 1024
#: spec.ttlSecondsAfterFinished: a year (a longer retention is "keep").
MAX_TTL_SECONDS: Final = 365 * 86400
MAX_EDGES: Final = 1024
#: Names: steps and other DNS labels, pools (`namespace/name`), Kubernetes object names.
MAX_NAME: Final = 63
MAX_POOL_NAME: Final = 507
MAX_OBJECT_NAME: Final = 253
#: Label and annotation maps (metadata, node selectors, pod labels/annotations, resources).
MAX_MAP_KEYS: Final = 64
MAX_KEY_LENGTH: Final = 317  # a qualified Kubernetes key: 253-character prefix, '/', 63-character name
MAX_LABEL_VALUE: Final = 63
MAX_VALUE_LENGTH: Final = 4096
MAX_ANNOTATION_VALUE: Final = 256 * 1024  # the API server's cap on all annotations of an object together
#: Lists in an AgentPool spec (env, envFrom, tolerations, imagePullSecrets).
MAX_LIST_ITEMS: Final = 256
#: An image reference (registry/repository:tag@digest).
MAX_IMAGE_LENGTH: Final = 1024
#: A free JSON value (input, params, settings) may nest this deep (the same as YAML).
MAX_JSON_DEPTH: Final = MAX_YAML_DEPTH
#: A whole Workflow document: its own few levels (metadata, spec, steps[i], params) around free JSON.
MAX_DOCUMENT_DEPTH: Final = MAX_JSON_DEPTH + 8
#: Fair share (README, "Fair share"): a fairness key's length (a `concurrencyKey` value or a Workflow id), the
#: keys one pool tracks (tasks of further keys share one overflow key), a key's weight and maxConcurrency.
MAX_FAIR_KEY: Final = 256
MAX_FAIR_KEYS: Final = 10000
MAX_FAIR_WEIGHT: Final = 100
MAX_CONCURRENCY: Final = 100000
#: How much of a bad value a message repeats.
SHOWN_PREFIX: Final = 60


def clip(value: Any, limit: int = SHOWN_PREFIX) -> str:
    """`repr(value)` cut to `limit` characters, with the full length when cut: the one way a message shows a
    user's value, so a megabyte of bad input gives a line, not a megabyte of log."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value)} characters)"
    if isinstance(value, int) and value.bit_length() > 256:
        # repr of an int past 4,300 digits raises (its message suggests sys.set_int_max_str_digits())
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value) if not isinstance(value, dict | list | tuple) or _small(value) else None
    if text is not None and len(text) <= limit:
        return text
    return f"{type(value).__name__} {(text or _shallow(value))[:limit]}..."


def printable(text: str) -> str:
    """`text` with control characters escaped (`\\x1b`): user text echoed in a message carries no terminal
    sequences or line breaks."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def clip_text(text: str, limit: int) -> str:
    """A message (not a value) cut to `limit` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _small(value: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> bool:
    # repr of a deep or huge container is itself the danger (RecursionError, memory): only small flat ones.
    return len(value) <= 8 and all(not isinstance(v, dict | list | tuple) for v in _items(value))


def _items(value: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> list[Any]:
    return list(value.values()) if isinstance(value, dict) else list(value)


def _shallow(value: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> str:
    return f"of {len(value)} items"


def yaml_scalar(value: Any) -> str:
    """A value as YAML spells it (null, true, 1.5), clipped: for keys that are no string in paths."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return clip(value, 40)


def too_deep(value: Any, limit: int) -> str | None:
    """The path (`.key`, `[index]`, `[null]` for a key that is no string) of the first container nested more
    than `limit` deep (a scalar is 0 deep), or None; walked without recursion, which is the point: a deep
    value's repr or encoding recurses (pydantic's error for a bad enum value formats the value, and overflowed
    the stack on a deep one)."""
    steps: list[tuple[int, str]] = []  # (parent index, path segment): the path is built only if found
    todo: list[tuple[Any, int, int]] = [(value, 0, -1)] if isinstance(value, dict | list | tuple) else []
    while todo:
        node, depth, at = todo.pop()
        if depth >= limit:
            segments = []
            while at >= 0:
                at, segment = steps[at]
                segments.append(segment)
            return "".join(reversed(segments))
        keyed = isinstance(node, dict)
        for key, child in node.items() if keyed else enumerate(node):
            if isinstance(child, dict | list | tuple):
                keyed_text = f".{key}" if isinstance(key, str) else f"[{yaml_scalar(key)}]"
                steps.append((at, keyed_text if keyed else f"[{key}]"))
                todo.append((child, depth + 1, len(steps) - 1))
    return None
