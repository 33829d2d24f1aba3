"""What the in-process polling benches (modbus_poll.py, s7_poll.py, mc_poll.py) share: free ports for their
simulators, and the measured window in which every adapter reads back to back (one loop, so the three
protocols' figures are measured alike)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from adapters.base import Adapter


@dataclass
class PollWindow:
    """One measured window: reads per adapter, readings (and bad ones) in all, wall and CPU seconds."""

    cycles: list[int]
    readings: int
    bad: int  # readings whose quality is not good: a bench that counts them wants none
    wall: float
    cpu: float  # this process's CPU (`time.process_time`): what the collector's side of the link costs


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now (all bound at once, so never the same one twice)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def poll_back_to_back(adapters: Sequence[Adapter], seconds: float) -> PollWindow:
    """Connect every adapter and read each once (warm-up: connections, first answers), then let each read back
    to back for `seconds`, all concurrently; the adapters are closed afterwards."""
    await asyncio.gather(*(a.connect() for a in adapters))
    for a in adapters:
        await a.read()
    cycles = [0] * len(adapters)
    counts = [0, 0]  # readings, bad readings
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def run(i: int, adapter: Adapter) -> None:
        while loop.time() < end:
            readings = await adapter.read()
            counts[0] += len(readings)
            counts[1] += sum(1 for r in readings if r.quality != "good")
            cycles[i] += 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(run(i, a) for i, a in enumerate(adapters)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for a in adapters:
        await a.close()
    return PollWindow(cycles, counts[0], counts[1], wall, cpu)
