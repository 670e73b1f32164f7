"""CEL expressions are checked in two passes around the compiler of the `common-expression-language` package.

Before: a linear tokenizer bounds length, token count, bracket nesting and comprehension nesting
(`limits.MAX_CEL_*`). The package's parser recurses once per term and overflows the native stack (a segfault
that kills the operator, not an exception) at about 25,000 terms, so no expression may reach it unchecked;
its evaluator has no cost limit and holds the GIL (a long evaluation stops the operator's event loop), and
each nested comprehension multiplies the work: six levels over 30-item lists in 450 characters ran for
minutes (and `map` filled memory), so comprehensions nest at most `MAX_CEL_COMPREHENSIONS` deep.

After: the package has no type checker (only `Program.variables()` / `functions()`), so a small static
check stands in for one: every variable must be one the field provides (or a comprehension's own), every
function one the package implements, an operator between two literals must be defined for their types
(`1 + "a"`), and an expression without variables is evaluated once (linear: without variables there is no
comprehension over data; over literal lists the comprehension bound keeps it small), so `when: 'null'` or
`1 / 0` is refused at validation instead of misrouting at run time. On data too, a known function must be
called as the package has it (`size(x)` or `x.size()`, `s.matches(re)`, `int(x)`, `t.getHours()`), a regex
literal given to `matches` must compile (Rust's regex syntax) and a conversion of a literal must succeed
(`duration("5x")`); an overflow says the 64-bit range instead of the package's words.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import cel

from codeforge.api.limits import (
    CEL_INLINE_CONCATENATIONS,
    MAX_CEL_COMPREHENSIONS,
    MAX_CEL_DEPTH,
    MAX_CEL_LENGTH,
    MAX_CEL_TOKENS,
    clip,
    clip_text,
    printable,
)

#: Named functions the package implements (receiver or global style).
FUNCTIONS: Final = frozenset(
    {
        "size", "contains", "startsWith", "endsWith", "matches", "int", "uint", "double", "string", "bytes",
        "dyn", "type", "duration", "timestamp", "getFullYear", "getMonth", "getDate", "getDayOfMonth",
        "getDayOfWeek", "getDayOfYear", "getHours", "getMinutes", "getSeconds", "getMilliseconds",
    }
)  # fmt: skip
#: Type names usable as values (`type(x) == int`).
TYPE_NAMES: Final = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type"}
)
_MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})

_TOKEN: Final = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*)
  | (?P<string>[rRbB]{0,2}(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
  | (?P<number>0[xX][0-9a-fA-F]+[uU]?|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[uU]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|[-+*/%<>!?:.,()\[\]{}])
  | (?P<other>.)
    """,
    re.VERBOSE,
)
_OPEN: Final = frozenset("([{")
_CLOSE: Final = frozenset(")]}")
#: Binding strength of binary operators (CEL's grammar); higher binds tighter.
_PRECEDENCE: Final = {
    **{"||": 1, "&&": 2, "<": 3, "<=": 3, ">": 3, ">=": 3, "==": 3, "!=": 3, "in": 3},
    **{"+": 4, "-": 4, "*": 5, "/": 5, "%": 5},
}
#: Operators whose operands' types must agree (equality is defined across types: `1 == "a"` is false).
_TYPED_OPS: Final = frozenset({"+", "-", "*", "/", "%", "<", "<=", ">", ">="})
_LITERAL_IDENTS: Final = frozenset({"true", "false", "null"})
_BOUNDARY: Final = frozenset({None, "(", "[", "{", ",", "?", ":"})
_CLOSING_BOUNDARY: Final = frozenset({None, ")", "]", "}", ",", "?", ":"})


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # string, number, ident, op, other
    text: str

    @property
    def literal(self) -> bool:
        return self.kind in ("string", "number") or (self.kind == "ident" and self.text in _LITERAL_IDENTS)


class CelCheckError(ValueError):
    """The expression is refused; the message is one line and repeats at most a prefix of it."""


def tokenize(expression: str) -> list[Token]:
    """CEL's tokens, in one linear pass (call only on an expression within `MAX_CEL_LENGTH`)."""
    tokens = []
    for match in _TOKEN.finditer(expression):
        kind = match.lastgroup or "other"
        if kind != "space":
            tokens.append(Token(kind, match.group()))
    return tokens


def check_size(expression: str) -> list[Token]:
    """Refuse an expression too long, with too many tokens or too deeply nested for the compiler."""
    if len(expression) > MAX_CEL_LENGTH:
        raise CelCheckError(
            f"CEL expression is {len(expression)} characters, over the limit of {MAX_CEL_LENGTH}: "
            "move the logic into the agent and route on a field of its result"
        )
    tokens = tokenize(expression)
    if len(tokens) > MAX_CEL_TOKENS:
        raise CelCheckError(
            f"CEL expression has {len(tokens)} tokens, over the limit of {MAX_CEL_TOKENS}: simplify it"
        )
    depth = 0
    comprehensions: list[int] = []  # the bracket depth each open comprehension's arguments are at
    for i, token in enumerate(tokens):
        if token.text in _OPEN and token.kind == "op":
            depth += 1
            if depth > MAX_CEL_DEPTH:
                raise CelCheckError(
                    f"CEL expression nests brackets more than {MAX_CEL_DEPTH} deep: simplify it"
                )
            if _opens_comprehension(tokens, i):
                if len(comprehensions) >= MAX_CEL_COMPREHENSIONS:
                    raise CelCheckError(
                        f"CEL expression nests comprehensions ({', '.join(sorted(_MACROS))}) more than "
                        f"{MAX_CEL_COMPREHENSIONS} deep: each level multiplies the work, so compute it in "
                        "the agent and route on a field of its result"
                    )
                comprehensions.append(depth)
        elif token.text in _CLOSE and token.kind == "op":
            if comprehensions and comprehensions[-1] == depth:
                comprehensions.pop()
            depth = max(0, depth - 1)
    return tokens


def data_driven(tokens: list[Token]) -> bool:
    """Whether the data can decide the evaluation's cost beyond a linear pass: a comprehension (its work is
    the product of the lists it walks), `matches` (the package compiles the regex on every call: up to ~70 ms
    for a short one) or more `+` than `CEL_INLINE_CONCATENATIONS`. Such expressions are evaluated by
    `codeforge.api.cel_sandbox`."""
    if _calls_matches(tokens) or any(_opens_comprehension(tokens, i) for i in range(len(tokens))):
        return True
    return sum(t.kind == "op" and t.text == "+" for t in tokens) > CEL_INLINE_CONCATENATIONS


def _opens_comprehension(tokens: list[Token], i: int) -> bool:
    """Whether tokens[i] is the `(` of a macro call (`xs.exists(`)."""
    token = tokens[i]
    return (
        token.kind == "op"
        and token.text == "("
        and i >= 2
        and tokens[i - 2].text == "."
        and tokens[i - 1].text in _MACROS
    )


def _calls_matches(tokens: list[Token]) -> bool:
    return any(t.kind == "ident" and t.text == "matches" for t in tokens)


def compile_error(exc: Exception) -> str:
    """The package's parse error in one short line: the message without the echoed expression."""
    text = str(exc)
    found = re.search(r"ERROR: <input>:(\d+:\d+): ([^\n]*)", text)
    if found:
        return f"{clip_text(printable(found.group(2)), 160)} (at {found.group(1)})"
    return clip_text(printable(text.split("\n", 1)[0]), 160)


def check_program(
    program: cel.Program, tokens: list[Token], variables: frozenset[str], what: str = "value"
) -> None:
    """The static checks a type checker would do; `variables` are the names the field provides."""
    references = program.references()
    unknown_functions = sorted(
        name for name in references["functions"] if not _is_operator(name) and name not in FUNCTIONS
    )
    # The parser expands a macro called right (`xs.all(x, x > 0)`) and leaves any other call of it
    # (`[].all()`, `xs.map(x)`) as a function call, which no function implements.
    macros = [name for name in unknown_functions if name in _MACROS]
    if macros:
        raise CelCheckError(
            f"{macros[0]}() takes a variable and an expression, e.g. list.{macros[0]}(x, x > 0)"
            + (" (or a variable, a condition and an expression)" if macros[0] == "map" else "")
        )
    if unknown_functions:
        raise CelCheckError(
            f"unknown function {clip(unknown_functions[0], 40)}: CEL here has {', '.join(sorted(FUNCTIONS))} "
            "and the macros has, all, exists, exists_one, map, filter"
        )
    bound = _comprehension_variables(tokens)
    unknown = sorted(set(references["variables"]) - variables - bound - TYPE_NAMES)
    if unknown:
        raise CelCheckError(f"unknown variable {clip(unknown[0], 40)}: use {', '.join(sorted(variables))}")
    _check_calls(tokens)
    _check_literal_operations(tokens)
    if not references["variables"]:
        _check_constant(program, tokens, what)


def _is_operator(name: str) -> bool:
    return not name[:1].isalpha() or name.startswith("@")


def _comprehension_variables(tokens: list[Token]) -> set[str]:
    # `list.map(x, ...)`: the macro's first argument names a variable of its own.
    found = set()
    for i in range(len(tokens) - 4):
        if (
            tokens[i].text == "."
            and tokens[i + 1].text in _MACROS
            and tokens[i + 2].text == "("
            and tokens[i + 3].kind == "ident"
            and tokens[i + 4].text == ","
        ):
            found.add(tokens[i + 3].text)
    return found


#: How the package calls each function: (receiver style, number of arguments) pairs it has an overload for
#: (`size(x)` and `x.size()`; `s.contains(t)`; `int(x)`; `t.getHours()`: no time zone argument), and how to
#: write a call. Any other call fails at run time ("Undefined variable or function").
_CALLS: Final[dict[str, tuple[frozenset[tuple[bool, int]], str]]] = {
    "size": (frozenset({(False, 1), (True, 0)}), "size(x) or x.size()"),
    **{
        name: (frozenset({(True, 1)}), f"s.{name}({arg})")
        for name, arg in (
            ("contains", "substring"),
            ("startsWith", "prefix"),
            ("endsWith", "suffix"),
            ("matches", "regex"),
        )
    },
    **{
        name: (frozenset({(False, 1)}), f"{name}(x)")
        for name in ("int", "uint", "double", "string", "bytes", "dyn", "type")
    },
    "duration": (frozenset({(False, 1)}), 'duration("90s")'),
    "timestamp": (frozenset({(False, 1)}), 'timestamp("2024-01-01T00:00:00Z")'),
    **{
        name: (frozenset({(True, 0)}), f"t.{name}() (timestamps are UTC: no time zone argument)")
        for name in FUNCTIONS
        if name.startswith("get")
    },
}


def _check_calls(tokens: list[Token]) -> None:
    """A known function called in a way the package has no overload for (`size(result, 2)`,
    `contains(s, "a")`, `t.getHours("UTC")`), and a regex literal `matches` cannot compile: refused now,
    not failing each run. Only calls the tokens show for certain (`name(`) are looked at."""
    regexes: set[str] = set()
    for i in range(len(tokens) - 1):
        name = tokens[i]
        if name.kind != "ident" or name.text not in _CALLS or tokens[i + 1].text != "(":
            continue
        receiver = i >= 1 and tokens[i - 1].text == "." and tokens[i - 1].kind == "op"
        arguments, close = _call_arguments(tokens, i + 1)
        overloads, usage = _CALLS[name.text]
        if (receiver, arguments) not in overloads:
            styles = {style for style, _ in overloads}
            if receiver not in styles:
                kind = "a method, called on a value" if receiver is False else "a function, not a method"
                raise CelCheckError(f"{name.text}() is {kind}: write {usage}")
            expected = next(count for style, count in overloads if style == receiver)
            shown = f"{'.' if receiver else ''}{name.text}()"
            raise CelCheckError(f"{shown} takes {_arguments(expected)}, not {arguments}: write {usage}")
        if close == i + 3 and tokens[i + 2].literal:
            literal = tokens[i + 2].text
            if name.text == "matches" and tokens[i + 2].kind == "string":
                # Compiling a large regex takes up to ~0.1 s: at most a few distinct ones per expression.
                if literal not in regexes and len(regexes) < MAX_CHECKED_REGEXES:
                    regexes.add(literal)
                    _check_regex(literal)
            elif name.text in _CONVERSIONS and not receiver:
                _check_conversion(f"{name.text}({literal})")


def _call_arguments(tokens: list[Token], open_index: int) -> tuple[int, int]:
    """The number of arguments of the call whose `(` is at `open_index`, and the index of its `)`."""
    depth, commas = 0, 0
    for j in range(open_index, len(tokens)):
        token = tokens[j]
        if token.kind != "op":
            continue
        if token.text in _OPEN:
            depth += 1
        elif token.text in _CLOSE:
            depth -= 1
            if depth == 0:
                return (0 if j == open_index + 1 else commas + 1), j
        elif token.text == "," and depth == 1:
            commas += 1
    return commas + 1, len(tokens)  # unbalanced: the compiler has refused it already


def _arguments(count: int) -> str:
    return {0: "no argument", 1: "1 argument"}.get(count, f"{count} arguments")


#: Distinct regex literals of one expression compiled at validation (the rest fail at run time if bad).
MAX_CHECKED_REGEXES: Final = 8
#: Conversions whose literal argument is converted alone at validation (`duration("5x")`, `int("1e3")`).
_CONVERSIONS: Final = frozenset({"int", "uint", "double", "string", "bytes", "duration", "timestamp"})


def _check_conversion(call: str) -> None:
    try:
        cel.evaluate(call)
    except Exception as exc:  # as below
        raise CelCheckError(f"{clip_text(call, 60)} is an error: {_failure(exc)}") from None


class _RegexBudget:
    """Wall time validation may spend compiling regex literals, process-wide: a short regex can take ~70 ms
    (`\\w{200}`), a Workflow may hold hundreds, and validation runs on the operator's loop. Past the budget a
    literal is not compiled now; a bad one then fails where it is evaluated (in the CEL sandbox)."""

    def __init__(self, per_second: float, burst: float) -> None:
        self.per_second, self.burst = per_second, burst
        self.left, self.at = burst, time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.left = min(self.burst, self.left + (now - self.at) * self.per_second)
            self.at = now
            return self.left > 0

    def spend(self, seconds: float) -> None:
        with self.lock:
            self.left -= seconds


_regex_budget = _RegexBudget(per_second=0.05, burst=0.2)


def _check_regex(literal: str) -> None:
    """A string literal given to `matches`: compiled now (the package's regex syntax is Rust's), so a bad one
    is refused at validation instead of failing every run that reaches it (within `_regex_budget`)."""
    if "b" in literal[: len(literal) - len(literal.lstrip("rRbB"))].lower():
        return  # bytes: no overload, which the run reports
    if not _regex_budget.take():
        return
    started = time.monotonic()
    try:
        cel.evaluate(f'"".matches({literal})')
    except Exception as exc:  # the package raises ValueError, TypeError or RuntimeError
        raise CelCheckError(_failure(exc)) from None
    finally:
        _regex_budget.spend(time.monotonic() - started)


def _check_literal_operations(tokens: list[Token]) -> None:
    """`1 + "a"`, `"a" < 1`, `true * 2`: an operator whose operands are both literals, evaluated alone."""
    for i in range(1, len(tokens) - 1):
        op, left, right = tokens[i], tokens[i - 1], tokens[i + 1]
        if op.kind != "op" or op.text not in _TYPED_OPS or not (left.literal and right.literal):
            continue
        before = tokens[i - 2].text if i >= 2 else None
        after = tokens[i + 2].text if i + 2 < len(tokens) else None
        left_text = left.text
        if before == "-" and left.kind == "number" and not (i >= 3 and _ends_operand(tokens[i - 3])):
            # A negative literal (`-9223372036854775808 - 1`): unary minus binds tighter than any operator.
            left_text, before = f"-{left.text}", tokens[i - 3].text if i >= 3 else None
        # Only where the literals really are the operands: nothing binding tighter on either side.
        before_ok = before in _BOUNDARY or _PRECEDENCE.get(before or "", 99) < _PRECEDENCE[op.text]
        after_ok = after in _CLOSING_BOUNDARY or _PRECEDENCE.get(after or "", 99) <= _PRECEDENCE[op.text]
        if before in ("-", "!", "."):
            before_ok = False
        if not (before_ok and after_ok):
            continue
        part = f"{left_text} {op.text} {right.text}"
        try:
            cel.evaluate(part)
        except Exception as exc:  # the package raises ValueError, TypeError or RuntimeError
            detail = _overflow(str(exc)) or _first_sentence(exc)
            mixed = "overload" in detail.lower() or "unsupported" in detail.lower()
            hint = "; convert one side (int(), double(), string())" if mixed else ""
            raise CelCheckError(f"{clip_text(part, 60)} is an error: {detail}{hint}") from None


def _ends_operand(token: Token) -> bool:
    """Whether an operand can end at `token` (then a `-` after it is binary, not a sign)."""
    return token.kind in ("string", "number", "ident") or token.text in _CLOSE


def _check_constant(program: cel.Program, tokens: list[Token], what: str) -> None:
    # Regexes are compiled on each `matches` call: such a constant is evaluated within the regex budget.
    compiles = _calls_matches(tokens)
    if compiles and not _regex_budget.take():
        return
    started = time.monotonic()
    try:
        value = program.execute({})
    except Exception as exc:  # as above
        raise CelCheckError(f"CEL expression always fails: {_failure(exc)}") from None
    finally:
        if compiles:
            _regex_budget.spend(time.monotonic() - started)
    if what == "bool" and not isinstance(value, bool):
        raise CelCheckError(f"a condition must give true or false; this one always gives {_shown(value)}")
    if what == "list" and not isinstance(value, list | tuple):
        raise CelCheckError(f"forEach must give a list; this one always gives {_shown(value)}")
    # A constant key puts every Workflow of the namespace under one key: only a deliberate string makes sense
    # (a number, null, a list is a mistake, and at run time anything but a string falls back to the Workflow).
    if what == "key" and not (isinstance(value, str) and value):
        raise CelCheckError(
            f"the key must be a non-empty string; this one always gives {_shown(value)}: use a field of "
            "`workflow` or `input` (e.g. workflow.labels.team) or a quoted constant ('team-a')"
        )


def _shown(value: object) -> str:
    # As CEL writes it: null, true, false, duration("90s"), timestamp("2024-01-01T00:00:00Z").
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, timedelta):
        micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
        seconds = f"{abs(micros) // 1_000_000}.{abs(micros) % 1_000_000:06d}".rstrip("0").rstrip(".")
        return f'duration("{"-" if micros < 0 else ""}{seconds}s")'
    if isinstance(value, datetime):
        return f'timestamp("{value.isoformat().replace("+00:00", "Z")}")'
    return clip(value)


#: What the package's function errors say (`Function 'matches' error: ...`) rewritten as the fix: its own
#: words are a Rust parser's debug output (duration) or end before the reason (matches).
_FUNCTION_ERROR: Final = re.compile(r"Function '(\w+)' error: (.*)", re.DOTALL)
_REGEX_ERROR: Final = re.compile(r"('.*') not a valid regex:\s*(.*)", re.DOTALL)
#: The package's error for a known function called with arguments it has no overload for (`size(1, 2)`).
_UNDEFINED: Final = re.compile(r"Undefined variable or function: '(\w+)'")
_USAGE: Final = {
    "duration": 'duration() takes a string such as "1h30m", "90s" or "1.5s" (units h, m, s, ms, us, ns)',
    "timestamp": 'timestamp() takes an RFC 3339 string such as "2024-01-01T00:00:00Z"',
}


#: The package's arithmetic overflow: `Arithmetic overflow in 'add' on 9223372036854775807 and 1.`, with the
#: operands in Rust's debug notation (`Duration(TimeDelta { secs: 1, nanos: 0 })`).
_OVERFLOW: Final = re.compile(r"Arithmetic overflow in '(\w+)' on (.*) and (.*?)\.?", re.DOTALL)
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
UINT_MAX: Final = 2**64 - 1
_INT_RANGE: Final = f"CEL integers are 64-bit, from {INT_MIN} to {INT_MAX}"
_UINT_RANGE: Final = f"CEL unsigned integers are 64-bit, from 0 to {UINT_MAX}"
_TIMESTAMP_RANGE: Final = "CEL timestamps are between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"


def _overflow(text: str) -> str | None:
    """The package's overflow error (an operator's, or int()/uint()'s) as one line saying the range."""
    found = _OVERFLOW.fullmatch(text.strip())
    if found is None:
        function = _FUNCTION_ERROR.match(text)
        if function is None or function.group(1) not in ("int", "uint"):
            return None
        detail = function.group(2)
        if "overflow" not in detail and "to fit in target type" not in detail:
            return None
        return f"{function.group(1)}() overflows: " + (
            _INT_RANGE if function.group(1) == "int" else _UINT_RANGE
        )
    operation, left, right = found.groups()
    if "Timestamp(" in text:
        return f"timestamp overflow: {_TIMESTAMP_RANGE}"
    if "Duration(" in text:
        return "duration overflow: CEL durations are 64-bit nanoseconds, at most about 292 years"
    try:
        a, b = int(left), int(right)
    except ValueError:
        return f"arithmetic overflow ({operation})"
    signed = _overflows(operation, a, b, INT_MIN, INT_MAX)
    unsigned = _overflows(operation, a, b, 0, UINT_MAX)
    if unsigned and not signed:
        return f"unsigned integer overflow: {_UINT_RANGE}"
    if signed and not unsigned:
        return f"integer overflow: {_INT_RANGE}"
    return f"integer overflow: {_INT_RANGE} (unsigned: 0 to {UINT_MAX})"


def _overflows(operation: str, a: int, b: int, low: int, high: int) -> bool:
    """Whether `a <operation> b` overflows integers of [low, high] (false when a or b is not one)."""
    if not (low <= a <= high and low <= b <= high):
        return False
    if operation in ("div", "rem"):
        return low < 0 and a == low and b == -1
    result = {"add": a + b, "sub": a - b, "mul": a * b}.get(operation)
    return result is not None and not low <= result <= high


def _failure(exc: Exception) -> str:
    """Why an evaluation failed, in one line that says what to write instead where the package's does not."""
    overflow = _overflow(str(exc))
    if overflow is not None:
        return overflow
    undefined = _UNDEFINED.match(str(exc))
    if undefined is not None and undefined.group(1) in FUNCTIONS:
        return f"{undefined.group(1)}() does not take these arguments: check their number and types"
    found = _FUNCTION_ERROR.match(str(exc))
    if found is None:
        return _first_sentence(exc)
    function, detail = found.groups()
    regex = _REGEX_ERROR.match(detail) if function == "matches" else None
    if regex is not None:
        pattern, reason = regex.groups()
        # The regex crate's reason: an `error: ...` line under a caret diagram, or one sentence.
        lines = [line.strip() for line in reason.splitlines() if line.strip()]
        why = next((line.removeprefix("error: ") for line in lines if line.startswith("error: ")), None)
        why = why or (lines[0] if lines else "")
        why = why.split(". Check function arguments", 1)[0].rstrip(".")
        return clip_text(
            printable(f"{clip(pattern[1:-1], 40)} is not a valid regular expression: {why}"), 160
        )
    if function in _USAGE:
        return _USAGE[function]
    # `Function 'double' error: string parse error: invalid float literal. Check function arguments...`
    reason = detail.split("\n", 1)[0].split(". ", 1)[0].rstrip(".")
    return f"{function}(): {clip_text(printable(reason), 120)}"


def _first_sentence(exc: Exception) -> str:
    text = str(exc).split("\n", 1)[0]
    return clip_text(text.split(". ", 1)[0].rstrip("."), 120)
