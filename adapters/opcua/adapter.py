"""OPC UA adapter: one asyncua client session per device, polled with batched Read requests.

Why it looks like this:
- Node ids are resolved once per connect (namespace URIs against the server's NamespaceArray, browse paths
  with one TranslateBrowsePathsToNodeIds call), so a poll is nothing but Read requests.
- The ReadParameters are built once per connect and reused every poll, chunked by the smaller of the
  device's `max_nodes_per_read` and the server's own MaxNodesPerRead; the per-value work in `read()` is the
  status-code check, one timestamp conversion and the tag's value conversion.
- A bad tag (unknown node, bad status, out of range) becomes that tag's quality; only a dead connection,
  session or timeout raises `AdapterError`, which the engine turns into backoff and a device state.
- The asyncua client runs without auto-reconnect: reconnecting is the engine's job (with jittered
  backoff), the client's watchdog only notices a dead server early so the next `read()` fails fast.

Security modes, certificates, subscribe mode and session-restart recovery come next; `_apply_security` and
`supports_subscribe` are the places they plug in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from asyncua import Client, ua

from adapters.base import Adapter, AdapterError, register
from adapters.opcua.nodeids import (
    NodeRef,
    Unresolved,
    browse_path,
    browse_result_node,
    make_node_id,
    parse_node,
    resolve_node_id,
    status_name,
)
from collector.config import OpcUaDevice, OpcUaTag, read_secret
from collector.model import Quality, Reading

log = logging.getLogger(__name__)

_SEVERITY_MASK = 0xC0000000
_UNCERTAIN = 0x40000000
_PLAIN_TYPES = frozenset({float, int, bool, str, type(None)})
_INT_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
_BAD_QUALITY_CACHE: dict[int, str] = {}


def bad_quality(code: int) -> str:
    """`bad_<CodeName>` for a bad status code (BadNodeIdUnknown -> bad_NodeIdUnknown), cached because a dead
    PLC repeats the same few codes."""
    code &= 0xFFFF0000
    q = _BAD_QUALITY_CACHE.get(code)
    if q is None:
        q = _BAD_QUALITY_CACHE[code] = quality_for(status_name(code))
    return q


def quality_for(code_name: str) -> str:
    """The quality string of a bad status code name: 'BadNoMatch' -> 'bad_NoMatch'."""
    return f"bad_{code_name.removeprefix('Bad')}"


def to_plain(raw: Any) -> Any:
    """An OPC UA variant value as plain Python (what JSON and line protocol can carry).

    datetime -> POSIX seconds (float, like every timestamp in the collector), LocalizedText -> its text,
    QualifiedName / NodeId -> their string form, bytes -> hex, enums -> int, structures -> dict, arrays ->
    lists of the same.
    """
    if type(raw) in _PLAIN_TYPES:
        return raw
    if isinstance(raw, datetime):
        return (raw if raw.tzinfo else raw.replace(tzinfo=UTC)).timestamp()
    if isinstance(raw, enum.Enum):
        return raw.value
    if isinstance(raw, ua.LocalizedText):
        return raw.Text
    if isinstance(raw, (ua.QualifiedName, ua.NodeId)):
        return raw.to_string()
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).hex()
    if isinstance(raw, (list, tuple)):
        return [to_plain(x) for x in raw]
    if isinstance(raw, ua.StatusCode):
        return raw.value
    if isinstance(raw, uuid.UUID):
        return str(raw)
    if isinstance(raw, ua.Variant):
        return to_plain(raw.Value)
    if dataclasses.is_dataclass(raw) and not isinstance(raw, type):
        return {f.name: to_plain(getattr(raw, f.name)) for f in dataclasses.fields(raw)}
    if isinstance(raw, int | float | str):  # subclasses of the plain types
        return raw
    return str(raw)


def make_converter(tag: OpcUaTag) -> Callable[[Any], Any]:
    """The tag's raw-value -> plain-value function, specialised once so the poll loop does no option checks.

    Numbers get `value * scale + offset` (bools are never scaled); a declared `type` coerces compatible
    values (an integral float for an int tag, an int for a float tag, ...). A value that cannot take the
    declared type raises ValueError/TypeError, which the caller reports as `bad_decode`.
    """
    scale, offset = tag.scale, tag.offset
    scaled = scale != 1.0 or offset != 0.0
    declared = tag.type

    def scalar(v: Any) -> Any:
        if declared is None or declared == "datetime":
            pass
        elif declared == "bool":
            if not isinstance(v, bool):
                if not isinstance(v, int | float):
                    raise TypeError(f"expected a bool, got {type(v).__name__}")
                v = bool(v)
        elif declared == "string":
            if not isinstance(v, str):
                v = str(v)
        elif isinstance(v, bool) or not isinstance(v, int | float):
            if isinstance(v, str):
                v = float(v) if declared in ("float", "double") else int(v)
            else:
                raise TypeError(f"expected a number, got {type(v).__name__}")
        elif declared in ("float", "double"):
            v = float(v)
        elif declared in _INT_TYPES and isinstance(v, float) and v.is_integer():
            v = int(v)
        if scaled and isinstance(v, int | float) and not isinstance(v, bool):
            v = v * scale + offset
        return v

    if declared is None and not scaled:
        return to_plain

    def convert(raw: Any) -> Any:
        v = raw if type(raw) in _PLAIN_TYPES else to_plain(raw)
        if v is None:
            return None
        if isinstance(v, list):
            return [scalar(x) for x in v]
        return scalar(v)

    return convert


def in_range(value: Any, lo: float, hi: float) -> bool:
    """Range check for numbers and arrays of numbers; other values are not range-checked."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int | float):
        return lo <= value <= hi
    if isinstance(value, list):
        return all(in_range(v, lo, hi) for v in value)
    return True


@dataclasses.dataclass(slots=True)
class _TagPlan:
    """What `read()` needs per tag, precomputed at construction."""

    name: str
    unit: str | None
    ref: NodeRef | Unresolved
    convert: Callable[[Any], Any]
    range: tuple[float, float] | None


@register
class OpcUaAdapter(Adapter):
    """Polls one OPC UA server: `connect()`, then `read()` once per interval, `close()` at the end."""

    protocol = "opcua"
    supports_subscribe = False  # subscribe mode is the next step

    def __init__(self, device: OpcUaDevice) -> None:
        super().__init__(device)
        self.device: OpcUaDevice = device
        self.url = device.parsed_endpoint.url
        self._client: Client | None = None
        self._plans: list[_TagPlan] = []
        for tag in device.tags:
            ref: NodeRef | Unresolved
            try:
                ref = parse_node(tag.node)
            except ValueError as exc:
                ref = Unresolved("BadNodeIdInvalid", str(exc))
            self._plans.append(_TagPlan(tag.name, tag.unit, ref, make_converter(tag), tag.range))
        #: after connect: the server's NamespaceArray and each tag's resolved node id (or why not)
        self.namespaces: list[str] = []
        self.resolved: dict[str, ua.NodeId | Unresolved] = {}
        self.server_max_nodes_per_read = 0
        # per chunk: the ReadParameters and the plan index of each node in it
        self._chunks: list[tuple[ua.ReadParameters, list[int]]] = []
        self._unresolved: list[tuple[int, str]] = []  # plan index, bad quality
        self._stats = {"connects": 0, "reads": 0, "requests": 0, "values": 0, "bad_values": 0, "errors": 0,
                       "last_read_s": 0.0}

    # ------------------------------------------------------------------ connect

    async def connect(self) -> None:
        """Open the session (bounded by the device timeout) and resolve every tag's node once."""
        await self.close()
        dev = self.device
        client = Client(self.url, timeout=dev.timeout, watchdog_intervall=max(1.0, dev.timeout))
        client.name = client.description = f"shopfloor-collector {dev.id}"
        client.application_uri = dev.security.application_uri
        client.session_timeout = max(60_000, int(dev.interval * 10_000))
        await self._apply_security(client)
        self._client = client
        try:
            await asyncio.wait_for(client.connect(), dev.timeout)
            await self._resolve(client)
        except AdapterError:
            await self.close()
            raise
        except Exception as exc:  # connect failures come as OSError, TimeoutError, UaError, ...
            await self.close()
            raise AdapterError(f"cannot connect to {self.url}: {_describe(exc, dev.timeout)}") from exc
        self._stats["connects"] += 1

    async def _apply_security(self, client: Client) -> None:
        """User identity and (next step) security mode and certificates."""
        dev = self.device
        if dev.security.mode != "None":
            raise AdapterError(f"security mode {dev.security.mode} is not supported yet by the OPC UA adapter")
        if dev.username:
            client.set_user(dev.username)
            password = read_secret(dev.password_env, dev.password_file)
            if password is not None:
                client.set_password(password)

    async def _resolve(self, client: Client) -> None:
        """Read the NamespaceArray and operation limits, resolve every tag, build the read chunks."""
        limits = ua.ReadParameters()
        for oid in (ua.ObjectIds.Server_NamespaceArray,
                    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
                    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds):
            rv = ua.ReadValueId()
            rv.NodeId = make_node_id(oid, 0)
            rv.AttributeId = ua.AttributeIds.Value
            limits.NodesToRead.append(rv)
        ns_dv, max_read_dv, max_translate_dv = await client.uaclient.read(limits)
        self.namespaces = list(_good_value(ns_dv) or [])
        self.server_max_nodes_per_read = int(_good_value(max_read_dv) or 0)
        max_translate = int(_good_value(max_translate_dv) or 0)
        chunk = self.device.max_nodes_per_read
        if self.server_max_nodes_per_read > 0:
            chunk = min(chunk, self.server_max_nodes_per_read)

        resolved: list[ua.NodeId | Unresolved] = []
        paths: list[int] = []
        for i, plan in enumerate(self._plans):
            ref = plan.ref
            if isinstance(ref, Unresolved):
                resolved.append(ref)
            elif ref.is_path:
                resolved.append(Unresolved("BadNoMatch", "not resolved"))  # filled in below
                paths.append(i)
            else:
                resolved.append(resolve_node_id(ref, self.namespaces))
        step = min(self.device.max_nodes_per_read, max_translate or self.device.max_nodes_per_read)
        for start in range(0, len(paths), step):
            batch = paths[start:start + step]
            refs = [self._plans[i].ref for i in batch]
            results = await client.uaclient.translate_browsepaths_to_nodeids(
                [browse_path(r) for r in refs if isinstance(r, NodeRef)])
            for i, ref, result in zip(batch, refs, results, strict=True):
                assert isinstance(ref, NodeRef)
                resolved[i] = browse_result_node(ref, result, self.namespaces)

        self.resolved = {}
        self._unresolved = []
        to_read: list[int] = []
        for i, (plan, node) in enumerate(zip(self._plans, resolved, strict=True)):
            self.resolved[plan.name] = node
            if isinstance(node, Unresolved):
                log.warning("device %s tag %s: %s (%s)", self.device.id, plan.name, node.reason, node.code)
                self._unresolved.append((i, quality_for(node.code)))
            else:
                to_read.append(i)
        self._chunks = []
        for start in range(0, len(to_read), chunk):
            params = ua.ReadParameters()
            params.MaxAge = 0
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            indices = to_read[start:start + chunk]
            for i in indices:
                rv = ua.ReadValueId()
                node = resolved[i]
                assert isinstance(node, ua.NodeId)
                rv.NodeId = node
                rv.AttributeId = ua.AttributeIds.Value
                params.NodesToRead.append(rv)
            self._chunks.append((params, indices))

    # ------------------------------------------------------------------ read

    async def read(self) -> list[Reading]:
        """One poll of every tag: one Read request per chunk, one Reading per tag, in config order."""
        client = self._client
        if client is None:
            raise AdapterError("not connected")
        plans = self._plans
        device = self.device.id
        out: list[Reading | None] = [None] * len(plans)
        started = time.perf_counter()
        bad = 0
        for params, indices in self._chunks:
            try:
                values = await client.uaclient.read(params)
            except Exception as exc:
                self._stats["errors"] += 1
                raise AdapterError(f"read from {self.url} failed: {_describe(exc, self.device.timeout)}") from exc
            now = time.time()
            if len(values) != len(indices):
                raise AdapterError(f"server answered {len(values)} values for {len(indices)} nodes")
            for i, dv in zip(indices, values, strict=True):
                plan = plans[i]
                status = dv.StatusCode
                code = status.value if status is not None else 0
                severity = code & _SEVERITY_MASK
                ts = dv.SourceTimestamp or dv.ServerTimestamp
                source_ts = ts.timestamp() if ts is not None else now
                if severity == 0 or severity == _UNCERTAIN:
                    quality = Quality.GOOD if severity == 0 else Quality.UNCERTAIN
                    variant = dv.Value
                    try:
                        value = plan.convert(variant.Value if variant is not None else None)
                    except (TypeError, ValueError, OverflowError):
                        value, quality = None, Quality.BAD_DECODE
                    rng = plan.range
                    if rng is not None and value is not None and not in_range(value, rng[0], rng[1]):
                        quality = Quality.BAD_OUT_OF_RANGE
                else:
                    value, quality = None, bad_quality(code)
                if quality != Quality.GOOD:
                    bad += 1
                out[i] = Reading(device, plan.name, value, plan.unit, quality, source_ts, now)
        if self._unresolved:
            now = time.time()
            for i, quality in self._unresolved:
                plan = plans[i]
                out[i] = Reading(device, plan.name, None, plan.unit, quality, now, now)
            bad += len(self._unresolved)
        stats = self._stats
        stats["reads"] += 1
        stats["requests"] += len(self._chunks)
        stats["values"] += len(plans)
        stats["bad_values"] += bad
        stats["last_read_s"] = time.perf_counter() - started
        return out  # type: ignore[return-value]  # every slot is filled: each plan is in a chunk or unresolved

    def stats(self) -> dict[str, Any]:
        """Counters since construction plus the shape of the current read plan."""
        return {**self._stats, "chunks": len(self._chunks), "unresolved": len(self._unresolved),
                "server_max_nodes_per_read": self.server_max_nodes_per_read}

    # ------------------------------------------------------------------ close

    async def close(self) -> None:
        """Close the session; never raises (a dead server just means there is nothing to close)."""
        client, self._client = self._client, None
        self._chunks = []
        if client is None:
            return
        try:
            await asyncio.wait_for(client.disconnect(), self.device.timeout)
        except asyncio.CancelledError:
            client.disconnect_socket()
            raise
        except Exception as exc:  # close must never raise: a dead server just has nothing left to close
            log.debug("device %s: disconnect: %r", self.device.id, exc)
            try:
                client.disconnect_socket()
            except Exception:
                pass


def _good_value(dv: ua.DataValue) -> Any:
    """The value of a DataValue when its status is good, else None."""
    if dv.StatusCode is not None and not dv.StatusCode.is_good():
        return None
    return dv.Value.Value if dv.Value is not None else None


def _describe(exc: BaseException, timeout: float) -> str:
    """A short reason for the device status: what failed, without a traceback."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ua.UaStatusCodeError):
        return status_name(exc.code)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionError) and not exc.strerror:
        return f"connection lost ({exc})" if str(exc) else "connection lost"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
