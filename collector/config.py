"""The YAML config (pydantic v2 models) and the process settings (pydantic-settings, env `COLLECTOR_*`).

Every model forbids unknown keys, so a typo is an error, not a silently ignored option. `load_config` turns
pydantic's errors into one line per problem that names the path the user wrote, e.g.
`devices[3].tags[2].type: ...`. Secrets never live in the YAML: only file paths or env variable names do.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from collector.credit_code import credit_code_problem


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=False)


# --------------------------------------------------------------------------------------------- endpoints


@dataclass(frozen=True)
class Endpoint:
    """A parsed device endpoint URL (`opc.tcp://`, `tcp://`, `rtu+tcp://`, `serial://`)."""

    scheme: str
    host: str
    port: int
    path: str = ""
    params: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


ENDPOINT_SCHEMES = {"opcua": ("opc.tcp",), "modbus": ("tcp", "rtu+tcp", "serial")}
DEFAULT_PORTS = {"opc.tcp": 4840, "tcp": 502, "rtu+tcp": 502, "mqtt": 1883, "mqtts": 8883}


SERIAL_PARAMS = {"baudrate": None, "parity": ("N", "E", "O"), "stopbits": ("1", "2"), "bytesize": ("7", "8")}


def _check_serial_params(url: str, params: dict[str, str]) -> None:
    """`serial://` query keys (Modbus RTU): baudrate (a number), parity N|E|O, stopbits 1|2, bytesize 7|8."""
    for key, value in params.items():
        if key not in SERIAL_PARAMS:
            raise ValueError(f"'{url}': unknown serial parameter '{key}'; use baudrate, parity, stopbits, bytesize")
        allowed = SERIAL_PARAMS[key]
        ok = value.isdigit() and int(value) > 0 if allowed is None else value.upper() in allowed
        if not ok:
            raise ValueError(f"'{url}': {key}={value} is not valid"
                             + (f" (one of {', '.join(allowed)})" if allowed else " (a number, e.g. 9600)"))


def url_with_scheme(v: str, schemes: tuple[str, ...], what: str) -> str:
    """`v` unchanged when it is a URL with one of `schemes` and a host; else a ValueError saying `what`."""
    parts = urlsplit(v)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"'{v}' is not {what}")
    return v


def parse_endpoint(url: str) -> Endpoint:
    """Parse an endpoint URL; raises ValueError with the accepted forms."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    params = dict(parse_qsl(parts.query))
    if scheme == "serial":
        if not parts.path:
            raise ValueError("a serial endpoint needs a device path, e.g. serial:///dev/ttyUSB0?baudrate=9600")
        _check_serial_params(url, params)
        return Endpoint(scheme, "", 0, parts.path, params)
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(
            f"'{url}' is not an endpoint URL; use opc.tcp://host:port[/path], tcp://host:port, "
            "rtu+tcp://host:port or serial:///dev/ttyUSB0?baudrate=9600&parity=N"
        )
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:  # port out of range or not a number
        raise ValueError(f"'{url}': {exc}") from None
    return Endpoint(scheme, parts.hostname, port, parts.path, params)


# --------------------------------------------------------------------------------------------- simulation


MachineState = Literal["running", "idle", "alarm", "setup"]
DEFAULT_STATE_WEIGHTS: dict[MachineState, float] = {"running": 0.7, "idle": 0.2, "alarm": 0.05, "setup": 0.05}


class SimSpec(Strict):
    """How a simulator makes a tag's value move (ignored by the collector).

    kinds: `state` (the machine state: 0 idle, 1 running, 2 alarm, 3 setup, or its name for strings),
    `constant`, `walk` (random walk in [min, max] while running, `idle` otherwise), `wave` (sine over
    `period` s), `counter` (rises by `rate`/s while running), `choice` (one of `values`, changes with the
    state), `alarm` (true/1 while in alarm).
    """

    kind: Literal["state", "constant", "walk", "wave", "counter", "choice", "alarm", "running"] = "constant"
    value: Any = None
    min: float = 0.0
    max: float = 100.0
    idle: float | None = None
    period: float = 60.0
    rate: float = 1.0
    step: float = 0.05
    values: list[Any] = Field(default_factory=list)


class SimulateConfig(Strict):
    """Per-device simulator behaviour: the machine's state machine and faults to inject."""

    states: dict[MachineState, float] = Field(
        default_factory=lambda: dict(DEFAULT_STATE_WEIGHTS))
    dwell: tuple[float, float] = (20.0, 60.0)
    initial: MachineState = "running"
    seed: int | None = None
    update_interval: float = 0.5
    # Fault injection (Modbus; see docs/simulators.md)
    exception_addresses: list[int] = Field(default_factory=list)
    exception_code: Literal[2, 4] = 2
    delay: float = 0.0
    silent: bool = False


# --------------------------------------------------------------------------------------------- assets

Usage = Literal["production", "auxiliary", "non_production"]
AssetStatus = Literal["in_service", "idle", "sealed", "scrapped"]
DigitalBasis = Literal["native", "retrofit_control", "retrofit_sensing"]


class AssetFields(Strict):
    """Register (设备台账) fields of one piece of equipment. Defaults are stated in docs/indicators.md."""

    name: str | None = None
    workshop: str | None = None
    line: str | None = None
    category: str | None = None
    usage: Usage = "production"
    status: AssetStatus = "in_service"
    commissioned: dt.date | None = None
    is_cnc: bool = False
    is_digital: bool | None = None
    digital_basis: DigitalBasis | None = None
    is_key_process: bool = False
    original_value: float | None = Field(default=None, ge=0)


class AssetEntry(AssetFields):
    """An entry of `assets:`: equipment on the register, optionally bound to a configured device."""

    id: str = Field(min_length=1)
    device: str | None = None


# --------------------------------------------------------------------------------------------- tags

ModbusTable = Literal["coil", "discrete_input", "input_register", "holding_register"]
ModbusType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string", "raw"
]
ByteOrder = Literal["ABCD", "BADC", "CDAB", "DCBA"]
BYTE_ORDER_ALIASES = {"ABCDEFGH": "ABCD", "BADCFEHG": "BADC", "GHEFCDAB": "CDAB", "HGFEDCBA": "DCBA",
                      "AB": "ABCD", "BA": "BADC"}
REGISTERS_PER_TYPE = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2,
                      "int64": 4, "uint64": 4, "float64": 4}
CLASSIC_TABLES: dict[int, ModbusTable] = {0: "coil", 1: "discrete_input", 3: "input_register",
                                          4: "holding_register"}
BIT_TABLES = ("coil", "discrete_input")


def parse_classic_register(value: int | str, address_base: int) -> tuple[ModbusTable, int]:
    """Turn `40001` / `400001` / `30001` / `10001` / `00001` into (table, 0-based wire address)."""
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError(f"register '{value}' is not a classic Modbus reference like 40001 or 400001")
    n = int(text)
    six = len(text) == 6 or n >= 100000
    table_digit, offset = (n // 100000, n % 100000) if six else (n // 10000, n % 10000)
    if table_digit not in CLASSIC_TABLES:
        raise ValueError(f"register '{value}': the first digit must be 0 (coil), 1 (discrete input), "
                         "3 (input register) or 4 (holding register)")
    address = offset - address_base
    if address < 0:
        raise ValueError(f"register '{value}' is below the first register with address_base {address_base}")
    return CLASSIC_TABLES[table_digit], address


def _size(type_: str | None, count: int | None) -> int:
    if type_ in ("string", "raw"):
        return count or 1
    return REGISTERS_PER_TYPE.get(type_ or "uint16", 1)


class TagBase(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    range: tuple[float, float] | None = None
    description: str | None = None
    sim: SimSpec | None = None


class ModbusTag(TagBase):
    """A Modbus tag. Give `table` + `address` (0-based, as on the wire) or a classic `register` (40001)."""

    type: ModbusType = "uint16"
    count: int | None = Field(default=None, ge=1, le=125, description="registers of a string or raw tag")
    bit: int | None = Field(default=None, ge=0, le=15)
    byte_order: ByteOrder | None = None
    table: ModbusTable | None = None
    address: int | None = Field(default=None, ge=0, le=65535)
    register_ref: int | str | None = Field(default=None, alias="register")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("byte_order", mode="before")
    @classmethod
    def _alias_byte_order(cls, v: Any) -> Any:
        return BYTE_ORDER_ALIASES.get(str(v).upper(), str(v).upper()) if v is not None else v

    @field_validator("count")
    @classmethod
    def _count_for_type(cls, v: int | None, info: ValidationInfo) -> int | None:
        if info.data.get("type") in ("string", "raw") and v is None:
            raise ValueError("a string or raw tag needs count: the number of registers")
        return v

    @field_validator("address")
    @classmethod
    def _address_fits(cls, v: int | None, info: ValidationInfo) -> int | None:
        size = _size(info.data.get("type"), info.data.get("count"))
        if v is not None and v + size - 1 > 65535:
            raise ValueError(f"address {v} + {size} registers runs past the last address 65535")
        return v

    def register_count(self) -> int:
        """How many 16-bit registers (or bits, for coils) the tag occupies."""
        return _size(self.type, self.count)

    @model_validator(mode="after")
    def _check_address(self) -> ModbusTag:
        if (self.address is None) == (self.register_ref is None):
            raise ValueError("give either table + address (0-based) or a classic register like 40001")
        if self.address is not None and self.table is None:
            raise ValueError("an address needs a table: coil, discrete_input, input_register or holding_register")
        if self.table in BIT_TABLES and self.type != "bool":
            raise ValueError(f"a {self.table} holds bits: its type must be bool")
        if self.type == "bool" and self.table not in BIT_TABLES and self.table is not None and self.bit is None:
            raise ValueError("a bool in a register needs bit: 0..15")
        return self


class OpcUaTag(TagBase):
    """An OPC UA tag: `node` is a node id (`ns=2;s=X`, `nsu=urn:...;s=X`, `i=2258`) or a browse path
    (`/Objects/3:Machines/3:Spindle/3:Speed`)."""

    node: str = Field(min_length=1)
    type: Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float", "double",
                  "string", "datetime"] | None = None
    deadband: float | None = Field(default=None, ge=0)

    @field_validator("node")
    @classmethod
    def _node_form(cls, v: str) -> str:
        if v.startswith("/"):
            return v
        if not re.match(r"^(ns=\d+;|nsu=[^;]+;)?(i=\d+|s=.+|g=[0-9a-fA-F\-]{36}|b=.+)$", v):
            raise ValueError(f"'{v}' is not a node id (ns=2;s=Name, nsu=urn:x;s=Name, i=2258) or a browse path "
                             "(/Objects/2:Machine/2:Speed)")
        return v


# --------------------------------------------------------------------------------------------- devices


class DeviceBase(Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$")
    name: str | None = None
    endpoint: str
    interval: float = Field(default=1.0, gt=0, le=86400, description="poll interval, seconds")
    enabled: bool = True
    template: str | None = None
    asset: AssetFields = Field(default_factory=AssetFields)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str, info: ValidationInfo) -> str:
        ep = parse_endpoint(v)
        protocol = cls.model_fields["protocol"].default
        if ep.scheme not in ENDPOINT_SCHEMES[protocol]:
            allowed = ", ".join(f"{s}://" for s in ENDPOINT_SCHEMES[protocol])
            raise ValueError(f"a {protocol} device's endpoint starts with {allowed} (got '{v}')")
        return v

    @property
    def parsed_endpoint(self) -> Endpoint:
        return parse_endpoint(self.endpoint)

    @model_validator(mode="after")
    def _unique_tags(self) -> DeviceBase:
        seen: set[str] = set()
        for tag in getattr(self, "tags", []):
            if tag.name in seen:
                raise ValueError(f"tag name '{tag.name}' is used twice in device '{self.id}'")
            seen.add(tag.name)
        return self


class ModbusDevice(DeviceBase):
    protocol: Literal["modbus"] = "modbus"
    unit_id: int = Field(default=1, ge=0, le=255)
    address_base: Literal[0, 1] = 1
    byte_order: ByteOrder = "ABCD"
    timeout: float = Field(default=1.0, gt=0)
    retries: int = Field(default=1, ge=0, le=10)
    inter_request_delay: float = Field(default=0.0, ge=0)
    pause_after_connect: float = Field(default=0.0, ge=0)
    max_gap: int = Field(default=10, ge=0, le=125)
    max_registers: int = Field(default=125, ge=1, le=125)
    max_bits: int = Field(default=2000, ge=1, le=2000)
    coalesce: bool = True
    degrade_after: int = Field(default=3, ge=1)
    degrade_for: float = Field(default=30.0, ge=0)
    tags: list[ModbusTag] = Field(min_length=1)
    # Read once per connect and once a day as identity evidence (a serial-number register), never polled
    identity: list[ModbusTag] = Field(default_factory=list)

    @field_validator("byte_order", mode="before")
    @classmethod
    def _alias_byte_order(cls, v: Any) -> Any:
        return BYTE_ORDER_ALIASES.get(str(v).upper(), str(v).upper())

    @model_validator(mode="after")
    def _resolve_registers(self) -> ModbusDevice:
        """Turn classic `register:` references into table + address with this device's address_base."""
        for tag in [*self.tags, *self.identity]:
            if tag.register_ref is not None:
                tag.table, tag.address = parse_classic_register(tag.register_ref, self.address_base)
                if tag.table in BIT_TABLES and tag.type != "bool":
                    raise ValueError(f"tag '{tag.name}': register {tag.register_ref} is a {tag.table}: "
                                     "type must be bool")
                if tag.address + tag.register_count() - 1 > 65535:
                    raise ValueError(f"tag '{tag.name}': register {tag.register_ref} runs past address 65535")
        return self


class OpcUaSecurity(Strict):
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"] = "None"
    pki_dir: Path | None = Field(default=None, description="own/, trusted/, rejected/; default <state_dir>/pki")
    application_uri: str = "urn:shopfloor-collector:client"

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSecurity:
        if (self.mode == "None") != (self.policy == "None"):
            raise ValueError("security mode None goes with policy None; Sign/SignAndEncrypt need a policy "
                             "(Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss)")
        return self


class OpcUaDevice(DeviceBase):
    protocol: Literal["opcua"] = "opcua"
    mode: Literal["poll", "subscribe"] = "subscribe"
    timeout: float = Field(default=4.0, gt=0)
    sampling_interval: float | None = Field(default=None, ge=0, description="ms; default: interval")
    queue_size: int = Field(default=10, ge=1)
    deadband_type: Literal["none", "absolute", "percent"] = "none"
    max_nodes_per_read: int = Field(default=1000, ge=1)
    security: OpcUaSecurity = Field(default_factory=OpcUaSecurity)
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    namespace_uri: str = "urn:shopfloor-collector:sim"
    tags: list[OpcUaTag] = Field(min_length=1)


Device = Annotated[ModbusDevice | OpcUaDevice, Field(discriminator="protocol")]


class TemplateConfig(Strict):
    """A reusable tag list (and defaults) that devices name with `template:`."""

    protocol: Literal["modbus", "opcua"]
    description: str | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)
    tags: list[dict[str, Any]] = Field(min_length=1)


# --------------------------------------------------------------------------------------------- the rest


class SiteConfig(Strict):
    enterprise_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$")
    enterprise_name: str | None = None
    credit_code: str | None = Field(default=None, description="统一社会信用代码 (GB 32100-2015, 18 characters, "
                                    "check character verified): shown in the report header")
    county: str | None = None
    city: str | None = None
    workshop: str = Field(default="main", pattern=r"^[A-Za-z0-9_\-]+$")
    timezone: str = "Asia/Shanghai"

    @field_validator("credit_code")
    @classmethod
    def _credit_code(cls, v: str | None) -> str | None:
        if v is None:
            return None
        code = v.strip().upper()
        problem = credit_code_problem(code)
        if problem:
            raise ValueError(f"'{v}' {problem}; copy it from the business licence (营业执照)")
        return code

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone '{v}'; use an IANA name like Asia/Shanghai") from None
        return v


class SparkplugConfig(Strict):
    """Sparkplug B ids (docs/sparkplug.md); empty means the site's enterprise id and workshop."""

    group_id: str | None = None
    edge_node_id: str | None = None
    primary_host_id: str | None = Field(
        default=None, description="wait for this Primary Host Application's STATE (online) before NBIRTH, and "
        "end the session when it goes offline; data waits in the outbox (docs/sparkplug.md)")

    @field_validator("group_id", "edge_node_id", "primary_host_id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/+#")):
            raise ValueError(f"'{v}' is not a Sparkplug id: it must be non-empty without '/', '+' or '#'")
        return v


class MqttConfig(Strict):
    url: str = "mqtt://127.0.0.1:1883"
    topic_root: str = "factory/{enterprise}/{workshop}"
    format: Literal["json", "sparkplug"] = "json"
    sparkplug: SparkplugConfig = Field(default_factory=SparkplugConfig)
    qos: Literal[0, 1] = 1
    client_id: str | None = None
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = Field(default=30, ge=5)
    max_inflight: int = Field(default=100, ge=1, le=65535)
    reconnect_max_delay: int = Field(default=10, ge=1, le=300, description="seconds; reconnects back off "
                                     "from 1 s up to this")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return url_with_scheme(v, ("mqtt", "mqtts"), "a broker URL; use mqtt://host:1883 or mqtts://host:8883")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or DEFAULT_PORTS[parts.scheme]

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"


class HttpConfig(Strict):
    """The status page, /healthz, /metrics and the JSON API (docs/operations.md).

    On by default: a gateway runs unattended and this is how its keepers see it works. The token (env
    `COLLECTOR_HTTP_TOKEN` or `token_file`) is required when `listen` is not a loopback address.
    """

    listen: str = "127.0.0.1:8321"
    enabled: bool = True
    token_file: Path | None = None
    stall_after: float = Field(default=120.0, gt=0, description="/healthz fails when a non-empty outbox has "
                               "delivered nothing for this many seconds")
    allowed_hosts: list[str] = Field(default_factory=list, description="host names (no port) a request's Host "
                                     "may carry besides the listen host, localhost, 127.0.0.1 and [::1]")
    header_timeout: float = Field(default=10.0, gt=0, le=300, description="seconds a new connection has to "
                                  "send a complete request head")
    idle_timeout: float = Field(default=30.0, gt=0, le=3600, description="seconds a kept-alive connection may "
                                "wait for its next request")
    max_connections: int = Field(default=256, ge=4, le=65536, description="open connections at most (also "
                                 "bounded by the file-descriptor limit); the oldest idle one makes room")

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, v: list[str]) -> list[str]:
        out = []
        for name in v:
            host = name.strip().lower()
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            if not host or any(c in host for c in "/ @") or (":" in host and host.count(":") < 2):
                raise ValueError(f"'{name}' is not a host name: give the name or address alone, without scheme "
                                 "or port (e.g. gateway-07.plant.local, 192.168.10.7)")
            out.append(host)
        return out

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"'{v}' is not host:port (e.g. 127.0.0.1:8321, 0.0.0.0:8321, [::1]:8321)")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def loopback(self) -> bool:
        import ipaddress

        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class OutboxConfig(Strict):
    """Durable store-and-forward per sink (docs/outbox.md)."""

    max_bytes: int = Field(default=512 * 1024 * 1024, ge=1024, description="payload bytes per sink")
    max_age: float = Field(default=7 * 86400.0, gt=0, description="seconds")
    fsync: bool = Field(default=False, description="fsync every commit (power-loss safe, slower)")
    commit_interval: float = Field(default=0.05, gt=0, le=5)
    live_share: float = Field(default=0.5, gt=0, le=1, description="share of the link live data gets while a "
                              "backlog drains")


class EvidenceConfig(Strict):
    """Anchoring the evidence chain (docs/indicators.md): where the signed chain heads are sent."""

    topic: str = Field(default="{root}/evidence/head", description="MQTT topic of the signed heads (retained, "
                       "QoS 1, through the outbox); {root}, {enterprise} and {workshop} are filled in")
    anchor_interval: float = Field(default=86400.0, ge=60, description="seconds between anchors of an unchanged "
                                   "head (a changed head is anchored at once)")
    hub: str | None = Field(default=None, description="reserved for the city hub's address (a later release)")

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v or any(c in v for c in "#+") or v.startswith("/"):
            raise ValueError(f"'{v}' is not a topic to publish to (no wildcards # +, no leading /)")
        try:
            v.format(root="r", enterprise="e", workshop="w")
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"'{v}': only {{root}}, {{enterprise}} and {{workshop}} can be filled in") from None
        return v

    @field_validator("hub")
    @classmethod
    def _hub(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError("sending heads to the city hub is not built yet (a later release); remove "
                             "evidence.hub: the heads go to evidence.topic on the MQTT broker meanwhile")
        return v


class InfluxConfig(Strict):
    """An InfluxDB 2.x (or any `/api/v2/write` server) sink; the token comes from env or a file."""

    url: str
    org: str = "shopfloor"
    bucket: str = "shopfloor"
    token_env: str = "COLLECTOR_INFLUX_TOKEN"
    token_file: Path | None = None
    measurement: str | None = Field(default=None, description="default: the device's template name, else "
                                    "'device'")
    batch_rows: int = Field(default=500, ge=1, description="outbox rows (device cycles) per HTTP write")
    gzip: bool = True
    timeout: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return url_with_scheme(v, ("http", "https"), "an HTTP URL; use http://host:8086")


class IndicatorTargets(Strict):
    cnc_rate: float = Field(default=0.70, ge=0, le=1)
    networking_rate: float = Field(default=0.55, ge=0, le=1)


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SHIFT = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)-([01]?\d|2[0-4]):([0-5]\d)$")


class CalendarConfig(Strict):
    """Shift calendar (expected time of the 联网率 evidence rule): working days, shifts, holidays, 调休 days.

    A shift is `"HH:MM-HH:MM"`; one that ends at or before its start runs past midnight and belongs to the day
    it starts on. `workdays` are extra working days (调休补班) that override `working_days` and `holidays`.
    """

    working_days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS[:5]))
    shifts: list[str] = Field(min_length=1)
    holidays: list[dt.date] = Field(default_factory=list)
    workdays: list[dt.date] = Field(default_factory=list)

    @field_validator("shifts")
    @classmethod
    def _shift_form(cls, v: list[str]) -> list[str]:
        for s in v:
            if not _SHIFT.match(str(s).strip()):
                raise ValueError(f"shift '{s}' is not HH:MM-HH:MM (quote it in YAML, e.g. \"08:00-20:00\")")
        return [str(s).strip() for s in v]

    def shift_minutes(self) -> list[tuple[int, int]]:
        """Each shift as (start, end) minutes after the midnight of its day; end may exceed 1440."""
        out = []
        for s in self.shifts:
            m = _SHIFT.match(s)
            assert m is not None
            a = int(m[1]) * 60 + int(m[2])
            b = int(m[3]) * 60 + int(m[4])
            out.append((a, b if b > a else b + 1440))
        return out


class IndicatorConfig(Strict):
    """Parameters of INDICATORS.md (defset v1); seconds for durations."""

    publish_interval: float = Field(default=60.0, gt=0)
    bucket: float = Field(default=300.0, gt=0)
    coverage: float = Field(default=0.80, ge=0, le=1)
    day_share: float = Field(default=0.50, ge=0, le=1)
    stale_after: float = Field(default=900.0, gt=0)
    live_window: float | None = Field(default=None, gt=0, description="default 2 x bucket")
    scope: Literal["all", "key_process"] = "all"
    pledge: str | None = Field(default=None, description="企业承诺 text in the report footer (default: a standard "
                               "pledge in the report's language)")
    # Count devices whose identity says simulator (demos only): every output then carries SIMULATED_BANNER
    allow_simulated: bool = False
    targets: IndicatorTargets = Field(default_factory=IndicatorTargets)
    calendar: CalendarConfig | None = None

    @property
    def live_window_s(self) -> float:
        return self.live_window if self.live_window is not None else 2 * self.bucket


def _validate_repeated_tags(devices: list[Any]) -> list[Any]:
    """Many configs list the same tags on many devices (one machine type, a template, an exported tag list).
    Validate each distinct tag once and give every device listing it that one instance (pydantic keeps model
    instances as they are): a hundred copies then cost the time and memory of one. A tag that does not
    validate stays a plain dict, so pydantic reports it with its full path (`devices[3].tags[2].type`). Tags
    given by a classic `register` are left to each device: its `address_base` resolves them."""
    models: dict[str, type[BaseModel]] = {"modbus": ModbusTag, "opcua": OpcUaTag}
    seen: dict[tuple[Any, ...], Any] = {}
    out: list[Any] = []
    for dev in devices:
        model = models.get(str(dev.get("protocol"))) if isinstance(dev, dict) else None
        if model is None or not isinstance(dev.get("tags"), list):
            out.append(dev)
            continue
        tags: list[Any] = []
        for raw in dev["tags"]:
            if not isinstance(raw, dict) or "register" in raw:
                tags.append(raw)  # a classic register is resolved per device (`_resolve_registers` sets it)
                continue
            try:
                key = (model, json.dumps(raw, sort_keys=True))
            except (TypeError, ValueError):
                tags.append(raw)
                continue
            if key not in seen:
                try:
                    seen[key] = model.model_validate(raw)
                except ValidationError:
                    seen[key] = raw
            tags.append(seen[key])
        out.append({**dev, "tags": tags})
    return out


class CollectorConfig(Strict):
    version: Literal[1] = 1
    site: SiteConfig
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    state_dir: Path = Path("state")
    indicators: IndicatorConfig = Field(default_factory=IndicatorConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    influx: InfluxConfig | None = None
    templates: dict[str, TemplateConfig] = Field(default_factory=dict)
    devices: list[Device] = Field(default_factory=list)
    assets: list[AssetEntry] = Field(default_factory=list)
    assets_csv: Path | None = Field(default=None, description="a 设备台账 CSV read at start (docs/indicators.md)")

    @model_validator(mode="before")
    @classmethod
    def _apply_templates(cls, data: Any) -> Any:
        """Expand `template:` on devices: the template's defaults and tags, then the device's own on top.
        Then validate each distinct tag once (`_validate_repeated_tags`)."""
        if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
            return data
        if not isinstance(data.get("templates"), dict):
            return {**data, "devices": _validate_repeated_tags(data["devices"])}
        templates = data["templates"]
        devices = data["devices"]
        expanded = []
        for dev in devices:
            name = dev.get("template") if isinstance(dev, dict) else None
            tpl = templates.get(name) if name is not None else None
            if not isinstance(tpl, dict):
                expanded.append(dev)  # an unknown template name is reported by _check_references
                continue
            merged = {**tpl.get("defaults", {}), **{k: v for k, v in dev.items() if k != "tags"}}
            merged.setdefault("protocol", tpl.get("protocol"))
            tags = {t.get("name"): t for t in tpl.get("tags", []) if isinstance(t, dict)}
            for t in dev.get("tags", []) or []:
                if isinstance(t, dict):
                    tags[t.get("name")] = {**tags.get(t.get("name"), {}), **t}
            merged["tags"] = list(tags.values())
            expanded.append(merged)
        return {**data, "devices": _validate_repeated_tags(expanded)}

    @model_validator(mode="after")
    def _share_equal_tags(self) -> CollectorConfig:
        """Keep one instance of equal tags, also of those `_validate_repeated_tags` left to each device
        (classic registers, resolved by the device's `address_base`): copies of one machine's list then cost
        the memory of one (docs/BENCHMARKS.md, memory). Tags are never changed after validation."""
        seen: dict[tuple[Any, ...], Any] = {}
        for dev in self.devices:
            tags: list[Any] = dev.tags
            for i, tag in enumerate(tags):
                key = (type(tag), *(v if getattr(v, "__hash__", None) is not None else repr(v)
                                    for v in tag.__dict__.values()))
                tags[i] = seen.setdefault(key, tag)
        return self

    @model_validator(mode="after")
    def _default_pki_dirs(self) -> CollectorConfig:
        """OPC UA devices without `security.pki_dir` use `<state dir>/pki` (docs/opcua.md), where the state dir
        is the one the collector really uses: COLLECTOR_STATE_DIR (the systemd unit sets it) over `state_dir`."""
        state = effective_state_dir(self)
        for dev in self.devices:
            if isinstance(dev, OpcUaDevice) and dev.security.pki_dir is None:
                dev.security.pki_dir = state / "pki"
        return self

    @property
    def topic_root(self) -> str:
        return self.mqtt.topic_root.format(enterprise=self.site.enterprise_id, workshop=self.site.workshop)

    @property
    def evidence_topic(self) -> str:
        return self.evidence.topic.format(root=self.topic_root, enterprise=self.site.enterprise_id,
                                          workshop=self.site.workshop)


# --------------------------------------------------------------------------------------------- settings


class Settings(BaseSettings):
    """Process settings from the environment (`COLLECTOR_*`): secrets and per-host overrides."""

    model_config = SettingsConfigDict(env_prefix="COLLECTOR_", extra="ignore")

    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_url: str | None = None
    state_dir: Path | None = None
    log_level: str = "INFO"
    log_format: Literal["kv", "json"] = "kv"
    http_token: SecretStr | None = None
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"  # auto: uvloop when installed (collector/runtime.py)


def effective_state_dir(cfg: CollectorConfig, settings: Settings | None = None) -> Path:
    """Where the collector keeps its state: env COLLECTOR_STATE_DIR, else the config's `state_dir`."""
    return (settings or Settings()).state_dir or cfg.state_dir


def read_secret(env_name: str | None, file: Path | None) -> str | None:
    """A secret from an env variable or a file (first line, stripped); never from the YAML itself."""
    if env_name and os.environ.get(env_name):
        return os.environ[env_name]
    if file is not None:
        return file.read_text(encoding="utf-8").splitlines()[0].strip()
    return None


# --------------------------------------------------------------------------------------------- loading


class ConfigError(Exception):
    """A config that does not validate; `lines` holds one message per problem, each naming its path."""

    def __init__(self, source: str, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.source = source
        self.lines = lines


_UNION_TAGS = {"modbus", "opcua"}


def format_loc(loc: Iterable[int | str]) -> str:
    """('devices', 3, 'modbus', 'tags', 2, 'type') -> 'devices[3].tags[2].type'."""
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(prev, int) and part in _UNION_TAGS:
            pass  # the discriminated union's branch name is not something the user wrote
        else:
            out += ("." if out else "") + str(part)
        prev = part
    return out or "(top level)"


def format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        path = format_loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/config.md for the allowed keys)"
        elif err["type"] == "union_tag_invalid" or err["type"] == "union_tag_not_found":
            msg = "protocol must be 'modbus' or 'opcua'"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("value_error", "assertion_error") \
                and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"{path}: {msg}")
    return lines


def reference_errors(cfg: CollectorConfig) -> list[str]:
    """Checks across entries (unique ids, bindings, template names), each naming the path of the culprit."""
    lines: list[str] = []
    ids: dict[str, int] = {}
    for i, dev in enumerate(cfg.devices):
        if dev.id in ids:
            lines.append(f"devices[{i}].id: device id '{dev.id}' is already used by devices[{ids[dev.id]}]; "
                         "device ids must be unique")
        ids.setdefault(dev.id, i)
        if dev.template is not None and dev.template not in cfg.templates:
            lines.append(f"devices[{i}].template: '{dev.template}' is not defined under templates:")
    asset_ids: dict[str, int] = {}
    bound: dict[str, int] = {}
    for i, asset in enumerate(cfg.assets):
        if asset.id in asset_ids:
            lines.append(f"assets[{i}].id: asset id '{asset.id}' is already used by assets[{asset_ids[asset.id]}]")
        asset_ids.setdefault(asset.id, i)
        if asset.device is not None:
            if asset.device not in ids:
                lines.append(f"assets[{i}].device: '{asset.device}' is not a configured device id")
            elif asset.device in bound:
                lines.append(f"assets[{i}].device: device '{asset.device}' is already bound by "
                             f"assets[{bound[asset.device]}]")
            bound.setdefault(asset.device, i)
        elif asset.id in ids:
            lines.append(f"assets[{i}].id: '{asset.id}' is also a device id; bind it with device: {asset.id} "
                         "or rename it")
    return lines


def http_token(cfg: CollectorConfig, env: dict[str, str] | None = None) -> str | None:
    """The HTTP API token: env `COLLECTOR_HTTP_TOKEN`, else the first line of `http.token_file`; never YAML."""
    env_value = (os.environ if env is None else env).get("COLLECTOR_HTTP_TOKEN")
    if env_value:
        return env_value.strip()
    if cfg.http.token_file is not None:
        try:
            return read_secret(None, cfg.http.token_file) or None
        except (OSError, IndexError):
            return None
    return None


def http_errors(cfg: CollectorConfig) -> list[str]:
    """An HTTP endpoint reachable from the network must have a token (the status page shows the plant)."""
    h = cfg.http
    if not h.enabled or h.loopback:
        return []
    if h.token_file is not None and http_token(cfg, {}) is None and not os.environ.get("COLLECTOR_HTTP_TOKEN"):
        return [f"http.token_file: cannot read a token from '{h.token_file}'"]
    if http_token(cfg) is None:
        return [f"http.listen: '{h.listen}' is not a loopback address, so a token is required: set "
                "COLLECTOR_HTTP_TOKEN or http.token_file"]
    return []


EXIT_BAD_CONFIG = 2


def load_config_or_exit(path: str) -> CollectorConfig:
    """For commands: the config, or every error on stderr (each names its field and the fix) and exit 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.lines)} error(s)", file=sys.stderr)
        for line in exc.lines:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG) from None


def parse_config(data: Any, source: str = "<config>") -> CollectorConfig:
    try:
        cfg = CollectorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_errors(exc)) from None
    lines = reference_errors(cfg) + http_errors(cfg)
    if lines:
        raise ConfigError(source, lines)
    return cfg


def load_config(path: str | Path) -> CollectorConfig:
    """Read and validate a YAML config; raises ConfigError naming every bad field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read config: {exc.strerror}"]) from None
    try:
        # libyaml's loader when PyYAML has it: a config listing 20 k tags parses in a fraction of the time
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(p), [f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(str(p), ["(top level): the config must be a mapping with site:, mqtt:, devices: ..."])
    return parse_config(data, str(p))
