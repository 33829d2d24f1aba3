"""The condition language of `states:` rules: a small, safe expression grammar, compiled once to closures.

    expr    := term ("or" term)*
    term    := factor ("and" factor)*
    factor  := "not" factor | "(" expr ")" | atom
    atom    := "true" | "false"
            |  TAG "changed" "within" NUMBER ["s" | "min" | "h"]    the tag's value changed that recently
            |  TAG OP VALUE                                         OP: == != < <= > >=  VALUE: number, "text",
            |  TAG "in" "[" VALUE ("," VALUE)* "]"                       true, false
            |  TAG                                                  the tag's value is truthy (non-zero, true)

No `eval`: the text is tokenised and parsed here, and a parse error names the column. A tag without a good value
makes every comparison on it false (the machine did not say), so rules never fire on stale or bad data.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# values: tag -> latest good value; changed: tag -> time its value last changed; now: the evaluation time
Evaluator = Callable[[dict[str, Any], dict[str, float], float], bool]

_TOKEN = re.compile(r"""\s*(?:(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<str>"[^"]*"|'[^']*')|
                          (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)|(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*))""", re.X)
_KEYWORDS = {"and", "or", "not", "true", "false", "changed", "within", "in"}
_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


class ExprError(ValueError):
    """A condition that does not parse; the message says where and what was expected."""


@dataclass
class Compiled:
    """A parsed condition: its evaluator, the tags it reads, and their `changed within` windows (a rule with a
    window must be re-evaluated when a window runs out, not only when a value changes)."""

    text: str
    evaluate: Evaluator
    tags: set[str] = field(default_factory=set)
    windows: dict[str, set[float]] = field(default_factory=dict)  # tag -> its `changed within` windows


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            at = len(text) - len(text[pos:].lstrip())
            hint = " (compare with ==)" if text[at] == "=" else ""
            raise ExprError(f"unexpected {text[at:at + 12]!r} at column {at + 1}{hint}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind), m.start(kind) + 1))
        pos = m.end()
    return out


def _value(v: Any) -> Any:
    """Numbers compare as numbers whatever their type (a uint16 1 equals 1.0); bools as 0/1."""
    return float(v) if isinstance(v, bool | int | float) else v


def _compare(op: str, a: Any, b: Any) -> bool:
    a = _value(a)
    if isinstance(a, float) != isinstance(b, float):
        return op == "!="  # a text never equals a number (and is not ordered against one)
    try:
        return _OPS[op](a, b)
    except TypeError:
        return False


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.tags: set[str] = set()
        self.windows: dict[str, set[float]] = {}

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def next(self, what: str) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise ExprError(f"expected {what} at the end")
        self.i += 1
        return tok

    def word(self, w: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "name" and tok[1].lower() == w:
            self.i += 1
            return True
        return False

    def expr(self) -> Evaluator:
        parts = [self.term()]
        while self.word("or"):
            parts.append(self.term())
        if len(parts) == 1:
            return parts[0]
        return lambda v, c, n: any(p(v, c, n) for p in parts)

    def term(self) -> Evaluator:
        parts = [self.factor()]
        while self.word("and"):
            parts.append(self.factor())
        if len(parts) == 1:
            return parts[0]
        return lambda v, c, n: all(p(v, c, n) for p in parts)

    def factor(self) -> Evaluator:
        if self.word("not"):
            inner = self.factor()
            return lambda v, c, n: not inner(v, c, n)
        tok = self.peek()
        if tok is not None and tok[1] == "(":
            self.i += 1
            inner = self.expr()
            close = self.next("')'")
            if close[1] != ")":
                raise ExprError(f"expected ')' at column {close[2]}, found {close[1]!r}")
            return inner
        return self.atom()

    def literal(self) -> Any:
        kind, text, col = self.next("a value")
        if kind == "num":
            return float(text)
        if kind == "str":
            return text[1:-1]
        if kind == "name" and text.lower() in ("true", "false"):
            return 1.0 if text.lower() == "true" else 0.0
        raise ExprError(f"expected a value (number, \"text\", true or false) at column {col}, found {text!r}")

    def atom(self) -> Evaluator:
        kind, text, col = self.next("a tag name, true or false")
        if kind != "name" or text.lower() in _KEYWORDS - {"true", "false"}:
            raise ExprError(f"expected a tag name at column {col}, found {text!r}")
        if text.lower() in ("true", "false"):
            const = text.lower() == "true"
            return lambda v, c, n: const
        tag = text
        self.tags.add(tag)
        tok = self.peek()
        if tok is not None and tok[0] == "name" and tok[1].lower() == "changed":
            self.i += 1
            if not self.word("within"):
                raise ExprError(f"expected 'within' after 'changed' (e.g. '{tag} changed within 30s')")
            k, num, c2 = self.next("a duration")
            if k != "num" or float(num) <= 0:
                raise ExprError(f"expected a positive number of seconds at column {c2}, found {num!r}")
            seconds = float(num)
            unit = self.peek()
            if unit is not None and unit[0] == "name" and unit[1].lower() in _UNITS:
                self.i += 1
                seconds *= _UNITS[unit[1].lower()]
            self.windows.setdefault(tag, set()).add(seconds)
            return lambda v, c, n: tag in c and n - c[tag] <= seconds
        if tok is not None and tok[0] == "op" and tok[1] in _OPS:
            self.i += 1
            op = tok[1]
            rhs = self.literal()
            return lambda v, c, n: tag in v and _compare(op, v[tag], rhs)
        if tok is not None and tok[0] == "name" and tok[1].lower() == "in":
            self.i += 1
            b = self.next("'['")
            if b[1] != "[":
                raise ExprError(f"expected '[' after 'in' at column {b[2]}")
            options = [self.literal()]
            while (t := self.next("',' or ']'"))[1] == ",":
                options.append(self.literal())
            if t[1] != "]":
                raise ExprError(f"expected ',' or ']' at column {t[2]}, found {t[1]!r}")
            return lambda v, c, n: tag in v and any(_compare("==", v[tag], o) for o in options)
        return lambda v, c, n: tag in v and bool(v[tag])


def compile_condition(text: str) -> Compiled:
    """Parse one condition; raises ExprError naming the column of the first problem."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError("empty condition: write one, e.g. machine_state == 1 or alarm")
    p = _Parser(text)
    ev = p.expr()
    tok = p.peek()
    if tok is not None:
        raise ExprError(f"unexpected {tok[1]!r} at column {tok[2]} (join conditions with and / or)")
    return Compiled(text, ev, p.tags, p.windows)
