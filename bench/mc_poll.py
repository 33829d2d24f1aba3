"""MC protocol polling throughput on contiguous D registers: values/s and values/s per core of the collector.

The MC simulators (one per device, on 127.0.0.1) run in a child process so that client and server each get a
core; the parent polls every device back to back, all concurrently, for a fixed time. The tag map is
contiguous D registers of mixed types (INT, DINT, REAL, UINT): 960-word batch reads. "per core" divides the
values read by the CPU seconds the polling process spent (`time.process_time`), i.e. what one core of the
collector sustains; the target is 50,000 values/s per core.

    .venv/bin/python bench/mc_poll.py [--devices 4] [--tags 2000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.mc.adapter import McAdapter  # noqa: E402
from adapters.mc.config import McDevice  # noqa: E402
from bench.polling import free_ports, poll_back_to_back  # noqa: E402
from collector.config import parse_config  # noqa: E402

TYPES = (("INT", 1), ("DINT", 2), ("REAL", 2), ("UINT", 1))


def tag_map(n_tags: int) -> list[dict[str, Any]]:
    tags, address = [], 0
    for i in range(n_tags):
        type_, words = TYPES[i % len(TYPES)]
        tags.append({"name": f"t{i:04d}", "address": f"D{address}", "type": type_,
                     "sim": {"kind": "walk", "min": 0, "max": 1000}})
        address += words
    return tags


def build(n_devices: int, n_tags: int, ports: list[int]) -> list[McDevice]:
    devices = [{"id": f"plc-{d:03d}", "protocol": "mc", "endpoint": f"mc://127.0.0.1:{ports[d]}", "timeout": 5.0,
                "simulate": {"update_interval": 1.0}, "tags": tag_map(n_tags)} for d in range(n_devices)]
    cfg = parse_config({"site": {"enterprise_id": "bench"}, "devices": devices})
    return [d for d in cfg.devices if isinstance(d, McDevice)]


async def serve(n_devices: int, n_tags: int, ports: list[int]) -> None:
    from simulators.mc import McServerSim

    sims = [McServerSim(d) for d in build(n_devices, n_tags, ports)]
    await asyncio.gather(*(s.start() for s in sims))
    print("ready", flush=True)
    await asyncio.Event().wait()


async def poll(devices: list[McDevice], seconds: float) -> dict[str, float]:
    adapters = [McAdapter(d) for d in devices]
    w = await poll_back_to_back(adapters, seconds)
    return {"values_s": w.readings / w.wall, "per_core": w.readings / w.cpu, "cpu_share": w.cpu / w.wall,
            "reads_per_cycle": len(adapters[0].plan), "bad": w.bad}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--tags", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ports", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.devices, args.tags, [int(x) for x in args.ports.split(",")]))
        return
    ports = free_ports(args.devices)
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--devices", str(args.devices), "--tags",
                              str(args.tags), "--ports", ",".join(map(str, ports))], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        r = asyncio.run(poll(build(args.devices, args.tags, ports), args.seconds))
    finally:
        child.terminate()
        child.wait()
    print(f"MC polling: {args.devices} devices x {args.tags} contiguous D tags (INT/DINT/REAL/UINT), "
          f"{r['reads_per_cycle']} batch reads of <= 960 words per cycle, {args.seconds:g} s")
    print(f"  {r['values_s']:,.0f} values/s; {r['per_core']:,.0f} values/s per core of the collector "
          f"(it used {r['cpu_share']:.0%} of a core); target 50,000 per core: "
          f"{'met' if r['per_core'] >= 50_000 else 'NOT met'}" + (f"; {r['bad']} bad readings!" if r["bad"] else ""))


if __name__ == "__main__":
    main()
