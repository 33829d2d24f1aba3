"""A whole workshop from a config: every enabled device served on its own endpoint.

Modbus devices that share an endpoint (several unit ids behind one gateway) share one server. Devices can be
stopped and started one by one, which is how tests and the demo take a machine off the network.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from adapters.mc.config import McDevice
from collector.config import CollectorConfig, ModbusDevice, OpcUaDevice
from simulators.machine import MachineModel


class Workshop:
    def __init__(self, cfg: CollectorConfig, device_ids: list[str] | None = None) -> None:
        from simulators.modbus import ModbusServerSim
        from simulators.opcua import OpcUaMachineSim

        self.cfg = cfg
        chosen = [d for d in cfg.devices if d.enabled and (device_ids is None or d.id in device_ids)]
        self.servers: list[Any] = []
        self.by_device: dict[str, Any] = {}
        self.shared: dict[str, list[str]] = {}
        by_endpoint: dict[str, list[ModbusDevice]] = defaultdict(list)
        for dev in chosen:
            if isinstance(dev, ModbusDevice):
                by_endpoint[dev.parsed_endpoint.url].append(dev)
            elif isinstance(dev, McDevice):
                from simulators.mc import McServerSim

                mc = McServerSim(dev)
                self.servers.append(mc)
                self.by_device[dev.id] = mc
            elif isinstance(dev, OpcUaDevice):
                sim = OpcUaMachineSim(dev)
                self.servers.append(sim)
                self.by_device[dev.id] = sim
        for devs in by_endpoint.values():
            server = ModbusServerSim(devs[0].endpoint, devs)
            self.servers.append(server)
            for dev in devs:
                self.by_device[dev.id] = server
                self.shared[dev.id] = [d.id for d in devs]
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
