"""S7 polling throughput per core: devices with a contiguous DB of mixed 4-byte tags, polled back to back.

The simulators (python-snap7's server, one per device, on 127.0.0.1) run in a child process so that client
and server each get a core; the parent polls every device as fast as it answers, all devices concurrently.
"values/s per core" is the readings decoded per second of the client process's own CPU time: what one core
of a gateway sustains, whatever the (threaded, pure-Python) simulator manages to serve.

    .venv/bin/python bench/s7_poll.py [--devices 4] [--tags 1000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.s7.adapter import S7Adapter  # noqa: E402
from adapters.s7.config import S7Device  # noqa: E402
from bench.polling import free_ports, poll_back_to_back  # noqa: E402
from collector.config import parse_config  # noqa: E402

TYPES = ("REAL", "DINT", "DWORD", "REAL")


def build(n_devices: int, n_tags: int, ports: list[int]) -> list[S7Device]:
    """`n_tags` 4-byte tags packed one after another in DB10 of each device."""
    tags = [{"name": f"t{i:04d}", "address": f"DB10.DBD{4 * i}", "type": TYPES[i % len(TYPES)],
             "sim": {"kind": "walk", "min": 0, "max": 1000}} for i in range(n_tags)]
    devices = [{"id": f"plc-{d:03d}", "protocol": "s7", "endpoint": f"s7://127.0.0.1:{ports[d]}", "timeout": 5.0,
                "simulate": {"update_interval": 1.0}, "tags": tags} for d in range(n_devices)]
    cfg = parse_config({"site": {"enterprise_id": "bench"}, "devices": devices})
    return [d for d in cfg.devices if isinstance(d, S7Device)]


async def serve(n_devices: int, n_tags: int, ports: list[int]) -> None:
    """Child process: one simulator per device until stdin closes."""
    from simulators.s7 import S7MachineSim

    sims = [S7MachineSim(d) for d in build(n_devices, n_tags, ports)]
    await asyncio.gather(*(s.start() for s in sims))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(s.stop() for s in sims))


async def poll_all(devices: list[S7Device], seconds: float) -> dict[str, Any]:
    adapters = [S7Adapter(d) for d in devices]
    w = await poll_back_to_back(adapters, seconds)
    values = sum(w.cycles) * len(devices[0].tags)
    return {"requests_per_cycle": adapters[0].stats()["requests_per_cycle"], "pdu": adapters[0].pdu,
            "cycles_s": sum(w.cycles) / w.wall, "values_s": values / w.wall,
            "values_per_cpu_s": values / max(w.cpu, 1e-9), "cpu_share": w.cpu / w.wall, "bad": w.bad}


def start_simulators(n_devices: int, n_tags: int, ports: list[int]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "--devices", str(n_devices), "--tags", str(n_tags),
                             "--ports", ",".join(map(str, ports))], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("simulators did not start")
    return proc


def bench(n_devices: int, n_tags: int, seconds: float) -> None:
    ports = free_ports(n_devices)
    proc = start_simulators(n_devices, n_tags, ports)
    try:
        r = asyncio.run(poll_all(build(n_devices, n_tags, ports), seconds))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"S7 polling: {n_devices} devices x {n_tags} contiguous 4-byte tags in DB10 over ISO-on-TCP on 127.0.0.1, "
          f"{seconds:g} s, PDU {r['pdu']}, {r['requests_per_cycle']} requests per cycle")
    print(f"cycles/s {r['cycles_s']:.0f}  values/s {r['values_s']:.0f}  client CPU {100 * r['cpu_share']:.0f} % "
          f"of a core  => values/s per core {r['values_per_cpu_s']:.0f}"
          + (f"  ({r['bad']} bad readings!)" if r["bad"] else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--tags", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ports", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.devices, args.tags, [int(x) for x in args.ports.split(",")]))
        return
    bench(args.devices, args.tags, args.seconds)


if __name__ == "__main__":
    main()
