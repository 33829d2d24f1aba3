"""Reading a config file into plain data, refusing what YAML would silently get wrong.

PyYAML's safe loader keeps the last of two equal keys, reads `register: 00010` as the octal number 8, builds a
5,000-digit integer only to fail later with a traceback, and lets a few aliases expand into millions of values.
Here the file is composed into YAML nodes first, the node tree is checked (every problem with its path and
line), and only a clean tree is turned into Python data. Paths are written like the validation errors:
`devices[3].tags[2].register`. The nodes are built one top-level value and one device at a time and dropped
once turned into data: a flat config listing 20,000 tags would otherwise hold ~150 MB of nodes at once.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.events import (
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_CONFIG_BYTES = 8 * 1024 * 1024
"""A config beyond this is not hand-written: 20,000 tags (the most a gateway is benchmarked with, docs/BENCHMARKS.md)
take about 2 MB. Below the cap, a file full of errors still takes seconds: pydantic reports every one."""
MAX_VALUES = 2_000_000
"""Values after YAML aliases are expanded (`*name` repeats a whole subtree): far above any real config, far below
what a few nested aliases can make."""
MAX_PROBLEMS = 1000  # problems listed at most: the same cap for the whole read and the streamed one
MAX_INT_DIGITS = 30
"""No setting takes a longer number (the largest, outbox.max_bytes, has 16 digits)."""
MAX_DEPTH = 32
"""Nesting levels: a config needs 7 (devices, a device, tags, a tag, sim, values, a value); far deeper data
would only reach code that walks it recursively."""

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 20 k tags parse in a fraction
_INT_TAG = "tag:yaml.org,2002:int"
_MERGE_TAG = "tag:yaml.org,2002:merge"
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


@dataclass(slots=True)
class _Walk:
    """What one walk of a (sub)tree found; `shared`/`stopped`/`count` feed the alias-bomb check."""

    problems: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    shared: bool = False  # a node reached twice: an alias, so the expanded size is worth counting
    stopped: bool = False  # the walk ended early (the problem limit or too deep nesting)
    broke: bool = False  # too deep: nothing after it is walked
    complex_key: bool = False  # a mapping key that is no scalar: `count` does not hold its subtree
    count: int = 0  # nodes walked and their keys (the expanded size when nothing above is set)


def _walk(root: Node, path: str, key: str | None, depth: int, limit: int, seen: set[int]) -> _Walk:
    """Walk `root` (found at `path`, `depth` levels down) in document order; see `tree_problems`."""
    out = _Walk()
    stack: list[tuple[Node, str, str | None, int]] = [(root, path, key, depth)]
    while stack and len(out.problems) < limit:
        node, path, key, depth = stack.pop()
        if id(node) in seen:
            out.shared = True
            continue
        seen.add(id(node))
        out.count += 1
        if depth > MAX_DEPTH:
            out.fatal.append(f"{path}: {_where(node)}: nested more than {MAX_DEPTH} levels deep; a config needs "
                             "fewer than ten")
            out.broke = True
            break
        if isinstance(node, ScalarNode):
            problem = _scalar_problem(path, key, node)
            if problem:
                out.problems.append(problem)
            problem = too_long_number(path, node)
            if problem:
                out.fatal.append(problem)
        elif isinstance(node, SequenceNode):
            stack.extend((child, _join(path, i), None, depth + 1)
                         for i, child in reversed(list(enumerate(node.value))))
        elif isinstance(node, MappingNode):
            first: dict[tuple[str, str], Node] = {}
            kids: list[tuple[Node, str, str | None, int]] = []
            out.count += len(node.value)
            for k, v in node.value:
                name = str(k.value) if isinstance(k, ScalarNode) else "?"
                out.complex_key = out.complex_key or not isinstance(k, ScalarNode)
                if isinstance(k, ScalarNode) and k.tag != _MERGE_TAG:
                    ident = (k.tag, k.value)
                    if ident in first:
                        out.problems.append(f"{_join(path, name)}: the key '{name}' is given twice in one mapping "
                                            f"({_where(first[ident])} and {_where(k)}); YAML would keep only the "
                                            "last: remove one")
                    first.setdefault(ident, k)
                kids.append((v, _join(path, name), name, depth + 1))
            stack.extend(reversed(kids))
    out.stopped = bool(stack)
    return out


_ALIAS_BOMB = (f"(top level): the YAML aliases (*name) expand to more than {MAX_VALUES:,} values; write the "
               "repeated parts out or use templates:")


def tree_problems(root: Node, limit: int = MAX_PROBLEMS) -> tuple[list[str], list[str]]:
    """(problems, fatal problems): duplicate keys and zero-led (octal) registers, which still leave data to
    validate, and over-long numbers, too deep nesting and alias bombs, which do not; each with its path and
    line."""
    walk = _walk(root, "", None, 0, limit, set())
    if (walk.shared or walk.stopped) and not walk.fatal and expanded_size(root) > MAX_VALUES:
        walk.fatal.append(_ALIAS_BOMB)
    return walk.problems, walk.fatal


def _yaml_problem(exc: yaml.YAMLError) -> YamlProblems:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return YamlProblems([f"{where}not valid YAML: {getattr(exc, 'problem', None) or exc}"])


def parse_yaml(text: str) -> tuple[Any, list[str]]:
    """(data, problems) of a YAML document: the problems of `tree_problems` that still leave data to validate, so
    they are reported together with the field errors. Raises YamlProblems when there is no data to trust
    (syntax errors with line and column, over-long numbers, alias bombs).

    A config is read one top-level value, and one device, at a time (`_streamed`): the YAML nodes of a whole
    file cost ~60 times its size (20,000 tags listed per device: 2.6 MB of text, ~150 MB of nodes), those of
    one device a few hundred kB. A document that is not a plain mapping, or that the streamed read cannot
    take as it is (a syntax error, a top-level key given twice, a merge key at the top), is read whole as
    before, so every message stays the same."""
    try:
        return _streamed(text)
    except _ReadWhole:
        return _whole(text)


def _whole(text: str) -> tuple[Any, list[str]]:
    """The document composed into one node tree, checked, then constructed."""
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise _yaml_problem(exc) from None
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
            raise _yaml_problem(exc) from None
        except (ValueError, TypeError, RecursionError) as exc:  # e.g. a timestamp like 2024-13-45
            raise YamlProblems([f"not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()


class _ReadWhole(Exception):
    """The streamed read cannot give the same answer as the whole read: read the document whole."""


class _StreamLoader(_Loader):
    """The same parser (libyaml's events where installed), composing one subtree at a time with PyYAML's own
    composer, so each subtree can be checked, constructed and dropped before the next is read."""

    state_generators: list[Any]  # the constructor's, declared for the type checker
    constructed_objects: dict[Node, Any]
    recursive_objects: dict[Node, None]
    deep_construct: bool
    compose_node = Composer.compose_node
    compose_scalar_node = Composer.compose_scalar_node
    compose_sequence_node = Composer.compose_sequence_node
    compose_mapping_node = Composer.compose_mapping_node

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.anchors: dict[str, Node] = {}

    def construct_short_str(self, node: Node) -> str:
        """Short texts (keys, types, table names) interned: 20,000 tags listed per device repeat the same few
        dozen words ~240,000 times, one object each otherwise (~13 MB)."""
        value: str = self.construct_scalar(node)
        return sys.intern(value) if len(value) <= 64 else value

    def construct_part(self, node: Node) -> Any:
        """`construct_document` for one subtree, keeping what anchored nodes were built into (an alias in a
        later part then gets the same object, as in a whole read)."""
        data = self.construct_object(node)
        generators: list[Any] = self.state_generators
        while generators:
            self.state_generators = []
            for generator in generators:
                for _ in generator:
                    pass
            generators = self.state_generators
        anchored = {id(n) for n in self.anchors.values()}
        built: dict[Node, Any] = self.constructed_objects
        self.constructed_objects = {n: v for n, v in built.items() if id(n) in anchored}
        self.recursive_objects = {}
        self.deep_construct = False
        return data

    def next_part(self) -> Node:
        """The next node of the document, composed with its subtree."""
        node = self.compose_node(None, 0)
        if node is None:
            raise _ReadWhole
        return node


_StreamLoader.add_constructor("tag:yaml.org,2002:str", _StreamLoader.construct_short_str)


@dataclass(slots=True)
class _Stream:
    """What the streamed read has found so far, over all parts."""

    problems: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # ids of the anchored nodes already walked
    size: int = 1  # values once aliases are expanded (the root mapping counts one)
    sized: bool = False  # some part shared a node or stopped early: `size` decides on an alias bomb
    broke: bool = False  # nested too deeply: nothing more is walked

    @property
    def untrusted(self) -> bool:
        """No more data is built: a fatal problem, or aliases that already expand past MAX_VALUES (the walk
        goes on, so the message is the one the whole read gives)."""
        return bool(self.fatal) or (self.sized and self.size > MAX_VALUES)


def _check_part(loader: _StreamLoader, node: Node, path: str, key: str | None, depth: int, st: _Stream) -> None:
    if st.broke:
        return
    seen = set(st.seen)
    walk = _walk(node, path, key, depth, max(0, MAX_PROBLEMS - len(st.problems)), seen)
    st.problems += walk.problems
    st.fatal += walk.fatal
    st.broke = walk.broke
    if walk.shared or walk.stopped or walk.complex_key:
        st.sized = st.sized or walk.shared or walk.stopped
        st.size += expanded_size(node)
    else:
        st.size += walk.count
    anchored = {id(n) for n in loader.anchors.values()}
    st.seen = {i for i in seen if i in anchored}  # ids of dropped nodes may be reused: keep only live ones


def _streamed(text: str) -> tuple[Any, list[str]]:
    """`_whole`, one top-level value and one `devices:` entry at a time; raises _ReadWhole where the answer
    could differ."""
    loader = _StreamLoader(text)
    try:
        return _stream_document(loader)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        raise _ReadWhole from None
    finally:
        loader.dispose()


def _stream_document(loader: _StreamLoader) -> tuple[Any, list[str]]:
    loader.get_event()  # StreamStart
    if not loader.check_event(DocumentStartEvent):
        raise _ReadWhole  # an empty file
    loader.get_event()
    start = loader.peek_event()
    if not isinstance(start, MappingStartEvent) or start.anchor is not None or start.tag is not None:
        raise _ReadWhole
    loader.get_event()
    st = _Stream()
    data: dict[Any, Any] = {}
    keys: set[tuple[str, str]] = set()
    while not loader.check_event(MappingEndEvent):
        knode = loader.next_part()
        if not isinstance(knode, ScalarNode) or knode.tag == _MERGE_TAG or (knode.tag, knode.value) in keys:
            raise _ReadWhole  # a merge or a key given twice at the top: the whole read knows what YAML keeps
        keys.add((knode.tag, knode.value))
        st.size += 1
        name = str(knode.value)
        key = loader.construct_part(knode)
        event = loader.peek_event()
        if name == "devices" and isinstance(event, SequenceStartEvent) and event.anchor is None \
                and event.tag is None:
            loader.get_event()
            st.size += 1
            devices: list[Any] = []
            while not loader.check_event(SequenceEndEvent):
                node = loader.next_part()
                _check_part(loader, node, f"devices[{len(devices)}]", None, 2, st)
                devices.append(None if st.untrusted else loader.construct_part(node))
                del node
            loader.get_event()
            data[key] = devices
        else:
            node = loader.next_part()
            _check_part(loader, node, name, name, 1, st)
            data[key] = None if st.untrusted else loader.construct_part(node)
            del node
    loader.get_event()  # MappingEnd
    loader.get_event()  # DocumentEnd
    if not loader.check_event(StreamEndEvent):
        raise _ReadWhole  # a second document: the whole read says so
    if st.sized and not st.fatal and st.size > MAX_VALUES:
        st.fatal.append(_ALIAS_BOMB)
    if st.fatal:
        raise YamlProblems(st.problems + st.fatal)
    return data, st.problems


def decode_config(raw: bytes) -> str:
    """UTF-8 text of a config file (a BOM is dropped); raises YamlProblems naming the line of a bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise YamlProblems([f"line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8; save the file as UTF-8 "
                            "(an editor's 'Save with encoding', or `iconv -f GBK -t UTF-8`)"]) from None
