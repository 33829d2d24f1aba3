"""Parse a tag's `node:` text and resolve it against a live server.

A config names a node in one of three ways, and only the first is fixed before we talk to the server:

- a node id with a namespace index: `ns=2;s=Spindle.Speed`, `i=2258`, `ns=3;g=<guid>`, `ns=4;b=<base64>`;
- a node id with a namespace URI: `nsu=urn:acme:cnc;s=Spindle.Speed`. The index is looked up in the server's
  NamespaceArray at connect, so a config keeps working when a server (or its firmware update) reorders its
  namespaces;
- a browse path from the Root folder: `/Objects/4:Machines/2:Lathe1/5:Monitoring/5:Spindle1/5:IsRotating`,
  each segment `<ns index>:<BrowseName>` (no index means namespace 0). It is turned into a node id once per
  connect with one TranslateBrowsePathsToNodeIds call for all such tags.

What cannot be resolved is not an exception for the whole device: the caller gets an `Unresolved` carrying
an OPC UA status code name, and reports that tag with quality `bad_<CodeName>` while the others read on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from asyncua import ua

_NSU = re.compile(r"^nsu=([^;]+);(.+)$", re.DOTALL)
_SEGMENT = re.compile(r"^(\d+):(.+)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A parsed `node:` text. Exactly one of `node_id` (for node id forms) or `path` (browse paths) is set.

    For the `nsu=` form `node_id` carries namespace index 0 as a placeholder and `namespace_uri` the URI to
    look up; `resolve_node_id` fills in the index.
    """

    text: str
    node_id: ua.NodeId | None = None
    namespace_uri: str | None = None
    path: tuple[ua.QualifiedName, ...] | None = None

    @property
    def is_path(self) -> bool:
        return self.path is not None


@dataclass(frozen=True, slots=True)
class Unresolved:
    """Why a node reference did not resolve; `code` is an OPC UA StatusCode name such as BadNodeIdUnknown."""

    code: str
    reason: str


def make_node_id(identifier: Any, namespace: int, kind: ua.NodeIdType | None = None) -> ua.NodeId:
    """`ua.NodeId` with plain Python arguments (asyncua annotates its fields with its own int/str subclasses)."""
    return ua.NodeId(cast(Any, identifier), cast(Any, namespace), cast(Any, kind))


def parse_node(text: str) -> NodeRef:
    """Parse a node id (`ns=`, `nsu=`, `i=`, `s=`, `g=`, `b=`) or a browse path (`/Objects/2:Machine`).

    Raises ValueError for text that is neither; config validation already rejects most such text.
    """
    text = text.strip()
    if text.startswith("/"):
        return NodeRef(text, path=parse_browse_path(text))
    match = _NSU.match(text)
    uri: str | None = None
    rest = text
    if match:
        uri, rest = match.group(1), match.group(2)
        if rest.startswith("ns="):
            raise ValueError(f"'{text}': give nsu= or ns=, not both")
    try:
        node_id = ua.NodeId.from_string(rest)
    except (ua.UaStringParsingError, ValueError) as exc:
        raise ValueError(f"'{text}' is not a node id: {exc}") from None
    if isinstance(node_id, ua.ExpandedNodeId):  # srv= or an unexpected nsu= position
        raise ValueError(f"'{text}': put nsu= first (nsu=<uri>;s=Name); srv= is not supported")
    return NodeRef(text, node_id=node_id, namespace_uri=uri)


def parse_browse_path(text: str) -> tuple[ua.QualifiedName, ...]:
    """`/Objects/2:Machine/2:Speed` -> (0:Objects, 2:Machine, 2:Speed), relative to the Root folder."""
    segments = [s for s in text.split("/") if s]
    if not segments:
        raise ValueError(f"'{text}': a browse path needs at least one segment, e.g. /Objects/2:Machine")
    names = []
    for seg in segments:
        m = _SEGMENT.match(seg)
        names.append(ua.QualifiedName(m.group(2), int(m.group(1))) if m else ua.QualifiedName(seg, 0))
    return tuple(names)


def resolve_node_id(ref: NodeRef, namespaces: Sequence[str]) -> ua.NodeId | Unresolved:
    """The concrete node id of a node-id reference, given the server's NamespaceArray."""
    if ref.node_id is None:
        raise ValueError(f"'{ref.text}' is a browse path; resolve it with browse_path()")
    if ref.namespace_uri is None:
        if ref.node_id.NamespaceIndex >= len(namespaces) and namespaces:
            return Unresolved("BadNodeIdUnknown", f"namespace index {ref.node_id.NamespaceIndex} is not in the "
                                                  f"server's NamespaceArray ({len(namespaces)} entries)")
        return ref.node_id
    try:
        index = list(namespaces).index(ref.namespace_uri)
    except ValueError:
        return Unresolved("BadNodeIdUnknown", f"namespace '{ref.namespace_uri}' is not in the server's "
                                              "NamespaceArray")
    return make_node_id(ref.node_id.Identifier, index, ref.node_id.NodeIdType)


def browse_path(ref: NodeRef) -> ua.BrowsePath:
    """The TranslateBrowsePathsToNodeIds request item for a browse-path reference (from the Root folder)."""
    if ref.path is None:
        raise ValueError(f"'{ref.text}' is a node id, not a browse path")
    hierarchical = make_node_id(ua.ObjectIds.HierarchicalReferences, 0)
    elements = []
    for name in ref.path:
        el = ua.RelativePathElement()
        el.ReferenceTypeId = hierarchical
        el.IsInverse = cast(Any, False)
        el.IncludeSubtypes = cast(Any, True)
        el.TargetName = name
        elements.append(el)
    bp = ua.BrowsePath()
    bp.StartingNode = make_node_id(ua.ObjectIds.RootFolder, 0)
    bp.RelativePath = ua.RelativePath(Elements=elements)
    return bp


def browse_result_node(ref: NodeRef, result: ua.BrowsePathResult,
                       namespaces: Sequence[str]) -> ua.NodeId | Unresolved:
    """The node id a browse path resolved to, or why it did not (first target wins if several match)."""
    status = result.StatusCode
    if status is not None and not status.is_good():
        return Unresolved(status_name(status.value), f"browse path '{ref.text}' did not resolve")
    if not result.Targets:
        return Unresolved("BadNoMatch", f"browse path '{ref.text}' matched nothing")
    target = result.Targets[0].TargetId
    index = target.NamespaceIndex
    uri = getattr(target, "NamespaceUri", None)  # asyncua decodes a plain ExpandedNodeId as a NodeId
    if uri:
        try:
            index = list(namespaces).index(uri)
        except ValueError:
            return Unresolved("BadNodeIdUnknown", f"browse path '{ref.text}' points into unknown namespace "
                                                  f"'{uri}'")
    if getattr(target, "ServerIndex", 0):
        return Unresolved("BadNodeIdUnknown", f"browse path '{ref.text}' points to another server")
    return make_node_id(target.Identifier, index, target.NodeIdType)


def status_name(code: int) -> str:
    """The symbolic name of a status code (info bits ignored), e.g. 0x80340000 -> 'BadNodeIdUnknown'."""
    name, doc = ua.status_codes.get_name_and_doc(code & 0xFFFF0000)
    if not name or doc.startswith("Unknown StatusCode"):
        return f"0x{code & 0xFFFF0000:08X}"
    return name
