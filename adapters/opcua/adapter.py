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

- Subscribe mode (the default) puts every resolved tag on ONE subscription per device, created with the raw
  session services rather than asyncua's `Subscription` class: the publish callback sees each PublishResponse
  whole, so one publish becomes one `callback(readings)` call (one MQTT message), nothing sits in an
  iterator queue that could drop the oldest events, and keep-alives are visible. A publishing cycle without a
  change re-delivers the last values as a heartbeat, so a healthy but static machine still sends one message
  per cycle, like poll mode, and stays `online`. The cycle is kept by our own clock, anchored on the server's
  publishes: a server may revise the requested keep-alive count (1) upwards and then sends keep-alives only
  every few cycles.
- Recovery: `subscribe()` returns only by raising `AdapterError` when the session is gone: transport lost,
  the client's session probe failing (BadSessionIdInvalid, BadSessionClosed, ...), a bad StatusChange from the
  server (BadTimeout: the server dropped the subscription), the publish loop ending, or no publish response
  (data or keep-alive) for 1.5 keep-alive periods plus the timeout. The engine then closes this session and
  reconnects with backoff: a NEW session, node ids resolved again, the subscription created again. There is
  never more than one session per device, and none while the server is down.
- Security (`security.py`): our certificate is created on first use in the PKI folder; the server's is
  checked against trusted/ before a session is made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState

from adapters.base import Adapter, AdapterContext, AdapterError, ReadingsCallback, WriteError, WriteOutcome
from adapters.opcua.config import OpcUaDevice, OpcUaTag
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
from adapters.opcua.security import Pki, SecurityError, first_certificate, thumbprint
from adapters.opcua.security import apply as apply_security
from adapters.opcua.writes import write_value
from collector.config.secrets import Settings, read_secret
from collector.model import Quality, Reading, float32_shortest
from collector.transform import Transform, make_transform

log = logging.getLogger(__name__)

_SEVERITY_MASK = 0xC0000000
_UNCERTAIN = 0x40000000
_PLAIN_TYPES = frozenset({float, int, bool, str, type(None)})
_FLOAT = ua.VariantType.Float
_INT_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
_BAD_QUALITY_CACHE: dict[int, str] = {}
#: ActivateSession refusals of the user identity, and refusals of our certificate, told apart for the message
_USER_REFUSED = frozenset({"BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid",
                           "BadUserSignatureInvalid"})
_CERT_REFUSED = frozenset({"BadSecurityChecksFailed", "BadCertificateUntrusted", "BadCertificateInvalid",
                           "BadCertificateUriInvalid", "BadCertificateTimeInvalid", "BadCertificateUseNotAllowed",
                           "BadSecurityPolicyRejected", "BadCertificateRevoked"})
#: monitored-item results that mean "this server cannot filter this item": retried without a filter, and the
#: deadband is then applied here
_FILTER_REFUSED = frozenset({ua.StatusCodes.BadFilterNotAllowed, ua.StatusCodes.BadMonitoredItemFilterUnsupported,
                             ua.StatusCodes.BadDeadbandFilterInvalid, ua.StatusCodes.BadMonitoredItemFilterInvalid})
_PUBLISH_MARGIN = 1.5  # keep-alive periods without a publish response before the session counts as dead
#: identity evidence read by `identify()`: key -> standard node (namespace 0)
_IDENTITY_NODES = {
    "application_uri": ua.ObjectIds.Server_ServerArray,  # ServerArray[0] is this server's ApplicationUri
    "product_uri": ua.ObjectIds.Server_ServerStatus_BuildInfo_ProductUri,
    "build.manufacturer": ua.ObjectIds.Server_ServerStatus_BuildInfo_ManufacturerName,
    "build.product": ua.ObjectIds.Server_ServerStatus_BuildInfo_ProductName,
    "build.software_version": ua.ObjectIds.Server_ServerStatus_BuildInfo_SoftwareVersion,
    "build.build_number": ua.ObjectIds.Server_ServerStatus_BuildInfo_BuildNumber,
}
MACHINERY_NS = "http://opcfoundation.org/UA/Machinery/"
DI_NS = "http://opcfoundation.org/UA/DI/"
_BEAT_GRACE = 0.25  # of a publishing interval: how late a cycle's publish may be before we beat ourselves


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

    A declared `type` coerces compatible values (an integral float for an int tag, an int for a float tag,
    ...). A value that cannot take the declared type raises ValueError/TypeError, which the caller reports as
    `bad_decode`. Scale, offset, finiteness and range are the core's value stage after it (`tag_transform`).
    """
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
        return v

    if declared is None:
        return to_plain

    def convert(raw: Any) -> Any:
        v = raw if type(raw) in _PLAIN_TYPES else to_plain(raw)
        if v is None:
            return None
        if isinstance(v, list):
            return [scalar(x) for x in v]
        return scalar(v)

    return convert


def tag_transform(tag: OpcUaTag) -> Transform:
    """The core's value stage for the tag (collector/transform.py), on the converted value."""
    transform = make_transform(tag.scale, tag.offset, tag.range)
    assert transform is not None  # "any" values always get one: NaN and inf are checked on every value
    return transform


@dataclasses.dataclass(slots=True)
class _TagPlan:
    """What `read()` needs per tag, precomputed at construction."""

    name: str
    unit: str | None
    ref: NodeRef | Unresolved
    convert: Callable[[Any], Any]
    transform: Transform
    range: tuple[float, float] | None
    deadband: tuple[str, float] | None = None  # ("absolute" | "percent", value) requested from the server
    local_band: float | None = None  # absolute band applied here when the server refused the filter


class OpcUaAdapter(Adapter):
    """Polls one OPC UA server: `connect()`, then `read()` once per interval, `close()` at the end."""

    protocol = "opcua"
    supports_subscribe = True
    supports_write = True

    def __init__(self, device: OpcUaDevice, context: AdapterContext | None = None) -> None:
        super().__init__(device, context)
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
            self._plans.append(_TagPlan(tag.name, tag.unit, ref, make_converter(tag), tag_transform(tag), tag.range,
                                        _deadband(device, tag)))
        #: after connect: the server's NamespaceArray and each tag's resolved node id (or why not)
        self.namespaces: list[str] = []
        self.resolved: dict[str, ua.NodeId | Unresolved] = {}
        self.server_max_nodes_per_read = 0
        # per chunk: the ReadParameters and the plan index of each node in it
        self._chunks: list[tuple[ua.ReadParameters, list[int]]] = []
        self._unresolved: list[tuple[int, str]] = []  # plan index, bad quality
        self._stats = {"connects": 0, "reads": 0, "requests": 0, "values": 0, "bad_values": 0, "errors": 0,
                       "last_read_s": 0.0, "publishes": 0, "keepalives": 0, "notifications": 0,
                       "subscriptions": 0}
        # subscribe mode: per plan index the last reading delivered (for heartbeats), and why the session died
        self._last: list[Reading | None] = []
        self._lost: str | None = None
        self._wake = asyncio.Event()
        self._last_publish = 0.0
        self.subscription_id: int | None = None
        self.keepalive_s = 0.0
        self.publishing_s = 0.0  # the server's revised publishing interval: the heartbeat cycle
        self._anchor = 0.0  # monotonic time of the last publish response: the server's cycle grid
        self._beats = 0  # heartbeats of our own since the anchor
        self._last_beat = 0.0
        # publishes that came while the monitored items were still being created (which are refused is not
        # known yet): handled once they are, so the first batch holds every tag, the refused ones too
        self._early: list[ua.PublishResult] | None = None
        self._callback: ReadingsCallback = _discard
        self._bad: set[int] = set()  # subscribe mode: plan indices whose last reading is not good
        self._told_refused: set[str] = set()  # tags whose refused deadband filter was logged at WARNING

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
            raise AdapterError(f"cannot connect to {self.url}: {self._connect_reason(exc)}") from exc
        self._stats["connects"] += 1

    @property
    def pki(self) -> Pki:
        """The PKI folder: `security.pki_dir`, else `<state_dir>/pki` (COLLECTOR_STATE_DIR, else ./state)."""
        pki_dir = self.device.security.pki_dir
        if pki_dir is None:
            pki_dir = (Settings().state_dir or Path("state")) / "pki"
        return Pki(Path(pki_dir))

    async def _apply_security(self, client: Client) -> None:
        """Security mode and certificates (refusing an untrusted server), then the user identity."""
        dev = self.device
        if dev.security.mode != "None":
            try:
                await apply_security(client, self.pki, dev.security.policy, dev.security.mode,
                                     dev.security.application_uri, dev.timeout, self.url)
            except SecurityError as exc:
                log.error("device %s: %s", dev.id, exc)
                raise AdapterError(str(exc)) from exc
            except Exception as exc:
                raise AdapterError(f"cannot connect to {self.url}: {_describe(exc, dev.timeout)}") from exc
        if dev.username:
            try:
                password = read_secret(dev.password_env, dev.password_file)
            except OSError as exc:
                raise AdapterError(f"cannot read the password file {dev.password_file}: {exc.strerror}") from exc
            if password is None:
                where = f"env {dev.password_env}" if dev.password_env else "password_env or password_file"
                raise AdapterError(f"no password for user '{dev.username}': set {where}")
            client.set_user(dev.username)
            client.set_password(password)

    def _connect_reason(self, exc: BaseException) -> str:
        """Why connect failed, with the fix for the two cases operators meet most: user and certificate."""
        reason = _describe(exc, self.device.timeout)
        if reason in _USER_REFUSED:
            who = f"user '{self.device.username}'" if self.device.username else "anonymous access"
            return (f"{who} refused by the server ({reason}): check username and password"
                    + ("" if self.device.username else ", or configure a username"))
        if reason in _CERT_REFUSED:
            return (f"the server refused our certificate ({reason}): trust {self.pki.cert} on the server "
                    f"(its SAN URI is {self.device.security.application_uri})")
        return reason

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
                reading = out[i] = _reading(device, plans[i], dv, now)
                if reading.quality != Quality.GOOD:
                    bad += 1
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

    # ------------------------------------------------------------------ write-back

    async def write(self, tag: str, value: Any, readback: bool = True) -> WriteOutcome:
        """Write one tag's node (its DataType checked first: adapters/opcua/writes.py), then read it back.
        The session carries the write beside polls and publishes (OPC UA matches answers by request handle)."""
        client = self._client
        if client is None:
            raise AdapterError("not connected")
        index = next((i for i, p in enumerate(self._plans) if p.name == tag), None)
        if index is None:
            raise WriteError("unknown_tag", f"no tag '{tag}' on device {self.device.id}")
        plan, cfg = self._plans[index], self.device.tags[index]
        node = self.resolved.get(tag)
        if not isinstance(node, ua.NodeId):
            raise WriteError("device_refused", f"the tag's node is not known to the server "
                             f"({node.code if node is not None else 'not resolved'})")
        try:
            old_raw = await write_value(client, node, value, cfg.scale, cfg.offset)
            after = None
            if readback:
                rv = ua.ReadValueId()
                rv.NodeId = node
                rv.AttributeId = ua.AttributeIds.Value
                params = ua.ReadParameters()
                params.NodesToRead.append(rv)
                (after,) = await client.uaclient.read(params)
        except WriteError:
            raise
        except Exception as exc:
            raise AdapterError(f"write to {self.url} failed: {_describe(exc, self.device.timeout)}") from exc
        try:
            old = plan.convert(old_raw)
        except (TypeError, ValueError, OverflowError):
            old = None
        if after is None:
            return WriteOutcome(old, None)
        reading = _reading(self.device.id, plan, after, time.time())
        return WriteOutcome(old, reading.value, reading.quality)

    # ------------------------------------------------------------------ subscribe

    async def subscribe(self, callback: ReadingsCallback) -> None:
        """Create the device's subscription and deliver what it publishes until the session dies, then raise
        AdapterError (the engine reconnects: new session, nodes resolved again, subscription created again)."""
        client = self._client
        if client is None:
            raise AdapterError("not connected")
        dev = self.device
        self._lost = None
        self._wake = asyncio.Event()
        self._callback = callback
        self._last = [None] * len(self._plans)
        self._bad = set()
        self._early = []
        try:
            await self._create_subscription(client)
        except AdapterError:
            raise
        except Exception as exc:
            raise AdapterError(f"cannot subscribe on {self.url}: {_describe(exc, dev.timeout)}") from exc
        finally:
            early, self._early = self._early, None
        # bad tags (unresolved, refused monitored items) ride along with the first publish (which carries every
        # other tag's value too) and every later one: told alone, they would make the device look all bad
        now = time.time()
        for i, quality in self._unresolved:
            plan = self._plans[i]
            self._last[i] = Reading(dev.id, plan.name, None, plan.unit, quality, now, now)
            self._bad.add(i)
        for result in early or ():
            self._on_publish(result)
        stale_after = self.keepalive_s * _PUBLISH_MARGIN + dev.timeout
        self._last_publish = self._anchor = time.monotonic()
        self._beats = 0
        async with client.subscribe_state() as states:
            while True:
                # wake on: a bad StatusChange (self._wake), a client state change, a heartbeat falling due, or
                # a periodic check
                wake = asyncio.ensure_future(self._wake.wait())
                change = asyncio.ensure_future(states.next_change())
                beat_in = max(0.01, self._beat_due() - time.monotonic())
                try:
                    await asyncio.wait({wake, change}, timeout=min(1.0, self.keepalive_s, beat_in),
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (wake, change):
                        t.cancel()
                if self._lost is not None:
                    raise AdapterError(self._lost)
                if client.state is not UaClientState.CONNECTED:
                    raise AdapterError(f"connection to {self.url} lost")
                silent = time.monotonic() - self._last_publish
                if silent > stale_after:
                    raise AdapterError(f"no publish response from {self.url} for {silent:.1f} s "
                                       f"(keep-alive {self.keepalive_s:g} s): session presumed dead")
                self._beat_on_time()

    def _beat_due(self) -> float:
        """When our next heartbeat is due: a little after the next cycle of the server's grid (its last
        publish + whole publishing intervals) that brought no publish."""
        cycle = self.publishing_s
        return self._anchor + (self._beats + 1) * cycle + min(_BEAT_GRACE * cycle, 1.0)

    def _beat_on_time(self) -> None:
        """A cycle passed without a publish response (the server sends keep-alives only every
        RevisedMaxKeepAliveCount cycles): deliver the heartbeat ourselves, once, skipping cycles we overslept."""
        now = time.monotonic()
        if self.publishing_s <= 0 or now < self._beat_due():
            return
        self._beats = max(self._beats + 1, int((now - self._anchor) / self.publishing_s))
        self._heartbeat()

    async def _create_subscription(self, client: Client) -> None:
        """One subscription, every resolved tag a monitored item (deadband filters where configured)."""
        dev = self.device
        publishing_ms = dev.interval * 1000.0
        sampling_ms = dev.sampling_interval if dev.sampling_interval is not None else publishing_ms
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = publishing_ms
        params.RequestedMaxKeepAliveCount = 1  # a heartbeat every cycle without changes
        # the server keeps the subscription this many cycles without Publish requests: ~a minute, >= 3 keep-alives
        params.RequestedLifetimeCount = max(3, math.ceil(60_000 / publishing_ms))
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        params.Priority = 0
        result = await client.uaclient.session.create_subscription(params, callback=self._on_publish)
        self.subscription_id = int(result.SubscriptionId)
        self._stats["subscriptions"] += 1
        self.publishing_s = max(0.05, result.RevisedPublishingInterval / 1000.0)
        self.keepalive_s = self.publishing_s * max(1, int(result.RevisedMaxKeepAliveCount))
        if int(result.RevisedMaxKeepAliveCount) > 1:
            log.info("device %s: the server revised the keep-alive count to %d: heartbeats are timed here, every "
                     "%g s", dev.id, int(result.RevisedMaxKeepAliveCount), self.publishing_s)

        for plan in self._plans:  # this server (maybe restarted, upgraded) says anew which filters it takes
            plan.local_band = None
        items: list[tuple[int, ua.NodeId]] = [(i, node) for i, (plan, node) in
                                              enumerate(zip(self._plans, self.resolved.values(), strict=True))
                                              if isinstance(node, ua.NodeId)]
        refused: list[tuple[int, ua.NodeId]] = []
        why: dict[int, int] = {}  # plan index -> the status the server refused its filter with
        chunk = self.device.max_nodes_per_read
        for start in range(0, len(items), chunk):
            batch = items[start:start + chunk]
            results = await self._create_items(client, batch, sampling_ms, with_filter=True)
            for (i, node), res in zip(batch, results, strict=True):
                code = res.StatusCode.value
                plan = self._plans[i]
                if code in _FILTER_REFUSED and plan.deadband is not None:
                    refused.append((i, node))
                    why[i] = code
                elif not res.StatusCode.is_good():
                    self._unresolved.append((i, bad_quality(code)))
                    log.warning("device %s tag %s: monitored item refused: %s", dev.id, plan.name, status_name(code))
        if refused:
            results = await self._create_items(client, refused, sampling_ms, with_filter=False)
            for (i, _node), res in zip(refused, results, strict=True):
                plan = self._plans[i]
                if not res.StatusCode.is_good():
                    self._unresolved.append((i, bad_quality(res.StatusCode.value)))
                    continue
                plan.local_band = _local_band(plan)
                self._tell_refused(plan, status_name(why[i]))

    def _tell_refused(self, plan: _TagPlan, status: str) -> None:
        """Say once per tag (WARNING; INFO on later connects) that the server refused the deadband filter, and
        what the collector does instead: the band it applies itself, or that every change is reported (a percent
        band on a tag without `range`)."""
        assert plan.deadband is not None
        kind, value = plan.deadband
        asked = f"{kind} deadband {value:g}{' %' if kind == 'percent' else ''}"
        if plan.local_band is not None:
            unit = f" {plan.unit}" if plan.unit else ""
            of = f" ({value:g} % of range {_span(plan.range)})" if kind == "percent" else ""
            then = f"the collector applies it itself: changes of more than {plan.local_band:g}{unit}{of}"
        else:
            then = ("the tag has no `range` to take the percentage of, so EVERY change is reported: give the tag "
                    "`range: [low, high]` or use deadband_type: absolute")
        level = logging.INFO if plan.name in self._told_refused else logging.WARNING
        self._told_refused.add(plan.name)
        log.log(level, "device %s tag %s: the server refused the %s (%s); %s", self.device.id, plan.name, asked,
                status, then)

    async def _create_items(self, client: Client, batch: list[tuple[int, ua.NodeId]], sampling_ms: float,
                            with_filter: bool) -> list[ua.MonitoredItemCreateResult]:
        dev = self.device
        params = ua.CreateMonitoredItemsParameters()
        params.SubscriptionId = self.subscription_id
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        for i, node in batch:
            plan = self._plans[i]
            rv = ua.ReadValueId()
            rv.NodeId = node
            rv.AttributeId = ua.AttributeIds.Value
            mp = ua.MonitoringParameters()
            mp.ClientHandle = i  # the plan index: the publish callback needs nothing else
            mp.SamplingInterval = sampling_ms
            mp.QueueSize = dev.queue_size
            mp.DiscardOldest = True
            if with_filter and plan.deadband is not None:
                kind, value = plan.deadband
                mp.Filter = ua.DataChangeFilter(
                    Trigger=ua.DataChangeTrigger.StatusValue,
                    DeadbandType=(ua.DeadbandType.Absolute if kind == "absolute" else ua.DeadbandType.Percent).value,
                    DeadbandValue=value)
            req = ua.MonitoredItemCreateRequest()
            req.ItemToMonitor = rv
            req.MonitoringMode = ua.MonitoringMode.Reporting
            req.RequestedParameters = mp
            params.ItemsToCreate.append(req)
        return list(await client.uaclient.session.create_monitored_items(params))

    def _on_publish(self, result: ua.PublishResult) -> None:
        """The session's publish loop calls this for every PublishResponse of our subscription (never awaits)."""
        if self._early is not None:  # still creating the monitored items
            self._early.append(result)
            return
        self._last_publish = self._anchor = time.monotonic()
        self._beats = 0
        stats = self._stats
        stats["publishes"] += 1
        data = result.NotificationMessage.NotificationData
        if not data:
            stats["keepalives"] += 1
            if self._anchor - self._last_beat >= self.publishing_s / 2:  # not just beaten on time
                self._heartbeat()
            return
        now = time.time()
        device = self.device.id
        plans = self._plans
        last = self._last
        readings: list[Reading] = []
        for notif in data:
            if isinstance(notif, ua.DataChangeNotification):
                for item in notif.MonitoredItems:
                    i = int(item.ClientHandle)
                    if not 0 <= i < len(plans):
                        continue
                    plan = plans[i]
                    reading = _reading(device, plan, item.Value, now)
                    band = plan.local_band
                    if band is not None:
                        prev = last[i]
                        if (prev is not None and prev.quality == reading.quality and _number(prev.value)
                                and _number(reading.value) and abs(reading.value - prev.value) <= band):
                            continue
                    last[i] = reading
                    readings.append(reading)
                    if reading.quality == Quality.GOOD:
                        self._bad.discard(i)
                    else:
                        self._bad.add(i)
            elif isinstance(notif, ua.StatusChangeNotification):
                code = notif.Status.value if notif.Status is not None else 0
                if code & _SEVERITY_MASK:
                    self._lost = f"subscription on {self.url} ended: {status_name(code)}"
                    self._wake.set()
        if readings:
            stats["notifications"] += len(readings)
            if self._bad:  # carry the bad tags along, so the device state does not flap with what changed
                changed = {r.tag for r in readings}
                readings += [r for i in sorted(self._bad) if (r := last[i]) is not None and r.tag not in changed]
            self._emit(readings)

    def _heartbeat(self) -> None:
        """A cycle without change: the last values are still current; deliver them again."""
        self._last_beat = time.monotonic()
        now = time.time()
        readings = [dataclasses.replace(r, receive_ts=now) for r in self._last if r is not None]
        if readings:
            self._emit(readings)

    def _emit(self, readings: list[Reading]) -> None:
        """One callback (one pipeline batch, one MQTT message) per publish. A tag sampled several times within
        one publishing interval (queue_size > 1) appears several times, oldest first: the JSON data message keeps
        the newest per tag, series sinks keep all."""
        try:
            self._callback(readings)
        except Exception:  # the pipeline's problem must not stop the publish loop
            log.exception("device %s: readings callback failed", self.device.id)

    def stats(self) -> dict[str, Any]:
        """Counters since construction plus the shape of the current read plan."""
        return {**self._stats, "chunks": len(self._chunks), "unresolved": len(self._unresolved),
                "server_max_nodes_per_read": self.server_max_nodes_per_read,
                "mode": "subscribe" if self.wants_subscribe else "poll", "subscription_id": self.subscription_id}

    # ------------------------------------------------------------------ identity

    async def identify(self) -> dict[str, Any]:
        """ApplicationUri, BuildInfo, the server certificate's SHA-1 thumbprint and, where the server has the
        Machinery structure, the first machine's Identification (manufacturer, serial number, model).
        A few Read/Browse requests on the open session; the engine runs this beside the poll loop."""
        client = self._client
        if client is None:
            raise AdapterError("not connected")
        out: dict[str, Any] = {"protocol": "opcua"}
        params = ua.ReadParameters()
        for oid in _IDENTITY_NODES.values():
            rv = ua.ReadValueId()
            rv.NodeId = make_node_id(oid, 0)
            rv.AttributeId = ua.AttributeIds.Value
            params.NodesToRead.append(rv)
        try:
            values = await client.uaclient.read(params)
        except Exception as exc:
            raise AdapterError(f"identify {self.url}: {_describe(exc, self.device.timeout)}") from exc
        for key, dv in zip(_IDENTITY_NODES, values, strict=True):
            value = to_plain(_good_value(dv))
            if key == "application_uri":
                value = value[0] if isinstance(value, list) and value else None
            out[key] = value if value not in ("", []) else None
        peer = getattr(client.security_policy, "peer_certificate", None)
        out["certificate_thumbprint"] = thumbprint(first_certificate(peer)) if peer else None
        out.update(await self._machine_identification(client))
        return out

    async def _machine_identification(self, client: Client) -> dict[str, Any]:
        """OPC 40001-1 Machinery: Objects/Machines/<machine>/Identification/{Manufacturer, SerialNumber, Model}
        of the first machine; nothing when the server has no Machinery namespace or no machine."""
        if MACHINERY_NS not in self.namespaces or DI_NS not in self.namespaces:
            return {}
        mns, dins = self.namespaces.index(MACHINERY_NS), self.namespaces.index(DI_NS)
        try:
            machines = await client.nodes.objects.get_child(f"{mns}:Machines")
            children = await machines.get_children(refs=ua.ObjectIds.HierarchicalReferences,
                                                   nodeclassmask=ua.NodeClass.Object)
        except ua.UaStatusCodeError:
            return {}
        if not children:
            return {}
        out: dict[str, Any] = {}
        for key, name in (("machine.manufacturer", "Manufacturer"), ("machine.serial_number", "SerialNumber"),
                          ("machine.model", "Model")):
            try:
                node = await children[0].get_child([f"{dins}:Identification", f"{dins}:{name}"])
                out[key] = to_plain(await node.read_value())
            except ua.UaStatusCodeError:
                out[key] = None
        return out

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


def _reading(device: str, plan: _TagPlan, dv: ua.DataValue, now: float) -> Reading:
    """One DataValue as a Reading: status -> quality, source (else server) timestamp, converted value."""
    status = dv.StatusCode
    code = status.value if status is not None else 0
    severity = code & _SEVERITY_MASK
    ts = dv.SourceTimestamp or dv.ServerTimestamp
    source_ts = ts.timestamp() if ts is not None else now
    if severity == 0 or severity == _UNCERTAIN:
        quality = Quality.GOOD if severity == 0 else Quality.UNCERTAIN
        variant = dv.Value
        raw = variant.Value if variant is not None else None
        if type(raw) is float and variant is not None and variant.VariantType is _FLOAT:
            raw = float32_shortest(raw)  # 230.0057, not the float64 expansion of the Float
        try:
            value = plan.convert(raw)
        except (TypeError, ValueError, OverflowError):
            value, quality = None, Quality.BAD_DECODE
        else:
            if value is not None:
                value, quality = plan.transform(value, quality)
    else:
        value, quality = None, bad_quality(code)
    return Reading(device, plan.name, value, plan.unit, quality, source_ts, now)


def _deadband(device: OpcUaDevice, tag: OpcUaTag) -> tuple[str, float] | None:
    """The tag's deadband request: its `deadband` value with the device's `deadband_type` (absolute when the
    device says none: a tag that names a band wants one)."""
    if not tag.deadband:
        return None
    return ("percent" if device.deadband_type == "percent" else "absolute", float(tag.deadband))


def _local_band(plan: _TagPlan) -> float | None:
    """The absolute band to apply here when the server refused the filter (percent needs the tag's range)."""
    if plan.deadband is None:
        return None
    kind, value = plan.deadband
    if kind == "absolute":
        return value
    if plan.range is None:
        return None
    return value / 100.0 * abs(plan.range[1] - plan.range[0])


def _span(rng: tuple[float, float] | None) -> str:
    return "none" if rng is None else f"[{rng[0]:g}, {rng[1]:g}]"


def _discard(readings: list[Reading]) -> None:
    """The callback before `subscribe()` sets one."""


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


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
