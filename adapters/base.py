"""The adapter interface, the protocol plugin, and the registry of installed protocols.

A protocol is a `ProtocolPlugin` (adapters/<protocol>/__init__.py exports one as `PLUGIN`), found through the
entry-point group `shopfloor_collector.protocols`: a package outside this repository adds a protocol by
declaring one there. The core reaches protocols only through `registry` (config union, `check --tags`,
`simulate`, CLI commands) and `create_adapter`.

The engine calls `create_adapter(device, context)` once per device task and then `connect`,
`read` (or `subscribe`), `identify` (after each connect and daily) and `close`. An adapter reports a bad tag through the tag's quality and raises
`AdapterError` only when the device as a whole cannot be talked to; the engine turns that into backoff and a
state change.
"""

from __future__ import annotations

import argparse
import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from collector.model import Reading

if TYPE_CHECKING:
    from pydantic import BaseModel

    from adapters.connection import OneConnectionClient as OneConnectionClient

DeviceConfig = Any  # a validated device model of an installed plugin (its `protocol:` says which)
ReadingsCallback = Callable[[list[Reading]], None]


class AdapterError(Exception):
    """The device cannot be reached or its session is gone; `reason` is shown in the device status."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeviceSkipped(AdapterError):
    """The device is skipped for a while (e.g. a dead unit on a shared RS-485 line): state `degraded`."""


class WriteError(Exception):
    """A write the device or the tag's type refused; `code` is machine-readable (collector/writes/reasons.py)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(slots=True)
class WriteOutcome:
    """What a write found and left: the tag's value before, and the value read back after (None: not read)."""

    old: Any
    readback: Any
    readback_quality: str | None = None


class Adapter(ABC):
    """One device's connection, built once per device task as `adapter(device, context)`; `connect()` and
    `close()` may alternate any number of times. What it learns that must outlive a connection or be shared
    with other devices (split plans, shared serial lines, timeout streaks) lives in `context`."""

    protocol: ClassVar[str]
    supports_subscribe: ClassVar[bool] = False

    def __init__(self, device: Any, context: AdapterContext | None = None) -> None:
        self.device = device
        self.context = context if context is not None else AdapterContext()

    @classmethod
    def import_libraries(cls, device: Any) -> None:
        """Import now what an adapter for `device` would import only when it connects (a library that only
        some of the protocol's devices use), so `collector check` names a missing one; nothing by default."""
        return

    @abstractmethod
    async def connect(self) -> None:
        """Open the session; raise AdapterError when the device does not answer."""

    @abstractmethod
    async def read(self) -> list[Reading]:
        """One poll of every tag, as few requests as the protocol allows; bad tags carry a bad quality."""

    async def subscribe(self, callback: ReadingsCallback) -> None:
        """Deliver readings to `callback` as the device pushes them, until the session is lost (then raise
        AdapterError). Only for adapters with `supports_subscribe`."""
        raise NotImplementedError(f"{self.protocol} adapters do not subscribe")

    @property
    def wants_subscribe(self) -> bool:
        return self.supports_subscribe and getattr(self.device, "mode", "poll") == "subscribe"

    async def identify(self) -> dict[str, Any]:
        """What identifies the device behind the endpoint (evidence, INDICATORS.md): flat `key: value` pairs,
        a value None when the device definitely has none. Called by the engine after every connect and once a
        day, beside (never inside) the poll loop. A part that failed for now (a timeout) is left out rather
        than set to None, so a passing hiccup does not look like a change of device. Never raises for a
        device that simply has no identification; an `AdapterError` only for a dead connection."""
        return {}

    supports_write: ClassVar[bool] = False

    async def write(self, tag: str, value: Any, readback: bool = True) -> WriteOutcome:
        """Write one tag's engineering value (the tag's scale and encoding applied in reverse), sharing the
        connection with polling; read the tag before (the audit's old value) and, with `readback`, after.
        Raises `WriteError` for a value the tag's type cannot hold or a device refusal, `AdapterError` when the
        device cannot be talked to. Only for adapters with `supports_write`; guard rails are the caller's."""
        raise NotImplementedError(f"{self.protocol} adapters do not write")

    def stats(self) -> dict[str, Any]:
        """Counters for status and metrics (requests per cycle, errors, ...)."""
        return {}

    @abstractmethod
    async def close(self) -> None:
        """Close the session; never raises."""


_S = TypeVar("_S")


class AdapterContext:
    """What adapters learn, owned by the running Collector (one per collector, handed to every adapter): each
    protocol keeps one state object in it, made by `state(key, factory)` on first use. A reload keeps it, so a
    device that stays keeps its learned plans; a new collector starts clean."""

    def __init__(self) -> None:
        self._states: dict[str, Any] = {}

    def state(self, key: str, factory: Callable[[], _S]) -> _S:
        if key not in self._states:
            self._states[key] = factory()
        state: _S = self._states[key]
        return state


class ProtocolPlugin:
    """One protocol, as the core sees it. `adapters/<protocol>/__init__.py` exports one as `PLUGIN`.

    `device_model`, `adapter` and `commands` may each be given as the object or by name ("module:attr"): a
    named one is imported on first use, so a command that reads no config (`collector --version`, `verify`,
    `hub ...`) loads neither the protocol's config models nor its library; the config loader imports every
    model (`Registry.load_models`) to build the device union, a device's adapter only when it is built."""

    __slots__ = ("name", "_device_model", "adapter", "describe_tag", "simulator", "_commands", "schemes")

    def __init__(self, name: str, device_model: type[BaseModel] | str, adapter: type[Adapter] | str,
                 describe_tag: Callable[[Any, Any], str], simulator: Callable[[Any], Any] | None = None,
                 commands: Callable[[argparse._SubParsersAction], None] | str | None = None,
                 schemes: tuple[str, ...] = ()) -> None:
        self.name = name                        # the `protocol:` value
        self._device_model = device_model       # its device config model (field `protocol: Literal[name]`)
        self.adapter = adapter                  # built as adapter(device, context): adapter_class()
        self.describe_tag = describe_tag        # `collector check --tags`: where the tag is read
        self.simulator = simulator              # device -> object with async start()/stop() serving it
        self._commands = commands               # adds extra CLI subcommands to `collector`'s subparsers
        self.schemes = schemes                  # endpoint URL schemes it accepts, for check's messages

    def __repr__(self) -> str:
        return f"ProtocolPlugin(name={self.name!r}, device_model={self._device_model!r}, adapter={self.adapter!r})"

    @property
    def device_model(self) -> type[BaseModel]:
        """The device config model, its module imported now if the plugin named it as "module:Class" (the
        config loader asks for it; `Registry.load_models` names a plugin whose model does not import)."""
        model = self._device_model
        if isinstance(model, str):
            from pydantic import BaseModel

            model = self._device_model = _import_class(model, BaseModel)
        return model

    @property
    def commands(self) -> Callable[[argparse._SubParsersAction], None] | None:
        """What adds the protocol's CLI subcommands (None: it has none), imported now if named as a string."""
        if isinstance(self._commands, str):
            self._commands = cast(Callable[[argparse._SubParsersAction], None], _import_attr(self._commands))
        return self._commands

    def adapter_class(self) -> type[Adapter]:
        """The adapter class, its module imported now if the plugin named it as "module:Class". So a protocol
        library (asyncua, python-snap7, pymodbus) is loaded only by a process with a device of that protocol:
        `collector check` and a gateway that reads only Modbus TCP start faster and stay smaller."""
        return self.adapter if isinstance(self.adapter, type) else _import_class(self.adapter, Adapter)


@functools.cache
def _import_attr(spec: str) -> Any:
    import importlib

    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _import_class(spec: str, base: type) -> Any:
    """The class named "module:Class", checked to be a `base`."""
    cls = _import_attr(spec)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{spec} is not a subclass of {base.__name__}")
    return cls


ENTRY_POINT_GROUP = "shopfloor_collector.protocols"
BUILTIN = {"modbus": "adapters.modbus:PLUGIN", "opcua": "adapters.opcua:PLUGIN"}
"""Used only when the distribution's own entry points are missing (a source tree that was never installed)."""

log = logging.getLogger(__name__)


class Registry:
    """The installed protocols by name, loaded once from the entry points on first use."""

    def __init__(self, group: str = ENTRY_POINT_GROUP) -> None:
        self.group = group
        self._plugins: dict[str, ProtocolPlugin] | None = None
        self.broken: dict[str, str] = {}  # entry point name -> why it did not load (named by `check`)

    def _load(self) -> dict[str, ProtocolPlugin]:
        import importlib
        from importlib.metadata import entry_points

        found: dict[str, ProtocolPlugin] = {}
        specs = {ep.name: ep.value for ep in entry_points(group=self.group)}
        for name, value in {**BUILTIN, **specs}.items():
            module, _, attr = value.partition(":")
            try:
                plugin = getattr(importlib.import_module(module), attr)
            except Exception as exc:  # a broken third-party plugin must not take the other protocols down
                self.broken[name] = f"{value}: {type(exc).__name__}: {exc}"
                log.error("protocol=%s event=plugin_not_loaded entry_point=%s error=%r", name, value, exc)
                continue
            if not isinstance(plugin, ProtocolPlugin) or plugin.name != name:
                self.broken[name] = f"{value} is not a ProtocolPlugin named '{name}'"
                log.error("protocol=%s event=plugin_not_loaded entry_point=%s error=not_a_plugin", name, value)
                continue
            found[name] = plugin
        return found

    def load_models(self) -> dict[str, type[BaseModel]]:
        """Every plugin's device model, imported now (what the config union is built from): a plugin whose model
        does not import is dropped and named in `broken`, as one whose entry point fails."""
        models: dict[str, type[BaseModel]] = {}
        for plugin in list(self):
            try:
                models[plugin.name] = plugin.device_model
            except Exception as exc:  # a broken third-party model must not take the other protocols down
                self.broken[plugin.name] = f"{plugin._device_model}: {type(exc).__name__}: {exc}"
                log.error("protocol=%s event=plugin_not_loaded device_model=%s error=%r", plugin.name,
                          plugin._device_model, exc)
                del self.plugins()[plugin.name]
        return models

    def plugins(self) -> dict[str, ProtocolPlugin]:
        if self._plugins is None:
            self._plugins = self._load()
        return self._plugins

    def names(self) -> list[str]:
        return list(self.plugins())

    def __iter__(self) -> Iterator[ProtocolPlugin]:
        return iter(self.plugins().values())

    def get(self, protocol: str) -> ProtocolPlugin:
        try:
            return self.plugins()[protocol]
        except KeyError:
            raise LookupError(f"no adapter for protocol '{protocol}'; installed: {', '.join(self.names())}") \
                from None


registry = Registry()


def create_adapter(device: DeviceConfig, context: AdapterContext | None = None) -> Adapter:
    return registry.get(device.protocol).adapter_class()(device, context)


def __getattr__(name: str) -> Any:
    """`OneConnectionClient` lives in adapters/connection.py (it needs asyncio, which a command that only builds
    the `collector` parser should not load) and still imports from here."""
    if name == "OneConnectionClient":
        from adapters.connection import OneConnectionClient

        return OneConnectionClient
    raise AttributeError(f"module 'adapters.base' has no attribute '{name}'")
