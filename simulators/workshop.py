"""A whole workshop from a config: every enabled device served on its own endpoint.

Each device is served by its protocol plugin's `simulator` (adapters/base.py registry); a protocol without one
is named at start, not skipped silently. Devices of one protocol that share an endpoint (several Modbus unit ids
behind one gateway) share one server when that server can `add_device`. Devices can be stopped and started one
by one, which is how tests and the demo take a machine off the network.
"""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.base import registry
from collector.config.root import CollectorConfig
from simulators.machine import MachineModel


class NoSimulator(ValueError):
    """A chosen device's protocol has no simulator."""


class Workshop:
    def __init__(self, cfg: CollectorConfig, device_ids: list[str] | None = None) -> None:
        self.cfg = cfg
        chosen = [d for d in cfg.devices if d.enabled and (device_ids is None or d.id in device_ids)]
        self.servers: list[Any] = []
        self.by_device: dict[str, Any] = {}
        self.shared: dict[str, list[str]] = {}
        groups: dict[tuple[str, str], list[str]] = {}
        for dev in chosen:
            make = registry.get(dev.protocol).simulator
            if make is None:
                raise NoSimulator(f"device '{dev.id}': protocol {dev.protocol} has no simulator")
            group = groups.setdefault((dev.protocol, dev.parsed_endpoint.url), [])
            server = self.by_device[group[0]] if group else None
            if server is not None and hasattr(server, "add_device"):
                server.add_device(dev)
            else:
                server = make(dev)
                self.servers.append(server)
                group = groups[(dev.protocol, dev.parsed_endpoint.url)] = []
            group.append(dev.id)
            self.by_device[dev.id] = server
            self.shared[dev.id] = group
        self.stopped: set[str] = set()

    async def start(self) -> None:
        await asyncio.gather(*(s.start() for s in self.servers))

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers), return_exceptions=True)

    def model(self, device_id: str) -> MachineModel:
        server = self.by_device[device_id]
        models = getattr(server, "models", None)
        return models[device_id] if models is not None else server.model

    async def stop_device(self, device_id: str) -> None:
        """Take one machine off the network: its server closes, or its unit goes silent on a shared one."""
        server = self.by_device[device_id]
        self.stopped.add(device_id)
        siblings = self.shared.get(device_id, [device_id])
        if len(siblings) > 1 and not all(s in self.stopped for s in siblings):
            server.set_silent(device_id, True)
        else:
            await server.stop()

    async def start_device(self, device_id: str) -> None:
        server = self.by_device[device_id]
        siblings = self.shared.get(device_id, [device_id])
        was_down = all(s in self.stopped for s in siblings)
        self.stopped.discard(device_id)
        if len(siblings) > 1:
            server.set_silent(device_id, False)
        if was_down:
            await server.start()
