"""Reading a config file into plain data, refusing what YAML would silently get wrong.

PyYAML's safe loader keeps the last of two equal keys, reads `register: 00010` as the octal number 8, builds a
5,000-digit integer only to fail later with a traceback, and lets a few aliases expand into millions of values.
Here the file is composed into YAML nodes first, the node tree is checked (every problem with its path and
line), and only a clean tree is turned into Python data. Paths are written like the validation errors:
`devices[3].tags[2].register`.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_CONFIG_BYTES = 8 * 1024 * 1024
"""A config beyond this is not hand-written: 20,000 tags (the most a gateway is benchmarked with, docs/BENCHMARKS.md)
take about 2 MB. Below the cap, a file full of errors still takes seconds: pydantic reports every one."""
MAX_VALUES = 2_000_000
"""Values after YAML aliases are expanded (`*name` repeats a whole subtree): far above any real config, far below
what a few nested aliases can make."""
MAX_INT_DIGITS = 30
"""No setting takes a longer number (the largest, outbox.max_bytes, has 16 digits)."""
MAX_DEPTH = 32
"""Nesting levels: a config needs 7 (devices, a device, tags, a tag, sim, values, a value); far deeper data
would only reach code that walks it recursively."""

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 20 k tags parse in a fraction
_INT_TAG = "tag:yaml.org,2002:int"
_ZERO_LED = re.compile(r"^0[0-9_]+$")


class YamlProblems(Exception):
    """The file is not YAML we can trust; `lines` has one message per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _where(node: Node) -> str:
    return f"line {node.start_mark.line + 1}"


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def expanded_size(root: Node) -> int:
    """How many values the tree holds once every alias is expanded (a shared subtree counts at each use)."""
    memo: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            memo[id(node)] = 1 + sum(memo.get(id(k), 0) for k in _children(node))  # a cycle counts once
        elif id(node) not in memo:
            memo[id(node)] = 0  # in progress: a node that contains itself adds nothing more
            stack.append((node, True))
            stack.extend((k, False) for k in _children(node) if id(k) not in memo)
    return memo[id(root)]


def too_long_number(path: str, node: ScalarNode) -> str | None:
    """An integer Python would refuse to build (over 4,300 digits) or no setting takes: the whole file stops."""
    if node.tag != _INT_TAG or node.style:  # plain scalars only (libyaml gives "" as their style)
        return None
    digits = sum(c.isdigit() for c in node.value)
    if digits <= MAX_INT_DIGITS:
        return None
    return (f"{path or '(top level)'}: {_where(node)}: a number with {digits} digits ({node.value[:12]}…); no "
            "setting takes a number that long")


def _scalar_problem(path: str, key: str | None, node: ScalarNode) -> str | None:
    if node.tag != _INT_TAG or node.style:
        return None
    text = node.value
    if key == "register" and _ZERO_LED.match(text):
        return (f"{path}: {_where(node)}: YAML reads register: {text} as the octal number {int(text.replace('_', ''), 8)};"
                f" quote it for the classic reference: register: \"{text}\"")
    return None


def tree_problems(root: Node, limit: int = 1000) -> tuple[list[str], list[str]]:
    """(problems, fatal problems): duplicate keys and zero-led (octal) registers, which still leave data to
    validate, and over-long numbers, too deep nesting and alias bombs, which do not; each with its path and
    line."""
    problems: list[str] = []
    fatal: list[str] = []
    shared = False  # a node reached twice: an alias, so the expanded size is worth counting
    seen: set[int] = set()
    stack: list[tuple[Node, str, str | None, int]] = [(root, "", None, 0)]
    while stack and len(problems) < limit:
        node, path, key, depth = stack.pop()
        if id(node) in seen:
            shared = True
            continue
        seen.add(id(node))
        if depth > MAX_DEPTH:
            fatal.append(f"{path}: {_where(node)}: nested more than {MAX_DEPTH} levels deep; a config needs fewer "
                         "than ten")
            break
        if isinstance(node, ScalarNode):
            problem = _scalar_problem(path, key, node)
            if problem:
                problems.append(problem)
            problem = too_long_number(path, node)
            if problem:
                fatal.append(problem)
        elif isinstance(node, SequenceNode):
            stack.extend((child, _join(path, i), None, depth + 1)
                         for i, child in reversed(list(enumerate(node.value))))
        elif isinstance(node, MappingNode):
            first: dict[tuple[str, str], Node] = {}
            kids: list[tuple[Node, str, str | None, int]] = []
            for k, v in node.value:
                name = str(k.value) if isinstance(k, ScalarNode) else "?"
                if isinstance(k, ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    ident = (k.tag, k.value)
                    if ident in first:
                        problems.append(f"{_join(path, name)}: the key '{name}' is given twice in one mapping "
                                        f"({_where(first[ident])} and {_where(k)}); YAML would keep only the last: "
                                        "remove one")
                    first.setdefault(ident, k)
                kids.append((v, _join(path, name), name, depth + 1))
            stack.extend(reversed(kids))
    if (shared or stack) and not fatal and expanded_size(root) > MAX_VALUES:  # stack: stopped at the limit
        fatal.append(f"(top level): the YAML aliases (*name) expand to more than {MAX_VALUES:,} values; write the "
                     "repeated parts out or use templates:")
    return problems, fatal


def parse_yaml(text: str) -> tuple[Any, list[str]]:
    """(data, problems) of a YAML document: the problems of `tree_problems` that still leave data to validate, so
    they are reported together with the field errors. Raises YamlProblems when there is no data to trust
    (syntax errors with line and column, over-long numbers, alias bombs)."""
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise YamlProblems([f"{where}not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
        except RecursionError:
            raise YamlProblems(["not valid YAML: nested too deeply"]) from None
        if node is None:
            return None, []
        problems, fatal = tree_problems(node)
        if fatal:
            raise YamlProblems(problems + fatal)
        try:
            return loader.construct_document(node), problems
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise YamlProblems([f"{where}not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
        except (ValueError, TypeError, RecursionError) as exc:  # e.g. a timestamp like 2024-13-45
            raise YamlProblems([f"not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()


def decode_config(raw: bytes) -> str:
    """UTF-8 text of a config file (a BOM is dropped); raises YamlProblems naming the line of a bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise YamlProblems([f"line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8; save the file as UTF-8 "
                            "(an editor's 'Save with encoding', or `iconv -f GBK -t UTF-8`)"]) from None
