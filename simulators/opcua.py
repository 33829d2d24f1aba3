"""A simulated CNC machine tool behind a real asyncua server, modelled on OPC UA for Machine Tools (OPC 40501-1).

Address space (node ids are strings in the device's `namespace_uri`, shown here without the prefix):

    Objects
     └ Machines                                  (Machinery ns)       s=Machines
        └ <device id>                            (device ns)          s=Machine
           ├ Identification                      (DI ns)              s=Identification
           │  ├ Manufacturer, Model              LocalizedText        s=Identification.Manufacturer, ...
           │  └ SerialNumber                     String               s=Identification.SerialNumber
           ├ Monitoring                          (MachineTool ns)     s=Monitoring
           │  ├ Channel1: ChannelState (Int32 enum: 0 Active, 1 Interrupted, 2 Reset),
           │  │           ChannelMode (Int32 enum: 0 Automatic, 2 JogManual), FeedOverride (Double, %)
           │  └ Spindle1: IsRotating (Boolean), Override (Double, %), ActualSpeed (Double, 1/min; vendor)
           ├ Production                          (MachineTool ns)
           │  ├ ActiveProgram: Name (String), State/CurrentState (LocalizedText)
           │  └ PartsCounter (UInt32; vendor)
           ├ Notification                        (MachineTool ns)
           │  └ Messages: AlarmActive (Boolean; vendor), AlarmText (String; vendor)
           └ Tags: Group000, Group001, ...       configured tags the structure above lacks, 100 per group

`STANDARD_NODES` lists the standard variables' ids: a configured tag whose node is one of them (e.g.
`nsu=<namespace_uri>;s=Monitoring.Spindle1.Override`) binds to it, and its `sim:` spec (if any) drives it.
Any other tag with a `ns=N;s=...`/`nsu=...;s=...` (or numeric, non-zero namespace) node id is created under
Tags, typed from `tag.type` (default Double; Boolean/String when its simulated value is one).

The server identifies itself as a simulator: BuildInfo ProductUri `urn:shopfloor-collector:simulator`,
ProductName "shopfloor-collector simulator (OPC UA)", Identification.Manufacturer "shopfloor-collector
simulator" (the collector's identity evidence, docs/indicators.md).

Values follow a `MachineModel` ticked every `simulate.update_interval` and are written with source timestamps
from the sim's clock, only when they change (OPC UA semantics: SourceTimestamp is when the value changed).

Start-up: asyncua's `Server.init()` spends ~0.9 s filling the standard address space (6 k nodes). This module
fills it once per process and gives each server a copy-on-access view of it (`_SharedStandardNodes`), so the
second and later servers in a process init in ~20 ms. The server clock task is disabled (it made `stop()`
wait up to 1 s); the tick loop keeps ServerStatus/CurrentTime fresh instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.common.node import Node
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.address_space import NodeData
from asyncua.server.internal_server import InternalServer

from adapters.opcua.config import OpcUaDevice, OpcUaTag
from adapters.opcua.nodeids import make_node_id, parse_node
from adapters.opcua.security import POLICY_TYPES, Pki, create_certificate
from collector.config.secrets import read_secret
from simulators.machine import MachineModel
from simulators.opcua_deadband import EU_RANGE
from simulators.opcua_deadband import install as install_deadbands
from simulators.tasks import cancel_tasks

log = logging.getLogger(__name__)

MACHINE_TOOL_NS = "http://opcfoundation.org/UA/MachineTool/"
MACHINERY_NS = "http://opcfoundation.org/UA/Machinery/"
DI_NS = "http://opcfoundation.org/UA/DI/"
# How the simulator identifies itself (BuildInfo, Machinery Identification): a collector that reads this marks
# the device 模拟设备 and never counts it as networked unless `indicators.allow_simulated`
SIM_PRODUCT_URI = "urn:shopfloor-collector:simulator"
SIM_MANUFACTURER = "shopfloor-collector"
SIM_PRODUCT = "shopfloor-collector simulator (OPC UA)"
GROUP_SIZE = 100  # variables per object: asyncua slows down sharply with thousands under one parent

VARIANT_TYPES: dict[str, ua.VariantType] = {
    "bool": ua.VariantType.Boolean, "int16": ua.VariantType.Int16, "uint16": ua.VariantType.UInt16,
    "int32": ua.VariantType.Int32, "uint32": ua.VariantType.UInt32, "int64": ua.VariantType.Int64,
    "uint64": ua.VariantType.UInt64, "float": ua.VariantType.Float, "double": ua.VariantType.Double,
    "string": ua.VariantType.String, "datetime": ua.VariantType.DateTime,
}
_INT_BOUNDS: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1), ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1), ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1), ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1), ua.VariantType.UInt64: (0, 2**64 - 1),
}
_NUMERIC = frozenset(_INT_BOUNDS) | {ua.VariantType.Float, ua.VariantType.Double}

# ---------------------------------------------------------------------------------------- fast server init

_std_lock = threading.Lock()
_std_nodes: dict[ua.NodeId, NodeData] | None = None


def _standard_nodes() -> dict[ua.NodeId, NodeData]:
    """The standard address space, filled once per process (thread-safe; runs in a worker thread)."""
    global _std_nodes
    with _std_lock:
        if _std_nodes is None:
            from asyncua.server.standard_address_space import standard_address_space

            scratch = InternalServer()
            standard_address_space.fill_address_space(scratch.node_mgt_service)
            _std_nodes = dict(scratch.aspace._nodes)
        return _std_nodes


class _SharedStandardNodes(MutableMapping[ua.NodeId, NodeData]):
    """A server's node table on top of the shared, never-mutated standard nodes: a node is deep-copied the
    first time this server touches it, so servers in one process never see each other's writes."""

    def __init__(self, base: dict[ua.NodeId, NodeData]) -> None:
        self.base = base
        self.own: dict[ua.NodeId, NodeData] = {}
        self.deleted: set[ua.NodeId] = set()

    def __getitem__(self, key: ua.NodeId) -> NodeData:
        try:
            return self.own[key]
        except KeyError:
            pass
        if key in self.deleted:
            raise KeyError(key)
        node = self.own[key] = copy.deepcopy(self.base[key])
        return node

    def __setitem__(self, key: ua.NodeId, value: NodeData) -> None:
        self.own[key] = value
        self.deleted.discard(key)

    def __delitem__(self, key: ua.NodeId) -> None:
        if key not in self:
            raise KeyError(key)
        self.own.pop(key, None)
        if key in self.base:
            self.deleted.add(key)

    def __contains__(self, key: object) -> bool:
        return key in self.own or (key in self.base and key not in self.deleted)

    def __iter__(self) -> Iterator[ua.NodeId]:
        yield from self.own
        for key in self.base:
            if key not in self.own and key not in self.deleted:
                yield key

    def __len__(self) -> int:
        return len(self.own) + sum(1 for k in self.base if k not in self.own and k not in self.deleted)


class _FastInternalServer(InternalServer):
    """InternalServer whose standard address space comes from the per-process shared copy."""

    async def load_standard_address_space(self, shelf_file: Path | None = None) -> None:
        base = await asyncio.to_thread(_standard_nodes)
        self.aspace._nodes = _SharedStandardNodes(base)  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------- security


@dataclass(slots=True)
class SimSecurity:
    """How a secured simulator serves: its own certificate (made in `pki_dir/own/` on first start), the
    policy/mode endpoints it offers, and its user accounts.

    Client certificates are accepted when valid in time and their SAN URI matches the client's ApplicationUri
    (no trust list: it is a test server). `allow_none` adds an unsecured endpoint as well.
    """

    pki_dir: Path
    policies: Sequence[str] = ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
    modes: Sequence[str] = ("Sign", "SignAndEncrypt")
    users: Mapping[str, str] = field(default_factory=dict)
    allow_anonymous: bool = True
    allow_none: bool = False

    @property
    def pki(self) -> Pki:
        return Pki(self.pki_dir)


class _SimUsers:
    """asyncua user manager: anonymous (when allowed) or a user name with its password."""

    def __init__(self, users: Mapping[str, str], anonymous: bool) -> None:
        self.users = dict(users)
        self.anonymous = anonymous

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is None:  # anonymous (X509 user tokens are not offered)
            return User(role=UserRole.User) if self.anonymous else None
        if username is not None and username in self.users and self.users[username] == (password or ""):
            return User(role=UserRole.User, name=username)
        log.info("sim: user %r refused", username)
        return None


def security_from_device(device: OpcUaDevice) -> SimSecurity | None:
    """The sim's security for a device config that asks for it (`collector simulate`): the device's own policy
    and mode, its user, and a certificate under `<pki_dir>/../sim-pki/<device id>`."""
    sec = device.security
    if sec.mode == "None":
        return None
    users = {}
    if device.username:
        users[device.username] = read_secret(device.password_env, device.password_file) or ""
    base = (sec.pki_dir or Path("state") / "pki").parent / "sim-pki" / device.id
    return SimSecurity(base, policies=(sec.policy,), modes=(sec.mode,), users=users, allow_anonymous=not users)


# ---------------------------------------------------------------------------------------- the machine


class MachineContext:
    """What the standard variables' default behaviours read; outlives a stop/start of the server."""

    def __init__(self, device: OpcUaDevice, model: MachineModel, clock: Callable[[], float]) -> None:
        self.model = model
        self.clock = clock
        self.manufacturer = "shopfloor-collector simulator"
        self.model_name = device.name or "CNC-SIM"
        self.serial_number = f"SIM-{zlib.crc32(device.id.encode()):08X}"
        self.parts = 0.0


@dataclass(frozen=True, slots=True)
class StandardVar:
    """A variable of the standard structure: where it hangs, its type, and its default behaviour."""

    id: str
    parent: str
    browse_ns: str  # "di", "machinery", "mt", "dev" or "0"
    name: str
    vtype: ua.VariantType
    default: Callable[[MachineContext], Any]
    unit: str | None = None
    eu_range: tuple[float, float] | None = None  # an AnalogItem with this EURange (percent deadbands need one)


# (id, parent id, browse-name namespace, browse name) of the standard objects, parents first
STANDARD_OBJECTS: tuple[tuple[str, str, str, str], ...] = (
    ("Identification", "Machine", "di", "Identification"),
    ("Monitoring", "Machine", "mt", "Monitoring"),
    ("Monitoring.Channel1", "Monitoring", "dev", "Channel1"),
    ("Monitoring.Spindle1", "Monitoring", "dev", "Spindle1"),
    ("Production", "Machine", "mt", "Production"),
    ("Production.ActiveProgram", "Production", "mt", "ActiveProgram"),
    ("Production.ActiveProgram.State", "Production.ActiveProgram", "mt", "State"),
    ("Notification", "Machine", "mt", "Notification"),
    ("Notification.Messages", "Notification", "mt", "Messages"),
    ("Tags", "Machine", "dev", "Tags"),
)

_CHANNEL_STATE = {"running": 0, "alarm": 1, "idle": 2, "setup": 2}
_PROGRAM_STATE = {"running": "Running", "alarm": "Interrupted", "idle": "Ended", "setup": "Initializing"}
VT = ua.VariantType

STANDARD_NODES: tuple[StandardVar, ...] = (
    StandardVar("Identification.Manufacturer", "Identification", "di", "Manufacturer", VT.LocalizedText,
                lambda m: m.manufacturer),
    StandardVar("Identification.Model", "Identification", "di", "Model", VT.LocalizedText, lambda m: m.model_name),
    StandardVar("Identification.SerialNumber", "Identification", "di", "SerialNumber", VT.String,
                lambda m: m.serial_number),
    StandardVar("Monitoring.Channel1.ChannelState", "Monitoring.Channel1", "mt", "ChannelState", VT.Int32,
                lambda m: _CHANNEL_STATE[m.model.state]),
    StandardVar("Monitoring.Channel1.ChannelMode", "Monitoring.Channel1", "mt", "ChannelMode", VT.Int32,
                lambda m: 2 if m.model.state == "setup" else 0),
    StandardVar("Monitoring.Channel1.FeedOverride", "Monitoring.Channel1", "mt", "FeedOverride", VT.Double,
                lambda m: 100.0 if m.model.state == "running" else 0.0, "%", (0.0, 200.0)),
    StandardVar("Monitoring.Spindle1.IsRotating", "Monitoring.Spindle1", "mt", "IsRotating", VT.Boolean,
                lambda m: m.model.state == "running"),
    StandardVar("Monitoring.Spindle1.Override", "Monitoring.Spindle1", "mt", "Override", VT.Double,
                lambda m: 100.0, "%", (50.0, 120.0)),
    StandardVar("Monitoring.Spindle1.ActualSpeed", "Monitoring.Spindle1", "dev", "ActualSpeed", VT.Double,
                lambda m: round(8000.0 + 40.0 * math.sin(m.clock() / 7.0), 1) if m.model.state == "running"
                else 0.0, "1/min", (0.0, 12000.0)),
    StandardVar("Production.ActiveProgram.Name", "Production.ActiveProgram", "mt", "Name", VT.String,
                lambda m: "O1001"),
    StandardVar("Production.ActiveProgram.State.CurrentState", "Production.ActiveProgram.State", "0",
                "CurrentState", VT.LocalizedText, lambda m: _PROGRAM_STATE[m.model.state]),
    StandardVar("Production.PartsCounter", "Production", "dev", "PartsCounter", VT.UInt32,
                lambda m: int(m.parts)),
    StandardVar("Notification.Messages.AlarmActive", "Notification.Messages", "dev", "AlarmActive", VT.Boolean,
                lambda m: m.model.state == "alarm"),
    StandardVar("Notification.Messages.AlarmText", "Notification.Messages", "dev", "AlarmText", VT.String,
                lambda m: "E1042 spindle overload" if m.model.state == "alarm" else ""),
)
CYCLE_TIME_S = 30.0  # one part per 30 s of running, for Production.PartsCounter


@dataclass(slots=True)
class _Var:
    """A variable the tick loop writes: its node, type, value source and the last value written."""

    node_id: ua.NodeId
    vtype: ua.VariantType
    source: Callable[[], Any]
    last: Any = None


def encode(value: Any, vtype: ua.VariantType) -> Any:
    """A model value as what the variable's VariantType accepts (ints rounded and clamped, never raising on
    a number)."""
    if vtype == VT.Boolean:
        return bool(value)
    if vtype in _INT_BOUNDS:
        lo, hi = _INT_BOUNDS[vtype]
        return max(lo, min(hi, int(round(float(value)))))
    if vtype in (VT.Float, VT.Double):
        return float(value)
    if vtype == VT.String:
        return "" if value is None else str(value)
    if vtype == VT.LocalizedText:
        return value if isinstance(value, ua.LocalizedText) else ua.LocalizedText(str(value))
    if vtype == VT.DateTime:
        if isinstance(value, datetime):
            return value
        return datetime.fromtimestamp(float(value or 0), UTC)
    return value


class OpcUaMachineSim:
    """One simulated machine tool serving `device.endpoint`.

    `await start()` returns once the server listens; `await stop()` closes it (clients' sessions die).
    Both may be called again: each start builds a fresh server on the same port, the machine model (and its
    counters) carry on. `model` is the MachineModel (tests force states through it); `startup_s` is how
    long the last start took.
    """

    def __init__(self, device: OpcUaDevice, *, clock: Callable[[], float] = time.time,
                 extra_namespaces: Sequence[str] = (), security: SimSecurity | None = None,
                 min_keepalive_count: int = 1) -> None:
        """`clock` stamps values and drives the model (tests shift it to tell source from receive time);
        `extra_namespaces` are registered before the device's namespace, to move its index (tests of
        `nsu=` resolution); `security` makes it a secured server (default: what the device config asks for,
        see `security_from_device`); `min_keepalive_count` makes it revise a subscription's requested
        MaxKeepAliveCount up to at least that, as some servers do (keep-alives only every few cycles)."""
        self.device = device
        self.security = security if security is not None else security_from_device(device)
        self.application_uri = f"urn:shopfloor-collector:sim:{device.id}"
        self.clock = clock
        self.extra_namespaces = list(extra_namespaces)
        self.min_keepalive_count = max(1, min_keepalive_count)
        self.model = MachineModel(device.id, device.simulate, device.tags, clock=clock)
        self.machine = MachineContext(device, self.model, clock)
        self.server: Server | None = None
        self.namespaces: list[str] = []
        self.device_ns = 0
        self.node_ids: dict[str, ua.NodeId] = {}  # tag name -> node id it is served on
        self.startup_s = 0.0
        self._vars: list[_Var] = []
        self._task: asyncio.Task[None] | None = None
        self._last_clock_write = 0.0
        self._last_tick = clock()
        # every Write service request, as (node id, value) per node written: tests prove what reached the server
        self.write_requests: list[tuple[str, Any]] = []
        self.held: set[ua.NodeId] = set()  # nodes a client wrote: the tick loop no longer overwrites them

    @property
    def endpoint(self) -> str:
        return self.device.endpoint

    @property
    def certificate_path(self) -> Path | None:
        """The server's own certificate (DER) when secured: tests copy it to a client's trusted/."""
        return self.security.pki.cert if self.security is not None else None

    def session_count(self) -> int:
        """Client sessions the running server holds (0 when stopped): tests check that none leak."""
        return len(self.server.iserver._external_sessions) if self.server is not None else 0

    def subscription_count(self) -> int:
        """Subscriptions the running server holds (0 when stopped)."""
        return len(self.server.iserver.subscription_service.subscriptions) if self.server is not None else 0

    async def start(self) -> None:
        """Build the server and its address space, start listening, start the tick loop."""
        if self.server is not None:
            return
        t0 = time.perf_counter()
        server = Server(iserver=_FastInternalServer())
        await server.init()
        server.disable_clock()
        install_deadbands(server)
        if self.min_keepalive_count > 1:
            service = server.iserver.subscription_service
            clamp, floor = service._clamp_keep_alive_count, self.min_keepalive_count
            service._clamp_keep_alive_count = lambda requested: max(floor, clamp(requested))  # type: ignore[method-assign]
        server.set_endpoint(self.device.endpoint)
        server.set_server_name(f"shopfloor-collector sim {self.device.id}")
        await server.set_application_uri(self.application_uri)
        await server.set_build_info(SIM_PRODUCT_URI, SIM_MANUFACTURER, SIM_PRODUCT, "1.0", "0",
                                    datetime(2026, 1, 1, tzinfo=UTC))
        await self._apply_security(server)
        server.subscribe_server_callback(CallbackType.PreWrite, self._on_write)
        server.subscribe_server_callback(CallbackType.PostWrite, self._written)
        await self._build(server)
        await self._flush(server, self._collect(force=True))
        try:
            await server.start()
        except Exception:
            with contextlib.suppress(Exception):
                await server.stop()
            raise
        self.server = server
        self._task = asyncio.create_task(self._tick_loop(), name=f"opcua-sim-{self.device.id}")
        self.startup_s = time.perf_counter() - t0
        log.info("OPC UA sim %s listening on %s (%.0f ms)", self.device.id, self.device.endpoint,
                 self.startup_s * 1000)

    def _on_write(self, event: Any, dispatcher: Any) -> None:
        if not event.is_external:  # the server's own writes (namespaces, build info) are no client's
            return
        for wv in event.request_params.NodesToWrite:
            value = wv.Value.Value.Value if wv.Value is not None and wv.Value.Value is not None else None
            self.write_requests.append((wv.NodeId.to_string(), value))

    def _written(self, event: Any, dispatcher: Any) -> None:
        if not event.is_external:
            return
        for wv, status in zip(event.request_params.NodesToWrite, event.response_params, strict=False):
            if status.is_good():
                self.held.add(wv.NodeId)

    async def _apply_security(self, server: Server) -> None:
        """Endpoints, certificate and users: unsecured by default, or what `self.security` says."""
        sec = self.security
        users: dict[str, str] = {}
        if sec is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            if self.device.username:
                users[self.device.username] = read_secret(self.device.password_env, self.device.password_file) or ""
            anonymous = True
        else:
            await asyncio.to_thread(create_certificate, sec.pki, self.application_uri, server=True)
            await server.load_certificate(str(sec.pki.cert))
            await server.load_private_key(str(sec.pki.key))
            policies = [POLICY_TYPES[(p, m)] for p in sec.policies for m in sec.modes]
            if sec.allow_none:
                policies.insert(0, ua.SecurityPolicyType.NoSecurity)
            server.set_security_policy(policies)
            server.set_certificate_validator(CertificateValidator(
                CertificateValidatorOptions.BASIC_VALIDATION | CertificateValidatorOptions.PEER_CLIENT))
            users = dict(sec.users)
            anonymous = sec.allow_anonymous
        tokens: list[type] = [ua.AnonymousIdentityToken] if anonymous else []
        if users:
            tokens.append(ua.UserNameIdentityToken)
        server.set_identity_tokens(tokens)
        server.iserver.user_manager = _SimUsers(users, anonymous)  # type: ignore[assignment]

    async def stop(self) -> None:
        """Stop ticking and close the server and every client connection."""
        task, self._task = self._task, None
        await cancel_tasks(task)
        server, self.server = self.server, None
        if server is not None:
            await server.stop()

    async def __aenter__(self) -> OpcUaMachineSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ address space

    async def _build(self, server: Server) -> None:
        for uri in self.extra_namespaces:
            await server.register_namespace(uri)
        dev_ns = self.device_ns = await server.register_namespace(self.device.namespace_uri)
        ns = {"0": 0, "dev": dev_ns, "di": await server.register_namespace(DI_NS),
              "machinery": await server.register_namespace(MACHINERY_NS),
              "mt": await server.register_namespace(MACHINE_TOOL_NS)}
        tag_ids = await self._tag_node_ids(server)
        self.namespaces = await server.get_namespace_array()

        def sid(name: str) -> ua.NodeId:
            return make_node_id(name, dev_ns)

        machines = await server.nodes.objects.add_folder(sid("Machines"), ua.QualifiedName("Machines", ns["machinery"]))
        objects: dict[str, Node] = {
            "Machine": await machines.add_object(sid("Machine"), ua.QualifiedName(self.device.id, dev_ns))}
        for oid, parent, bns, name in STANDARD_OBJECTS:
            objects[oid] = await objects[parent].add_object(sid(oid), ua.QualifiedName(name, ns[bns]))

        self._vars = []
        bound: dict[tuple[int, Any], OpcUaTag] = {(node_id.NamespaceIndex, node_id.Identifier): tag
                                                  for tag, node_id in tag_ids}
        for std in STANDARD_NODES:
            node_id = sid(std.id)
            tag = bound.pop((dev_ns, std.id), None)
            vtype = std.vtype
            source: Callable[[], Any] = _bind(std.default, self.machine)
            eu = std.eu_range
            if tag is not None:
                eu = tag_eu_range(tag) or eu
                if tag.type is not None:
                    vtype = VARIANT_TYPES[tag.type]
                if tag.sim is not None:
                    source = _tag_source(self.model, tag.name)
                self.node_ids[tag.name] = node_id
            await self._add_var(objects[std.parent], node_id, ua.QualifiedName(std.name, ns[std.browse_ns]), vtype,
                                source, tag.unit if tag is not None and tag.unit else std.unit,
                                tag is not None and tag.write.writable, eu)

        groups = [f"Tags.Group{g:03d}" for g in range(len(tag_ids) // GROUP_SIZE + 1)]
        structure = {(dev_ns, name) for name in ("Machines", "Machine", *(o[0] for o in STANDARD_OBJECTS), *groups)}
        taken: set[tuple[int, Any]] = set()
        group: Node | None = None
        count = 0
        for tag, node_id in tag_ids:
            key = (node_id.NamespaceIndex, node_id.Identifier)
            if key not in bound:
                continue  # bound to a standard node above
            if key in structure:
                log.warning("sim %s: tag %s: %s is an object of the machine structure, not a variable",
                            self.device.id, tag.name, node_id.to_string())
                continue
            if key in taken:  # a second tag on the same node (e.g. another scale) reads the first one's node
                self.node_ids[tag.name] = node_id
                continue
            taken.add(key)
            if count % GROUP_SIZE == 0:
                gid = groups[count // GROUP_SIZE]
                group = await objects["Tags"].add_object(sid(gid), ua.QualifiedName(gid[5:], dev_ns))
            count += 1
            assert group is not None
            vtype = VARIANT_TYPES[tag.type] if tag.type else _infer_vtype(self.model.value(tag.name))
            bname = ua.QualifiedName(str(node_id.Identifier), node_id.NamespaceIndex)
            await self._add_var(group, node_id, bname, vtype, _tag_source(self.model, tag.name), tag.unit,
                                tag.write.writable, tag_eu_range(tag))
            self.node_ids[tag.name] = node_id

    async def _tag_node_ids(self, server: Server) -> list[tuple[OpcUaTag, ua.NodeId]]:
        """The node id each configured tag names (registering namespaces it needs); browse paths and
        namespace-0 ids are left to the standard structure."""
        out: list[tuple[OpcUaTag, ua.NodeId]] = []
        for tag in self.device.tags:
            try:
                ref = parse_node(tag.node)
            except ValueError as exc:
                log.warning("sim %s: tag %s: %s", self.device.id, tag.name, exc)
                continue
            if ref.node_id is None:
                continue
            if ref.namespace_uri is not None:
                index = await server.register_namespace(ref.namespace_uri)
            else:
                index = ref.node_id.NamespaceIndex
                if index == 0:
                    log.debug("sim %s: tag %s: %s is in namespace 0: served by the standard nodes or absent", self.device.id, tag.name,
                                tag.node)
                    continue
                while len(await server.get_namespace_array()) <= index:
                    n = len(await server.get_namespace_array())
                    await server.register_namespace(f"urn:shopfloor-collector:sim:{self.device.id}:ns{n}")
            out.append((tag, make_node_id(ref.node_id.Identifier, index, ref.node_id.NodeIdType)))
        return out

    async def _add_var(self, parent: Node, node_id: ua.NodeId, bname: ua.QualifiedName, vtype: ua.VariantType,
                       source: Callable[[], Any], unit: str | None = None, writable: bool = False,
                       eu_range: tuple[float, float] | None = None) -> None:
        """A variable, with an EngineeringUnits property when it has a unit (what `collector discover` reads);
        writable by clients when its tag has `write.allowed`. A numeric one with `eu_range` is an AnalogItem with that
        EURange, which percent deadbands are computed on (simulators/opcua_deadband.py)."""
        var = _Var(node_id, vtype, source)
        try:
            initial = encode(source(), vtype)
        except (TypeError, ValueError):
            initial = encode(0 if vtype not in (VT.String, VT.LocalizedText) else "", vtype)
        node = await parent.add_variable(node_id, bname, ua.Variant(initial, vtype))
        if writable:
            await node.set_writable()
        if unit:
            eu = ua.EUInformation(NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
                                  DisplayName=ua.LocalizedText(unit), Description=ua.LocalizedText(unit))
            eu_id = make_node_id(f"{node_id.Identifier!s}.EngineeringUnits", node_id.NamespaceIndex)
            await node.add_property(eu_id, ua.QualifiedName("EngineeringUnits", 0), ua.Variant(eu, VT.ExtensionObject))
        if eu_range is not None and vtype in _NUMERIC:
            range_id = make_node_id(f"{node_id.Identifier!s}.EURange", node_id.NamespaceIndex)
            value = ua.Range(Low=eu_range[0], High=eu_range[1])
            await node.add_property(range_id, EU_RANGE, ua.Variant(value, VT.ExtensionObject))
            base, analog = make_node_id(ua.ObjectIds.BaseDataVariableType, 0), make_node_id(ua.ObjectIds.AnalogItemType, 0)
            await node.delete_reference(base, ua.ObjectIds.HasTypeDefinition, bidirectional=False)
            await node.add_reference(analog, ua.ObjectIds.HasTypeDefinition, bidirectional=False)
        self._vars.append(var)

    # ------------------------------------------------------------------ values

    def _collect(self, force: bool = False) -> list[tuple[ua.NodeId, ua.DataValue]]:
        """The writes for every variable whose value changed (all of them when `force`), stamped now."""
        now = self.clock()
        stamp = cast(Any, datetime.fromtimestamp(now, UTC))
        writes = []
        held = self.held
        for var in self._vars:
            if held and var.node_id in held:
                continue
            try:
                value = encode(var.source(), var.vtype)
            except (TypeError, ValueError, OverflowError):
                continue
            if not force and value == var.last:
                continue
            var.last = value
            writes.append((var.node_id, ua.DataValue(Value=ua.Variant(value, var.vtype), SourceTimestamp=stamp,
                                                     ServerTimestamp=stamp)))
        if now - self._last_clock_write >= 1.0:  # the server's own clock task is disabled (see module doc)
            self._last_clock_write = now
            writes.append((make_node_id(ua.ObjectIds.Server_ServerStatus_CurrentTime, 0),
                           ua.DataValue(Value=ua.Variant(stamp, VT.DateTime), SourceTimestamp=stamp,
                                        ServerTimestamp=stamp)))
        return writes

    async def _flush(self, server: Server, writes: list[tuple[ua.NodeId, ua.DataValue]]) -> None:
        """Write straight into the address space (no service layer: cheap, and subscriptions still fire)."""
        aspace = server.iserver.aspace
        for node_id, dv in writes:
            status = await aspace.write_attribute_value(node_id, ua.AttributeIds.Value, dv)
            if not status.is_good():
                log.debug("sim %s: write %s: %s", self.device.id, node_id.to_string(), status.name)

    async def update_now(self) -> None:
        """Tick the model and write the changed values now, instead of waiting for the loop (tests call it
        after `model.force_state(...)`, whose effect on tag values shows from the next tick)."""
        if self.server is not None:
            self._advance()
            await self._flush(self.server, self._collect())

    def _advance(self) -> None:
        """One model tick, plus the parts counter of the standard Production node."""
        self.model.tick()
        now = self.clock()
        if self.model.state == "running":
            self.machine.parts += max(0.0, now - self._last_tick) / CYCLE_TIME_S
        self._last_tick = now

    async def _tick_loop(self) -> None:
        """Advance the machine and publish its values every `simulate.update_interval` seconds."""
        interval = self.device.simulate.update_interval
        self._last_tick = self.clock()
        while True:
            await asyncio.sleep(interval)
            server = self.server
            if server is None:
                return
            try:
                self._advance()
                await self._flush(server, self._collect())
            except Exception:  # a bug in one tick must not kill the simulated machine
                log.exception("sim %s: tick failed", self.device.id)


def _bind(fn: Callable[[MachineContext], Any], machine: MachineContext) -> Callable[[], Any]:
    return lambda: fn(machine)


def _tag_source(model: MachineModel, name: str) -> Callable[[], Any]:
    return lambda: model.value(name)


def tag_eu_range(tag: OpcUaTag) -> tuple[float, float] | None:
    """The EURange the sim gives a tag's node: the tag's `range`, in the node's raw units (before the
    collector's `scale` and `offset`), so a percent band means the same on the server and in the collector's
    own fallback (which takes it of `range`)."""
    if tag.range is None or not tag.scale:
        return None
    lo, hi = ((float(v) - float(tag.offset)) / float(tag.scale) for v in tag.range)
    return (min(lo, hi), max(lo, hi))


def _infer_vtype(value: Any) -> ua.VariantType:
    """Default Double; Boolean or String when the simulated value is one (e.g. `state` with names)."""
    if isinstance(value, bool):
        return VT.Boolean
    if isinstance(value, str):
        return VT.String
    return VT.Double
