"""`collector discover opc.tcp://host:port`: browse a server and print a ready-to-paste device block.

Why it looks like this: the address space is browsed breadth-first with one Browse request per level (chunked,
with BrowseNext for continuation points), not one request per node, so a machine with thousands of nodes is
listed in seconds. Node ids are printed in the `nsu=<namespace uri>;...` form, so the pasted config survives a
server that reorders its NamespaceArray. Types come from each variable's DataType, units from its
EngineeringUnits property. The companion namespaces tell what kind of machine it is: a server that exposes
OPC UA for Machine Tools or the CNC companion specification gets an `is_cnc` hint (the asset register decides).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml
from asyncua import Client, ua

from adapters.opcua.nodeids import make_node_id

MACHINE_TOOL_NS = "http://opcfoundation.org/UA/MachineTool/"
CNC_NS = "http://opcfoundation.org/UA/CNC"
COMPANION_HINTS = {MACHINE_TOOL_NS: "OPC UA for Machine Tools (OPC 40501-1)",
                   CNC_NS: "OPC UA for Computerized Numerical Control (CNC) Systems (OPC 40502)"}
MAX_DEPTH = 12
MAX_NODES = 20_000
CHUNK = 500

#: OPC UA built-in DataType (ns=0 numeric id) -> our tag type
DATA_TYPES: dict[int, str] = {
    1: "bool", 2: "int16", 3: "uint16", 4: "int16", 5: "uint16", 6: "int32", 7: "uint32", 8: "int64",
    9: "uint64", 10: "float", 11: "double", 12: "string", 13: "datetime", 21: "string",
    # common subtypes
    26: "double", 27: "int64", 28: "uint64", 290: "double", 294: "datetime", 295: "string", 17: "string",
}
_HAS_PROPERTY = 46


@dataclass(slots=True)
class Found:
    """A variable found while browsing."""

    node_id: ua.NodeId
    path: list[str]
    data_type: ua.NodeId | None = None
    unit: str | None = None
    props: dict[str, ua.NodeId] = field(default_factory=dict)


def nsu_form(node_id: ua.NodeId, namespaces: list[str]) -> str:
    """`nsu=<uri>;s=...` for non-zero namespaces (the index may move), `i=...` in namespace 0."""
    text = node_id.to_string()
    if node_id.NamespaceIndex == 0 or node_id.NamespaceIndex >= len(namespaces):
        return text
    return f"nsu={namespaces[node_id.NamespaceIndex]};{text.split(';', 1)[1]}"


def tag_name(path: list[str], taken: set[str]) -> str:
    """A unique tag name from the browse path below the machine object (`Monitoring.Spindle1.Override`)."""
    base = ".".join(re.sub(r"[^A-Za-z0-9_\-]+", "_", p).strip("_") or "x" for p in path) or "tag"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


async def _browse_level(client: Client, nodes: list[ua.NodeId]) -> list[list[ua.ReferenceDescription]]:
    """Forward hierarchical references (objects and variables) of each node; follows continuation points."""
    out: list[list[ua.ReferenceDescription]] = []
    for start in range(0, len(nodes), CHUNK):
        params = ua.BrowseParameters()
        params.RequestedMaxReferencesPerNode = 0
        for node in nodes[start:start + CHUNK]:
            desc = ua.BrowseDescription()
            desc.NodeId = node
            desc.BrowseDirection = ua.BrowseDirection.Forward
            desc.ReferenceTypeId = make_node_id(ua.ObjectIds.HierarchicalReferences, 0)
            desc.IncludeSubtypes = True
            desc.NodeClassMask = ua.NodeClass.Object | ua.NodeClass.Variable
            desc.ResultMask = ua.BrowseResultMask.All
            params.NodesToBrowse.append(desc)
        results = await client.uaclient.browse(params)
        for res in results:
            refs = list(res.References or [])
            cont = res.ContinuationPoint
            while cont:
                nxt = ua.BrowseNextParameters()
                nxt.ContinuationPoints = [cont]
                more = (await client.uaclient.browse_next(nxt))[0]
                refs += list(more.References or [])
                cont = more.ContinuationPoint
            out.append(refs)
    return out


async def _read(client: Client, nodes: list[ua.NodeId], attr: ua.AttributeIds) -> list[ua.DataValue]:
    values: list[ua.DataValue] = []
    for start in range(0, len(nodes), CHUNK):
        params = ua.ReadParameters()
        for node in nodes[start:start + CHUNK]:
            rv = ua.ReadValueId()
            rv.NodeId = node
            rv.AttributeId = attr
            params.NodesToRead.append(rv)
        values += await client.uaclient.read(params)
    return values


async def browse(client: Client) -> tuple[list[str], list[Found]]:
    """The server's NamespaceArray and every variable below Objects (the Server object excluded)."""
    namespaces = list(await client.get_namespace_array())
    found: dict[ua.NodeId, Found] = {}
    seen: set[ua.NodeId] = set()
    level: list[tuple[ua.NodeId, list[str], bool]] = [(make_node_id(ua.ObjectIds.ObjectsFolder, 0), [], False)]
    depth = 0
    while level and depth < MAX_DEPTH and len(seen) < MAX_NODES:
        refs_per_node = await _browse_level(client, [n for n, _, _ in level])
        nxt: list[tuple[ua.NodeId, list[str], bool]] = []
        for (parent, path, parent_is_var), refs in zip(level, refs_per_node, strict=True):
            for ref in refs:
                target = make_node_id(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
                name = ref.BrowseName.Name or str(target.Identifier)
                is_property = ref.ReferenceTypeId == make_node_id(_HAS_PROPERTY, 0)
                if parent_is_var and is_property:
                    found[parent].props[name] = target
                    continue
                if target in seen or target.NamespaceIndex == 0 or is_property:
                    continue  # the Server object and other standard nodes; properties of objects
                seen.add(target)
                is_var = ref.NodeClass == ua.NodeClass.Variable
                if is_var:
                    found[target] = Found(target, [*path, name])
                nxt.append((target, [*path, name], is_var))
        level = nxt
        depth += 1
    variables = list(found.values())
    types = await _read(client, [v.node_id for v in variables], ua.AttributeIds.DataType)
    for var, dv in zip(variables, types, strict=True):
        if dv.StatusCode is None or dv.StatusCode.is_good():
            var.data_type = dv.Value.Value if dv.Value is not None else None
    with_units = [v for v in variables if "EngineeringUnits" in v.props]
    units = await _read(client, [v.props["EngineeringUnits"] for v in with_units], ua.AttributeIds.Value)
    for var, dv in zip(with_units, units, strict=True):
        eu = dv.Value.Value if dv.Value is not None else None
        text = getattr(getattr(eu, "DisplayName", None), "Text", None)
        var.unit = text or None
    return namespaces, variables


def _common_prefix(paths: list[list[str]]) -> int:
    """How many leading path segments all variables share (the machine object): dropped from tag names."""
    if not paths:
        return 0
    n = min(len(p) for p in paths) - 1
    i = 0
    while i < n and all(p[i] == paths[0][i] for p in paths):
        i += 1
    return i


def render(url: str, namespaces: list[str], variables: list[Found], *, device_id: str = "machine1",
           text_filter: str | None = None) -> str:
    """The device block as YAML, with comments on the companion namespaces and the is_cnc hint."""
    if text_filter:
        needle = text_filter.lower()
        variables = [v for v in variables
                     if needle in "/".join(v.path).lower() or needle in nsu_form(v.node_id, namespaces).lower()]
    variables.sort(key=lambda v: v.path)
    cut = _common_prefix([v.path for v in variables])
    taken: set[str] = set()
    tags: list[dict[str, Any]] = []
    for var in variables:
        tag: dict[str, Any] = {"name": tag_name(var.path[cut:], taken), "node": nsu_form(var.node_id, namespaces)}
        dt = var.data_type
        if isinstance(dt, ua.NodeId) and dt.NamespaceIndex == 0 and isinstance(dt.Identifier, int):
            kind = DATA_TYPES.get(dt.Identifier)
            if kind:
                tag["type"] = kind
        if var.unit:
            tag["unit"] = var.unit
        tags.append(tag)
    companions = [uri for uri in COMPANION_HINTS if any(ns.rstrip("/") == uri.rstrip("/") for ns in namespaces)]
    lines = [f"# discovered from {url} at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {len(tags)} variables"
             + (f" matching '{text_filter}'" if text_filter else "")]
    lines.append("# namespaces: " + ", ".join(f"{i}={ns}" for i, ns in enumerate(namespaces)))
    if companions:
        for uri in companions:
            lines.append(f"# the server exposes the {COMPANION_HINTS[uri]} namespace {uri}")
        lines.append("# => a CNC machine tool: consider `is_cnc: true` in its asset entry (a hint: the asset register "
                     "decides)")
    else:
        lines.append("# no MachineTool or CNC companion namespace: nothing suggests is_cnc")
    device: dict[str, Any] = {"id": device_id, "protocol": "opcua", "endpoint": url, "mode": "subscribe",
                              "interval": 1.0}
    lines.append(yaml.safe_dump([device], sort_keys=False, allow_unicode=True).rstrip("\n"))
    if companions:
        lines.append("  # asset: {is_cnc: true}   # suggested by the MachineTool/CNC namespace; the register decides")
    lines.append("  tags:")
    for tag in tags:
        flow = yaml.safe_dump(tag, default_flow_style=True, sort_keys=False, allow_unicode=True, width=10_000)
        lines.append(f"    - {flow.strip()}")
    if not tags:
        lines.append("    []  # nothing found: widen --filter")
    return "\n".join(lines) + "\n"


async def discover(url: str, *, device_id: str = "machine1", text_filter: str | None = None,
                   username: str | None = None, password: str | None = None, timeout: float = 10.0) -> str:
    """Connect (no security, anonymous unless a user is given), browse, and render the device block."""
    client = Client(url, timeout=timeout)
    client.name = client.description = "shopfloor-collector discover"
    if username:
        client.set_user(username)
        if password is not None:
            client.set_password(password)
    await asyncio.wait_for(client.connect(), timeout)
    try:
        namespaces, variables = await browse(client)
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), timeout)
        except Exception:
            client.disconnect_socket()
    return render(url, namespaces, variables, device_id=device_id, text_filter=text_filter)
