"""The shared base of every config model: strict models, finite numbers, endpoints, the simulator spec, and
`TagBase`/`DeviceBase`, which each protocol's models (adapters/<protocol>/config.py) build on.

A protocol plugin tells the core what is special about its devices only through the hooks of `DeviceBase`
(`config_warnings`, `start_problems`, `use_state_dir`, `across_devices`), so the core never asks which protocol
a device speaks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from collector.states.config import DeviceStates, tag_errors
from collector.writes.config import DeviceWrites, TagWrite, write_table_problem  # noqa: F401 (adapters take it from here)


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


SUBPATH = "@"
"""A model validator's message line `@tags[3].register: text` is reported at `<the model's path>.tags[3].register`:
a check across a device's tags can still name the tag."""


def show(value: object, limit: int = 60) -> str:
    """A value as quoted in an error message, cut at `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


# --------------------------------------------------------------------------------------------- endpoints


@dataclass(frozen=True)
class Endpoint:
    """A parsed device endpoint URL (`opc.tcp://`, `tcp://`, `rtu+tcp://`, `serial://`, ...)."""

    scheme: str
    host: str
    port: int
    path: str = ""
    params: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


@dataclass(frozen=True)
class EndpointRule:
    """Which endpoint URLs a protocol's devices accept, and how to say so in an error."""

    schemes: tuple[str, ...]
    forms: str  # e.g. "tcp://host:port or serial:///dev/ttyUSB0?baudrate=9600"
    what: str  # e.g. "a Modbus endpoint"
    ports: dict[str, int] = field(default_factory=dict)  # default port per scheme


DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
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


def parse_endpoint(url: str, rule: EndpointRule) -> Endpoint:
    """Parse an endpoint URL by a protocol's `rule`; raises ValueError naming the accepted forms."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    params = dict(parse_qsl(parts.query))
    if scheme == "serial" and "serial" in rule.schemes:
        if not parts.path:
            raise ValueError("a serial endpoint needs a device path, e.g. serial:///dev/ttyUSB0?baudrate=9600")
        _check_serial_params(url, params)
        return Endpoint(scheme, "", 0, parts.path, params)
    if scheme not in rule.schemes or not parts.hostname:
        hint = f"; did you mean {rule.schemes[0]}://{url}?" if rule.schemes and "://" not in url else ""
        raise ValueError(f"'{url}' is not {rule.what}; use {rule.forms}{hint}")
    try:
        port = parts.port or rule.ports.get(scheme) or DEFAULT_PORTS.get(scheme)
    except ValueError as exc:  # port out of range or not a number
        raise ValueError(f"'{url}': {exc}") from None
    if port is None:
        raise ValueError(f"'{url}' has no port; use {rule.forms}")
    return Endpoint(scheme, parts.hostname, port, parts.path, params)


def other_protocol(url: str, model: type) -> str:
    """`; opc.tcp:// is the endpoint of protocol: opcua` when another installed protocol takes the URL's scheme
    (each plugin's `schemes`): the slip is then the protocol, not the URL."""
    from adapters.base import registry  # at validation time: the registry has loaded every plugin by then

    scheme = urlsplit(url).scheme.lower()
    for plugin in registry:
        if scheme and scheme in plugin.schemes and plugin.device_model is not model:
            return f"; {scheme}:// is the endpoint of protocol: {plugin.name}"
    return ""


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
    # A fixed state script instead of the random walk, repeated: [[running, 30], [idle, 10], [alarm, 5]]
    script: list[tuple[MachineState, Annotated[float, Field(gt=0)]]] = Field(default_factory=list)
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


# --------------------------------------------------------------------------------------------- tags and devices


class TagBase(Strict):
    """What every protocol's tag has: its name and the core's value transform (collector/transform.py)."""

    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.\-]+$")
    unit: str | None = None
    scale: Number = 1.0
    offset: Number = 0.0
    range: tuple[Number, Number] | None = None
    description: str | None = None
    sim: SimSpec | None = None
    write: TagWrite = Field(default_factory=TagWrite, description="write-back guard rails (docs/writes.md)")

    @property
    def write_type(self) -> str | None:
        """The type name the write guard rails check a value against (collector/writes/guards.py): the tag's
        `type`; a protocol whose default type depends on the address (S7, MC) resolves it. None: the adapter
        decides (an OPC UA tag without `type:` takes the node's DataType)."""
        value = getattr(self, "type", None)
        return value if isinstance(value, str) else None


class DeviceBase(Strict):
    """What every protocol's device has. A protocol's model adds `protocol: Literal["<name>"]`, its options,
    `tags: list[<its tag model>]` and its `endpoint_rule`, and overrides the hooks it needs."""

    endpoint_rule: ClassVar[EndpointRule] = EndpointRule((), "scheme://host:port", "an endpoint URL")

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")
    name: str | None = None
    endpoint: str
    interval: Number = Field(default=1.0, ge=0.001, le=86400, description="poll interval, seconds")
    enabled: bool = True
    template: str | None = None
    asset: AssetFields = Field(default_factory=AssetFields)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    writes: DeviceWrites = Field(default_factory=DeviceWrites)
    states: DeviceStates | None = None  # machine states (docs/states.md); None: a preset from the tag names

    @model_validator(mode="after")
    def _states_tags(self) -> DeviceBase:
        """Every tag a state rule or counter names is one of this device's tags."""
        if self.states is not None:
            problems = tag_errors(self.states, {t.name for t in getattr(self, "tags", [])})
            if problems:
                raise ValueError("\n".join(SUBPATH + p for p in problems))
        return self

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str, info: ValidationInfo) -> str:
        try:
            parse_endpoint(v, cls.endpoint_rule)
        except ValueError as exc:
            raise ValueError(f"{exc}{other_protocol(v, cls)}") from None
        return v

    @property
    def parsed_endpoint(self) -> Endpoint:
        return parse_endpoint(self.endpoint, self.endpoint_rule)

    # ---- hooks for the core (each a no-op here)

    def config_warnings(self, where: str) -> list[str]:
        """Legal but most likely a slip (collector/lint.py): lines starting with `where` (`devices[3]`)."""
        return []

    def start_problems(self, where: str, seen: set[Any]) -> tuple[list[str], list[str]]:
        """(errors, warnings) about what `run` opens at start for this device (collector/preflight.py): secret
        files, folders. `seen` is shared by all devices, so a folder several use is checked once."""
        return [], []

    def use_state_dir(self, state_dir: Path) -> None:
        """Fill in defaults that live under the collector's state folder (OPC UA: the PKI folder)."""

    @classmethod
    def across_devices(cls, devices: Sequence[tuple[int, Any]]) -> list[str]:
        """Errors between this protocol's devices (index in `devices:`, device), each naming its path."""
        return []


