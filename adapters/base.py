"""The adapter interface and the registry by protocol name.

The engine knows adapters only through this module: it calls `create_adapter(device)` and then `connect`,
`read` (or `subscribe`), `identify` (after each connect and daily) and `close`. An adapter reports a bad tag through the tag's quality and raises
`AdapterError` only when the device as a whole cannot be talked to; the engine turns that into backoff and a
state change.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from adapters.mc.config import McDevice
from collector.config import ModbusDevice, OpcUaDevice
from collector.model import Reading

DeviceConfig = ModbusDevice | OpcUaDevice | McDevice
ReadingsCallback = Callable[[list[Reading]], None]


class AdapterError(Exception):
    """The device cannot be reached or its session is gone; `reason` is shown in the device status."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeviceSkipped(AdapterError):
    """The device is skipped for a while (e.g. a dead unit on a shared RS-485 line): state `degraded`."""


class Adapter(ABC):
    """One device's connection. Built from the device's config; one instance per device task."""

    protocol: ClassVar[str]
    supports_subscribe: ClassVar[bool] = False

    def __init__(self, device: Any) -> None:
        self.device = device

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

    def stats(self) -> dict[str, Any]:
        """Counters for status and metrics (requests per cycle, errors, ...)."""
        return {}

    @abstractmethod
    async def close(self) -> None:
        """Close the session; never raises."""


_REGISTRY: dict[str, type[Adapter]] = {}
_MODULES = {"modbus": "adapters.modbus.adapter", "opcua": "adapters.opcua.adapter", "mc": "adapters.mc.adapter"}


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter available under its `protocol` name."""
    _REGISTRY[cls.protocol] = cls
    return cls


def adapter_class(protocol: str) -> type[Adapter]:
    if protocol not in _REGISTRY and protocol in _MODULES:
        importlib.import_module(_MODULES[protocol])
    try:
        return _REGISTRY[protocol]
    except KeyError:
        raise LookupError(f"no adapter for protocol '{protocol}'") from None


def create_adapter(device: DeviceConfig) -> Adapter:
    return adapter_class(device.protocol)(device)
