"""OPC UA throughput on 1,000 nodes, poll vs subscribe, and the simulator's start-up time.

The simulator (one machine with `--nodes` Double variables, every one changing each `--tick` seconds) runs in
a child process (`collector simulate`) so that client and server each get a core. The parent then
- polls with `OpcUaAdapter.read()` (batched Read requests) back to back for `--seconds`: values/s;
- subscribes (`mode: subscribe`, publishing interval `--publish` s, queue_size 1) for `--seconds`: values/s
  delivered to the callback, and publishes/s (one callback, one MQTT message, per publish).
Start-up is measured in this process first: two machines with the demo's tag count, the first one paying for
the standard address space (the rule: speed is measured here, never asserted in tests).

    .venv/bin/python bench/opcua_poll.py [--nodes 1000] [--seconds 5] [--tick 0.1] [--publish 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.opcua.adapter import OpcUaAdapter  # noqa: E402
from collector.config import OpcUaDevice, parse_config  # noqa: E402
from collector.model import Reading  # noqa: E402

NS = "urn:bench:opcua"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(port: int, nodes: int, tick: float, mode: str = "poll", publish: float = 0.1) -> dict[str, Any]:
    tags = [{"name": f"v{i:04d}", "node": f"nsu={NS};s=Bench.V{i:04d}", "type": "double",
             "sim": {"kind": "walk", "min": 0, "max": 1000, "step": 0.05}} for i in range(nodes)]
    return {"site": {"enterprise_id": "bench"}, "devices": [{
        "id": "bench", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{port}", "namespace_uri": NS,
        "mode": mode, "interval": publish, "queue_size": 1, "timeout": 10.0,
        "simulate": {"initial": "running", "dwell": [86400, 86400], "update_interval": tick}, "tags": tags}]}


def device(cfg: dict[str, Any]) -> OpcUaDevice:
    dev = parse_config(cfg).devices[0]
    assert isinstance(dev, OpcUaDevice)
    return dev


async def startup() -> tuple[float, float]:
    """Two machines (12 tags each, like config/demo.yaml's CNCs) started one after the other."""
    from simulators.opcua import OpcUaMachineSim

    sims = [OpcUaMachineSim(device(config(free_port(), 12, 1.0))) for _ in range(2)]
    t0 = time.perf_counter()
    for sim in sims:
        await sim.start()
    total = time.perf_counter() - t0
    for sim in sims:
        await sim.stop()
    return sims[0].startup_s, total


async def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise RuntimeError(f"simulator on port {port} did not start")


async def poll(dev: OpcUaDevice, seconds: float) -> tuple[float, float]:
    adapter = OpcUaAdapter(dev)
    await adapter.connect()
    try:
        await adapter.read()  # warm-up
        reads = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            readings = await adapter.read()
            reads += 1
        elapsed = time.perf_counter() - t0
        assert all(r.quality == "good" for r in readings)
    finally:
        await adapter.close()
    return reads * len(dev.tags) / elapsed, elapsed / reads


async def subscribe(dev: OpcUaDevice, seconds: float) -> tuple[float, float]:
    adapter = OpcUaAdapter(dev)
    await adapter.connect()
    counts = {"values": 0, "calls": 0}

    def callback(readings: list[Reading]) -> None:
        counts["values"] += len(readings)
        counts["calls"] += 1

    task = asyncio.create_task(adapter.subscribe(callback))
    try:
        await asyncio.sleep(1.0)  # initial values and warm-up
        v0, c0, t0 = counts["values"], counts["calls"], time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - t0
        values, calls = counts["values"] - v0, counts["calls"] - c0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await adapter.close()
    return values / elapsed, calls / elapsed


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--tick", type=float, default=0.1, help="sim update interval: every node changes each tick")
    ap.add_argument("--publish", type=float, default=0.1, help="publishing interval in subscribe mode, seconds")
    args = ap.parse_args()

    first, total = await startup()
    print(f"start-up: 2 machines in {total:.2f} s (first {first:.2f} s incl. the standard address space)")

    port = free_port()
    cfg = config(port, args.nodes, args.tick)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        t0 = time.perf_counter()
        child = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
            [sys.executable, "-m", "collector.cli", "simulate", "-c", str(path)], cwd=ROOT)
        try:
            await wait_port(port)
            print(f"simulator with {args.nodes} nodes listening after {time.perf_counter() - t0:.2f} s "
                  f"(child process incl. imports); every node changes each {args.tick} s")
            rate, per_read = await poll(device(cfg), args.seconds)
            print(f"poll:      {rate:>9,.0f} values/s  ({per_read * 1000:.1f} ms per read of {args.nodes} nodes)")
            sub_cfg = config(port, args.nodes, args.tick, "subscribe", args.publish)
            rate, publishes = await subscribe(device(sub_cfg), args.seconds)
            offered = args.nodes / args.tick
            print(f"subscribe: {rate:>9,.0f} values/s  ({publishes:.1f} publishes/s = callbacks = MQTT messages; "
                  f"the sim offers {offered:,.0f} changes/s)")
        finally:
            child.terminate()
            child.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
