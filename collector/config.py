"""The YAML config (pydantic v2 models) and the process settings (pydantic-settings, env `COLLECTOR_*`).

Every model forbids unknown keys, so a typo is an error, not a silently ignored option. `load_config` turns
pydantic's errors into one line per problem that names the path the user wrote, e.g.
`devices[3].tags[2].type: ...`. Secrets never live in the YAML: only file paths or env variable names do.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import string
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
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


def _not_a_bool(v: Any) -> Any:
    """pydantic reads `interval: true` as 1 (second): for a number field a YAML boolean is a slip, not a value."""
    if isinstance(v, bool):
        raise ValueError(f"{str(v).lower()} is a yes/no value, not a number (YAML reads true, false, yes, no, on "
                         "and off as booleans)")
    return v


Number = Annotated[float, BeforeValidator(_not_a_bool)]
"""A float field: finite (every model sets allow_inf_nan=False) and never a YAML boolean."""
Integer = Annotated[int, BeforeValidator(_not_a_bool)]


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors and numbers are finite (no .inf or .nan)."""

    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


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
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"'{v}': the port must be a number from 1 to 65535")
    return v


ENDPOINT_FORMS = {"opcua": "opc.tcp://host:port[/path] (e.g. opc.tcp://192.168.1.20:4840)",
                  "modbus": "tcp://host:port, rtu+tcp://host:port or serial:///dev/ttyUSB0?baudrate=9600&parity=N"}


def parse_endpoint(url: str, protocol: str | None = None) -> Endpoint:
    """Parse an endpoint URL; raises ValueError with the accepted forms (of `protocol`'s devices when given)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    params = dict(parse_qsl(parts.query))
    forms = ENDPOINT_FORMS.get(protocol or "") or "; ".join(ENDPOINT_FORMS.values())
    if scheme == "serial" and protocol != "opcua":
        if not parts.path:
            raise ValueError("a serial endpoint needs a device path, e.g. serial:///dev/ttyUSB0?baudrate=9600")
        _check_serial_params(url, params)
        return Endpoint(scheme, "", 0, parts.path, params)
    schemes = ENDPOINT_SCHEMES.get(protocol or "") or tuple(s for v in ENDPOINT_SCHEMES.values() for s in v)
    if scheme not in schemes or not parts.hostname:
        what = {"opcua": "an OPC UA endpoint", "modbus": "a Modbus endpoint"}.get(protocol or "", "an endpoint URL")
        hint = f"; did you mean {ENDPOINT_SCHEMES[protocol][0]}://{url}?" if protocol and "://" not in url else ""
        raise ValueError(f"'{url}' is not {what}; use {forms}{hint}")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:  # port out of range or not a number
        raise ValueError(f"'{url}': {exc}") from None
    return Endpoint(scheme, parts.hostname, port, parts.path, params)


# --------------------------------------------------------------------------------------------- simulation


MachineState = Literal["running", "idle", "alarm", "setup"]
DEFAULT_STATE_WEIGHTS: dict[MachineState, Number] = {"running": 0.7, "idle": 0.2, "alarm": 0.05, "setup": 0.05}


class SimSpec(Strict):
    """How a simulator makes a tag's value move (ignored by the collector).

    kinds: `state` (the machine state: 0 idle, 1 running, 2 alarm, 3 setup, or its name for strings),
    `constant`, `walk` (random walk in [min, max] while running, `idle` otherwise), `wave` (sine over
    `period` s), `counter` (rises by `rate`/s while running), `choice` (one of `values`, changes with the
    state), `alarm` (true/1 while in alarm).
    """

    kind: Literal["state", "constant", "walk", "wave", "counter", "choice", "alarm", "running"] = "constant"
    value: Any = None
    min: Number = 0.0
    max: Number = 100.0
    idle: Number | None = None
    period: Number = 60.0
    rate: Number = 1.0
    step: Number = 0.05
    values: list[Any] = Field(default_factory=list)


class SimulateConfig(Strict):
    """Per-device simulator behaviour: the machine's state machine and faults to inject."""

    states: dict[MachineState, Number] = Field(
        default_factory=lambda: dict(DEFAULT_STATE_WEIGHTS))
    dwell: tuple[Number, Number] = (20.0, 60.0)
    initial: MachineState = "running"
    seed: Integer | None = None
    update_interval: Number = 0.5
    # Fault injection (Modbus; see docs/simulators.md)
    exception_addresses: list[int] = Field(default_factory=list)
    exception_code: Literal[2, 4] = 2
    delay: Number = 0.0
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
    original_value: Number | None = Field(default=None, ge=0)


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
    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.\-]+$")
    unit: str | None = None
    scale: Number = 1.0
    offset: Number = 0.0
    range: tuple[Number, Number] | None = None
    description: str | None = None
    sim: SimSpec | None = None


class ModbusTag(TagBase):
    """A Modbus tag. Give `table` + `address` (0-based, as on the wire) or a classic `register` (40001)."""

    type: ModbusType = "uint16"
    count: Integer | None = Field(default=None, ge=1, le=125, description="registers of a string or raw tag")
    bit: Integer | None = Field(default=None, ge=0, le=15)
    byte_order: ByteOrder | None = None
    table: ModbusTable | None = None
    address: Integer | None = Field(default=None, ge=0, le=65535)
    register_ref: int | str | None = Field(default=None, alias="register")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("byte_order", mode="before")
    @classmethod
    def _alias_byte_order(cls, v: Any) -> Any:
        return BYTE_ORDER_ALIASES.get(str(v).upper(), str(v).upper()) if v is not None else v

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
        if self.type in ("string", "raw") and self.count is None:
            raise ValueError(f"tag '{self.name}': a {self.type} tag needs count: the number of registers it spans")
        problem = self.table_problem()
        if problem:
            raise ValueError(f"tag '{self.name}': {problem}")
        return self

    def table_problem(self) -> str | None:
        """What does not fit between the tag's type, `bit` and its table (None when it fits or no table yet)."""
        if self.table is None:
            return None
        if self.table in BIT_TABLES:
            if self.type != "bool":
                return f"a {self.table} holds bits: its type must be bool"
            if self.bit is not None:
                return f"a {self.table} holds one bit per address: remove bit:"
            return None
        if self.bit is not None and self.type != "bool":
            return f"bit: picks one bit of a register for type bool; a {self.type} tag has no bit (remove it)"
        if self.type == "bool" and self.bit is None:
            return f"a bool in a {self.table} needs bit: 0..15 (which bit of the register)"
        return None


class OpcUaTag(TagBase):
    """An OPC UA tag: `node` is a node id (`ns=2;s=X`, `nsu=urn:...;s=X`, `i=2258`) or a browse path
    (`/Objects/3:Machines/3:Spindle/3:Speed`)."""

    node: str = Field(min_length=1)
    type: Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float", "double",
                  "string", "datetime"] | None = None
    deadband: Number | None = Field(default=None, ge=0)

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
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")
    name: str | None = None
    endpoint: str
    interval: Number = Field(default=1.0, ge=0.001, le=86400, description="poll interval, seconds")
    enabled: bool = True
    template: str | None = None
    asset: AssetFields = Field(default_factory=AssetFields)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str, info: ValidationInfo) -> str:
        parse_endpoint(v, cls.model_fields["protocol"].default)
        return v

    @property
    def parsed_endpoint(self) -> Endpoint:
        return parse_endpoint(self.endpoint)

class ModbusDevice(DeviceBase):
    protocol: Literal["modbus"] = "modbus"
    unit_id: Integer = Field(default=1, ge=0, le=255)
    address_base: Annotated[Literal[0, 1], BeforeValidator(_not_a_bool)] = 1
    byte_order: ByteOrder = "ABCD"
    timeout: Number = Field(default=1.0, gt=0, le=600)
    retries: Integer = Field(default=1, ge=0, le=10)
    inter_request_delay: Number = Field(default=0.0, ge=0, le=60)
    pause_after_connect: Number = Field(default=0.0, ge=0, le=60)
    max_gap: Integer = Field(default=10, ge=0, le=125)
    max_registers: Integer = Field(default=125, ge=1, le=125)
    max_bits: Integer = Field(default=2000, ge=1, le=2000)
    coalesce: bool = True
    degrade_after: Integer = Field(default=3, ge=1, le=1000)
    degrade_for: Number = Field(default=30.0, ge=0, le=86400, description="seconds; a degraded device is "
                               "probed again after this")
    tags: list[ModbusTag] = Field(min_length=1)
    # Read once per connect and once a day as identity evidence (a serial-number register), never polled
    identity: list[ModbusTag] = Field(default_factory=list)

    @field_validator("byte_order", mode="before")
    @classmethod
    def _alias_byte_order(cls, v: Any) -> Any:
        return BYTE_ORDER_ALIASES.get(str(v).upper(), str(v).upper())

    @model_validator(mode="after")
    def _resolve_registers(self) -> ModbusDevice:
        """Turn classic `register:` references into table + address with this device's address_base. Every
        problem is reported, each under its tag's path (see `SUBPATH` in `format_errors`)."""
        problems = []
        for field_, j, tag in [*(("tags", j, t) for j, t in enumerate(self.tags)),
                               *(("identity", j, t) for j, t in enumerate(self.identity))]:
            if tag.register_ref is None:
                continue
            try:
                tag.table, tag.address = parse_classic_register(tag.register_ref, self.address_base)
            except ValueError as exc:
                problems.append(f"{SUBPATH}{field_}[{j}].register: tag '{tag.name}': {exc}")
                continue
            problem = tag.table_problem()
            if problem:
                problems.append(f"{SUBPATH}{field_}[{j}]: tag '{tag.name}': register {tag.register_ref} is a "
                                f"{tag.table}: {problem}")
            elif tag.address + tag.register_count() - 1 > 65535:
                problems.append(f"{SUBPATH}{field_}[{j}].register: tag '{tag.name}': register {tag.register_ref} runs "
                                "past address 65535")
        if problems:
            raise ValueError("\n".join(problems))
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
    timeout: Number = Field(default=4.0, gt=0, le=600)
    sampling_interval: Number | None = Field(default=None, ge=0, le=86_400_000, description="ms; default: interval")
    queue_size: Integer = Field(default=10, ge=1, le=100_000)
    deadband_type: Literal["none", "absolute", "percent"] = "none"
    max_nodes_per_read: Integer = Field(default=1000, ge=1, le=100_000)
    security: OpcUaSecurity = Field(default_factory=OpcUaSecurity)
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    namespace_uri: str = "urn:shopfloor-collector:sim"
    tags: list[OpcUaTag] = Field(min_length=1)


# MC protocol devices (until the plugin registry builds this union; the import is here, not at the top, since
# adapters/mc/config.py builds on DeviceBase and TagBase above)
from adapters.mc.config import McDevice  # noqa: E402

Device = Annotated[ModbusDevice | OpcUaDevice | McDevice, Field(discriminator="protocol")]


class TemplateConfig(Strict):
    """A reusable tag list (and defaults) that devices name with `template:`."""

    protocol: Literal["modbus", "opcua", "mc"]
    description: str | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)
    tags: list[dict[str, Any]] = Field(min_length=1)


# --------------------------------------------------------------------------------------------- the rest


class SiteConfig(Strict):
    enterprise_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    enterprise_name: str | None = None
    credit_code: str | None = Field(default=None, description="统一社会信用代码 (GB 32100-2015, 18 characters, "
                                    "check character verified): shown in the report header")
    county: str | None = None
    city: str | None = None
    workshop: str = Field(default="main", max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
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
        if v is not None and (not v or len(v) > 128 or any(c in v for c in "/+#")):
            raise ValueError(f"'{v[:40]}' is not a Sparkplug id: it must be 1 to 128 characters without '/', '+' "
                             "or '#'")
        return v


TOPIC_PLACEHOLDERS = ("enterprise", "workshop")


class MqttConfig(Strict):
    url: str = "mqtt://127.0.0.1:1883"
    topic_root: str = Field(default="factory/{enterprise}/{workshop}", min_length=1, max_length=1024)
    format: Literal["json", "sparkplug"] = "json"
    sparkplug: SparkplugConfig = Field(default_factory=SparkplugConfig)
    qos: Annotated[Literal[0, 1], BeforeValidator(_not_a_bool)] = 1
    # MQTT sends strings with a 16-bit length: paho's network thread dies on longer ones, so bound them here
    client_id: str | None = Field(default=None, min_length=1, max_length=256)
    username: str | None = Field(default=None, max_length=1024)
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: Integer = Field(default=30, ge=5, le=65535, description="seconds; MQTT carries it in 16 "
                               "bits")
    max_inflight: Integer = Field(default=100, ge=1, le=65535)
    reconnect_max_delay: Integer = Field(default=10, ge=1, le=300, description="seconds; reconnects back off "
                                     "from 1 s up to this")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return url_with_scheme(v, ("mqtt", "mqtts"), "a broker URL; use mqtt://host:1883 or mqtts://host:8883")

    @field_validator("topic_root")
    @classmethod
    def _topic_root(cls, v: str) -> str:
        """A topic the collector publishes under: placeholders {enterprise} and {workshop} only, and no MQTT
        wildcard (a broker refuses a PUBLISH to `factory/#`, which looks like a dead link, not a bad config)."""
        try:
            fields = [(f, conv, spec) for _, f, spec, conv in string.Formatter().parse(v) if f is not None]
        except ValueError as exc:
            raise ValueError(f"'{v}': {exc} (write {{enterprise}} or {{workshop}}; a literal brace as {{{{ or }}}})") \
                from None
        for name, conv, spec in fields:
            if name not in TOPIC_PLACEHOLDERS or conv or spec:
                raise ValueError(f"'{v}': {{{name}}} is not a placeholder; use {{enterprise}} (site.enterprise_id) "
                                 "or {workshop} (site.workshop)")
        literal = "".join(text for text, *_ in string.Formatter().parse(v))
        bad = [c for c in ("#", "+", "\0") if c in literal]
        if bad:
            raise ValueError(f"'{v}': '{bad[0]}' is an MQTT wildcard (or not allowed) in a topic the collector "
                             "publishes to; write a plain path like factory/{enterprise}/{workshop}")
        return v

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
    stall_after: Number = Field(default=120.0, gt=0, le=7 * 86400, description="/healthz fails when a non-empty outbox has "
                               "delivered nothing for this many seconds")
    allowed_hosts: list[str] = Field(default_factory=list, description="host names (no port) a request's Host "
                                     "may carry besides the listen host, localhost, 127.0.0.1 and [::1]")
    header_timeout: Number = Field(default=10.0, gt=0, le=300, description="seconds a new connection has to "
                                  "send a complete request head")
    idle_timeout: Number = Field(default=30.0, gt=0, le=3600, description="seconds a kept-alive connection may "
                                "wait for its next request")
    max_connections: Integer = Field(default=256, ge=4, le=65536, description="open connections at most (also "
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

    max_bytes: Integer = Field(default=512 * 1024 * 1024, ge=1024, le=2**50, description="payload bytes per sink")
    max_age: Number = Field(default=7 * 86400.0, gt=0, le=3660 * 86400, description="seconds")
    fsync: bool = Field(default=False, description="fsync every commit (power-loss safe, slower)")
    commit_interval: Number = Field(default=0.05, ge=0.005, le=5)
    live_share: Number = Field(default=0.5, gt=0, le=1, description="share of the link live data gets while a "
                              "backlog drains")


class EvidenceConfig(Strict):
    """Anchoring the evidence chain (docs/indicators.md): where the signed chain heads are sent."""

    topic: str = Field(default="{root}/evidence/head", description="MQTT topic of the signed heads (retained, "
                       "QoS 1, through the outbox); {root}, {enterprise} and {workshop} are filled in")
    anchor_interval: Number = Field(default=86400.0, ge=60, le=7 * 86400,
                                    description="seconds between anchors of an unchanged "
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
    batch_rows: Integer = Field(default=500, ge=1, le=100_000, description="outbox rows (device cycles) per HTTP write")
    gzip: bool = True
    timeout: Number = Field(default=10.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return url_with_scheme(v, ("http", "https"), "an HTTP URL; use http://host:8086")


class IndicatorTargets(Strict):
    cnc_rate: Number = Field(default=0.70, ge=0, le=1)
    networking_rate: Number = Field(default=0.55, ge=0, le=1)


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

    publish_interval: Number = Field(default=60.0, ge=0.1, le=86400)
    bucket: Number = Field(default=300.0, ge=1, le=86400)
    coverage: Number = Field(default=0.80, ge=0, le=1)
    day_share: Number = Field(default=0.50, ge=0, le=1)
    stale_after: Number = Field(default=900.0, gt=0, le=30 * 86400)
    live_window: Number | None = Field(default=None, gt=0, le=7 * 86400, description="default 2 x bucket")
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
            except (TypeError, ValueError, RecursionError):
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


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def expand_templates(data: Any) -> Any:
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
        tpl = templates.get(name) if isinstance(name, str) else None
        if not isinstance(dev, dict) or not isinstance(tpl, dict):
            expanded.append(dev)  # an unknown template name is reported by reference_errors
            continue
        # Parts of the wrong type are left out here: the validation of templates: and devices: names them.
        defaults: dict[str, Any] = tpl["defaults"] if isinstance(tpl.get("defaults"), dict) else {}
        merged = {**defaults, **{k: v for k, v in dev.items() if k != "tags"}}
        merged.setdefault("protocol", tpl.get("protocol"))
        tags: dict[object, Any] = {}
        own = dev.get("tags")
        for t in [*_listed(tpl.get("tags")), *_listed(own)]:
            key = t.get("name") if isinstance(t, dict) and isinstance(t.get("name"), str) else object()
            tags[key] = {**tags.get(key, {}), **t} if isinstance(t, dict) else t
        merged["tags"] = list(tags.values()) if own is None or isinstance(own, list) else own
        expanded.append(merged)
    return {**data, "devices": _validate_repeated_tags(expanded)}


class CollectorConfig(Strict):
    version: Annotated[Literal[1], BeforeValidator(_not_a_bool)] = 1
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
        return expand_templates(data)

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
        set_default_pki_dirs(self)
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


def set_default_pki_dirs(cfg: CollectorConfig) -> None:
    """`<state dir>/pki` for every OPC UA device without `security.pki_dir`."""
    state = effective_state_dir(cfg)
    for dev in cfg.devices:
        if isinstance(dev, OpcUaDevice) and dev.security.pki_dir is None:
            dev.security.pki_dir = state / "pki"


def effective_state_dir(cfg: CollectorConfig, settings: Settings | None = None) -> Path:
    """Where the collector keeps its state: env COLLECTOR_STATE_DIR, else the config's `state_dir`."""
    if settings is None:
        try:
            settings = Settings()
        except ValidationError:  # another COLLECTOR_* variable is bad: collector.preflight names it
            return Path(os.environ["COLLECTOR_STATE_DIR"]) if os.environ.get("COLLECTOR_STATE_DIR") else cfg.state_dir
    return settings.state_dir or cfg.state_dir


def settings_errors() -> list[str]:
    """The COLLECTOR_* variables that do not validate, each named as the variable (they are not in the YAML)."""
    try:
        Settings()
    except ValidationError as exc:
        return [f"COLLECTOR_{str(err['loc'][0]).upper()} (env): {err['msg']} (got {_show(err.get('input'))})"
                for err in exc.errors()]
    return []


def read_secret(env_name: str | None, file: Path | None) -> str | None:
    """A secret from an env variable or a file (first line, stripped; None when empty); never from the YAML
    itself. `collector.preflight` checks the files before `run` starts."""
    if env_name and os.environ.get(env_name):
        return os.environ[env_name]
    if file is not None:
        return next(iter(file.read_text(encoding="utf-8").splitlines()), "").strip() or None
    return None


# --------------------------------------------------------------------------------------------- loading


class ConfigError(Exception):
    """A config that does not validate; `lines` holds one message per problem, each naming its path."""

    def __init__(self, source: str, lines: list[str], data: Any = None) -> None:
        super().__init__("\n".join(lines))
        self.source = source
        self.lines = lines
        self.data = data  # what was read, for `partial_config`


_UNION_TAGS = {"modbus", "opcua", "mc"}
_UNION_BRANCHES = {"int", "str", "float", "bool", "none", "list", "dict", "tuple", "date", "path"}


def format_loc(loc: Iterable[int | str]) -> str:
    """('devices', 3, 'modbus', 'tags', 2, 'type') -> 'devices[3].tags[2].type'."""
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(prev, int) and part in _UNION_TAGS:
            pass  # the discriminated union's branch name is not something the user wrote
        elif isinstance(prev, str) and (str(part) in _UNION_BRANCHES or str(part).startswith(("function-", "lax-"))):
            pass  # nor is the branch of a union like `int | str` (register: 40001 or "40001")
        else:
            out += ("." if out else "") + str(part)
        prev = part
    return out or "(top level)"


TYPE_SYNONYMS = {"float": "float32", "real": "float32", "double": "float64", "lreal": "float64", "float32": "float",
                 "float64": "double", "int": "int16", "short": "int16", "word": "uint16", "ushort": "uint16",
                 "dint": "int32", "long": "int32", "dword": "uint32", "udint": "uint32", "boolean": "bool",
                 "str": "string", "text": "string"}
"""What PLC and programming-language names mean among our types (Modbus float32 is OPC UA float)."""


def near_miss(given: object, options: Iterable[str]) -> str | None:
    """The option the user most likely meant: a known synonym first, then the closest spelling."""
    return _near_miss(str(given).strip(), tuple(options))


@functools.lru_cache(maxsize=1024)
def _near_miss(text: str, opts: tuple[str, ...]) -> str | None:
    """Cached: a file with 200,000 times the same slip would otherwise spend most of `check` in difflib."""
    import difflib

    synonym = TYPE_SYNONYMS.get(text.lower())
    if synonym in opts:
        return synonym
    if text.lower() in opts:
        return text.lower()
    close = difflib.get_close_matches(text, opts, n=1, cutoff=0.6)
    return close[0] if close else None


def _inner(annotation: Any, part: int | str) -> Any:
    """The type one step down `part` (a key or an index) from `annotation`, or None."""
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _inner(args[0], part)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field_info = annotation.model_fields.get(str(part))
        return field_info.annotation if field_info is not None else None
    if origin in (list, tuple) and isinstance(part, int):
        return args[0] if args else None
    if origin is dict and isinstance(part, str):
        return args[1] if len(args) == 2 else None
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    if isinstance(part, str) and len(models) > 1:  # a discriminated union: `part` names the branch
        return next((m for m in models if "protocol" in m.model_fields
                     and m.model_fields["protocol"].default == part), None)
    return _inner(models[0], part) if len(models) == 1 else None


def allowed_keys(loc: Sequence[int | str]) -> list[str]:
    """The keys the model at `loc` (a pydantic error location, minus the bad key) accepts."""
    annotation: Any = CollectorConfig
    for part in loc:
        annotation = _inner(annotation, part)
        if annotation is None:
            return []
    while not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        import typing

        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1 and typing.get_origin(annotation) is not Annotated:
            return []
        annotation = args[0]
    return [f.alias or name for name, f in annotation.model_fields.items()]


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


SUBPATH = "@"
"""A model validator's message line `@tags[3].register: text` is reported at `<the model's path>.tags[3].register`:
a check across a device's tags can still name the tag."""


def format_errors(exc: ValidationError) -> list[str]:
    lines: list[str] = []
    for err in exc.errors():
        path = format_loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if msg.startswith(SUBPATH):
            for line in msg.split("\n"):
                sub, _, text = line.removeprefix(SUBPATH).partition(": ")
                lines.append(f"{path}{'' if sub.startswith('[') else '.'}{sub}: {text}")
            continue
        if err["type"] == "extra_forbidden":
            guess = near_miss(err["loc"][-1], allowed_keys(err["loc"][:-1]))
            msg = (f"unknown key; did you mean '{guess}'?" if guess else "unknown key (check the spelling)") \
                + " See docs/config.md for the allowed keys"
        elif err["type"] == "union_tag_invalid":
            msg = "protocol must be 'modbus', 'opcua' or 'mc'"
        elif err["type"] == "union_tag_not_found":
            msg = "protocol is missing: give protocol: modbus, opcua or mc (or a template: that has one)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("value_error", "assertion_error") \
                and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {_show(err['input'])})"
            if err["type"] == "literal_error":
                guess = near_miss(err["input"], re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected"))))
                if guess is not None:
                    msg += f"; did you mean '{guess}'?"
        if lines and lines[-1].startswith(f"{path}: "):  # the branches of a union (`int | str`): one line
            lines[-1] += f"; or: {msg}"
            continue
        lines.append(f"{path}: {msg}")
    return lines


def _entries(value: Any) -> list[tuple[int, dict[str, Any]]]:
    """(index, entry) of the mappings in a list as written; anything else is left to the field validation."""
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] if isinstance(value, list) else []


def _duplicate_tag_names(tags: Any, where: str, owner: str) -> list[str]:
    lines: list[str] = []
    first: dict[str, int] = {}
    for j, tag in _entries(tags):
        name = tag.get("name")
        if not isinstance(name, str):
            continue
        if name in first:
            lines.append(f"{where}.tags[{j}].name: tag name '{name}' is already used by {where}.tags[{first[name]}] "
                         f"of {owner}; tag names must be unique in a device")
        first.setdefault(name, j)
    return lines


def reference_errors(data: Any) -> list[str]:
    """Checks across entries (unique ids and tag names, bindings, template names), each naming the path of the
    culprit. They read the data as written, so they are reported together with the field errors, not after."""
    if not isinstance(data, dict):
        return []
    lines: list[str] = []
    templates: dict[Any, Any] = data["templates"] if isinstance(data.get("templates"), dict) else {}
    ids: dict[str, int] = {}
    for i, dev in _entries(data.get("devices")):
        dev_id = dev.get("id")
        if isinstance(dev_id, str):
            if dev_id in ids:
                lines.append(f"devices[{i}].id: device id '{dev_id}' is already used by devices[{ids[dev_id]}]; "
                             "device ids must be unique")
            ids.setdefault(dev_id, i)
        template = dev.get("template")
        if isinstance(template, str) and template not in templates:
            lines.append(f"devices[{i}].template: '{template}' is not defined under templates:")
        lines += _duplicate_tag_names(dev.get("tags"), f"devices[{i}]", f"device '{dev_id}'")
    for name, tpl in templates.items():
        if isinstance(tpl, dict):
            lines += _duplicate_tag_names(tpl.get("tags"), f"templates.{name}", f"template '{name}'")
    asset_ids: dict[str, int] = {}
    bound: dict[str, int] = {}
    for i, asset in _entries(data.get("assets")):
        asset_id, device = asset.get("id"), asset.get("device")
        if isinstance(asset_id, str):
            if asset_id in asset_ids:
                lines.append(f"assets[{i}].id: asset id '{asset_id}' is already used by assets[{asset_ids[asset_id]}]")
            asset_ids.setdefault(asset_id, i)
        if isinstance(device, str):
            if device not in ids:
                lines.append(f"assets[{i}].device: '{device}' is not a configured device id")
            elif device in bound:
                lines.append(f"assets[{i}].device: device '{device}' is already bound by assets[{bound[device]}]")
            bound.setdefault(device, i)
        elif device is None and isinstance(asset_id, str) and asset_id in ids:
            lines.append(f"assets[{i}].id: '{asset_id}' is also a device id; bind it with device: {asset_id} "
                         "or rename it")
    return lines


def pki_errors(cfg: CollectorConfig) -> list[str]:
    """One PKI folder holds one client certificate, made for one ApplicationUri: two secured OPC UA devices that
    share a folder but name different URIs can never both connect (the second finds the first's certificate)."""
    lines: list[str] = []
    first: dict[Path, tuple[int, str]] = {}
    for i, dev in enumerate(cfg.devices):
        if not isinstance(dev, OpcUaDevice) or dev.security.mode == "None" or dev.security.pki_dir is None:
            continue
        folder = Path(os.path.abspath(dev.security.pki_dir))
        j, uri = first.setdefault(folder, (i, dev.security.application_uri))
        if uri != dev.security.application_uri:
            lines.append(f"devices[{i}].security.application_uri: '{dev.security.application_uri}' differs from "
                         f"'{uri}' of devices[{j}], and both use the PKI folder {dev.security.pki_dir} (one "
                         "certificate each folder): use the same application_uri or give this device its own "
                         "security.pki_dir")
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
        print_problems(exc.source, exc.lines, "error")
        raise SystemExit(EXIT_BAD_CONFIG) from None


MAX_PRINTED = 50
"""Problems printed per kind: past that it is the wrong file or one systematic slip, and the rest would hide it."""


def print_problems(source: str, lines: list[str], kind: Literal["error", "warning"]) -> None:
    """`source: N error(s)` and one indented line per problem (the first MAX_PRINTED) on stderr."""
    print(f"{source}: {len(lines)} {kind}(s)", file=sys.stderr)
    for line in lines[:MAX_PRINTED]:
        print(f"  {line}", file=sys.stderr)
    if len(lines) > MAX_PRINTED:
        print(f"  ... and {len(lines) - MAX_PRINTED} more {kind}s not shown (fix these first)", file=sys.stderr)


def parse_config(data: Any, source: str = "<config>") -> CollectorConfig:
    """Validate config data: every error at once (field errors, then the checks across entries)."""
    references = reference_errors(data)
    try:
        cfg = CollectorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_errors(exc) + references, data) from None
    lines = references + http_errors(cfg) + pki_errors(cfg)
    if lines:
        raise ConfigError(source, lines, data)
    return cfg


def partial_config(data: Any) -> CollectorConfig | None:
    """The parts of `data` that validate on their own (other sections at their defaults, devices that do not
    validate left out), so `check` can run the start checks (collector/preflight.py) on them while other parts
    still have errors, and report everything in one run. None when `data` is no mapping."""
    from pydantic import TypeAdapter

    if not isinstance(data, dict):
        return None
    values: dict[str, Any] = {}
    for name in ("mqtt", "http", "state_dir", "influx"):
        if name in data:
            try:
                annotation: Any = CollectorConfig.model_fields[name].annotation
                values[name] = TypeAdapter(annotation).validate_python(data[name])
            except ValidationError:
                pass
    devices = []
    expanded = expand_templates(data)
    for dev in expanded.get("devices") if isinstance(expanded.get("devices"), list) else []:
        try:
            devices.append(TypeAdapter(Device).validate_python(dev))
        except ValidationError:
            pass
    cfg = CollectorConfig.model_construct(**values, devices=devices)
    set_default_pki_dirs(cfg)
    return cfg


def load_config(path: str | Path) -> CollectorConfig:
    """Read and validate a YAML config; raises ConfigError naming every bad field."""
    from collector.yamlfile import MAX_CONFIG_BYTES, YamlProblems, decode_config, parse_yaml

    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read config: {exc.strerror}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(p), [f"(top level): the file is larger than {MAX_CONFIG_BYTES // 2**20} MB; a config "
                                   "that big is not one you wrote: check it is the right file"])
    try:
        data, problems = parse_yaml(decode_config(raw))
    except YamlProblems as exc:
        raise ConfigError(str(p), exc.lines) from None
    if not isinstance(data, dict):
        raise ConfigError(str(p), [*problems, "(top level): the config must be a mapping with site:, mqtt:, "
                                   "devices: ..."])
    try:
        cfg = parse_config(data, str(p))
    except ConfigError as exc:
        raise ConfigError(str(p), problems + exc.lines, data) from None
    if problems:
        raise ConfigError(str(p), problems, data)
    return cfg
