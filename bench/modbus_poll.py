"""Modbus polling throughput: 100 devices x 100 tags, coalesced plan vs one request per tag, in one run.

The simulators (one Modbus TCP server per device, on 127.0.0.1) run in a child process so that client and
server each get a core; the parent polls every device as fast as it answers, all devices concurrently, for
a fixed time per scenario. Two tag maps: contiguous (100 tags packed one after another) and sparse (100 tags
over ~2,000 registers, holes from 0 to 40 registers). Each map is polled with our coalescing plan (`max_gap`
from the link's cost model: on TCP every hole the 125-register limit allows), with `max_gap: 10` (the one
default before the cost model) and with the one-request-per-tag baseline (`coalesce: false`), back to back in
one run, and the ratios are printed; the coalesced plan also with `max_outstanding: N` (`--max-outstanding`,
default 8; the simulators are told so and answer several outstanding requests, see simulators/modbus.py).

    .venv/bin/python bench/modbus_poll.py [--devices 100] [--tags 100] [--seconds 4] [--max-outstanding 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.modbus.adapter import ModbusAdapter  # noqa: E402
from bench.polling import free_ports, poll_back_to_back  # noqa: E402
from collector.config import ModbusDevice, parse_config  # noqa: E402

TYPES = ("uint16", "int16", "float32", "uint32", "int32", "float64")


SIZES = {"uint16": 1, "int16": 1, "float32": 2, "uint32": 2, "int32": 2, "float64": 4}
SPARSE_GAPS = (0, 1, 2, 3, 5, 8, 12, 20, 40)


def tag_map(kind: str, n_tags: int, seed: int, gaps: tuple[int, ...] = SPARSE_GAPS) -> list[dict[str, Any]]:
    """`n_tags` holding-register tags of mixed types, packed (`contiguous`) or with random holes drawn from
    `gaps` (`sparse`). bench/e2e.py builds its maps with this too."""
    rng = random.Random(seed)
    tags: list[dict[str, Any]] = []
    address = 0
    for i in range(n_tags):
        type_ = TYPES[i % len(TYPES)]
        if kind == "sparse" and i:
            address += rng.choice(gaps)
        tags.append({"name": f"t{i:03d}", "table": "holding_register", "address": address, "type": type_,
                     "sim": {"kind": "walk", "min": 0, "max": 1000}})
        address += SIZES[type_]
    return tags


def build(kind: str, n_devices: int, n_tags: int, ports: list[int], coalesce: bool,
          max_gap: int | None = None, max_outstanding: int = 1) -> list[ModbusDevice]:
    devices = [{"id": f"{kind}-{d:03d}", "protocol": "modbus", "endpoint": f"tcp://127.0.0.1:{ports[d]}",
                "timeout": 3.0, "retries": 0, "coalesce": coalesce, "simulate": {"update_interval": 1.0},
                **({"max_gap": max_gap} if max_gap is not None else {}), "max_outstanding": max_outstanding,
                "tags": tag_map(kind, n_tags, seed=d)} for d in range(n_devices)]
    cfg = parse_config({"site": {"enterprise_id": "bench"}, "devices": devices})
    return [d for d in cfg.devices if isinstance(d, ModbusDevice)]


# ------------------------------------------------------------------------------------------- the simulators


async def serve(kind: str, n_devices: int, n_tags: int, ports: list[int], pipelining: bool) -> None:
    """Child process: one simulator per device until stdin closes."""
    from simulators.modbus import ModbusServerSim

    sims = [ModbusServerSim(d.endpoint, [d], pipelining=pipelining)
            for d in build(kind, n_devices, n_tags, ports, True)]
    await asyncio.gather(*(s.start() for s in sims))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(s.stop() for s in sims))


class Simulators:
    """The child process serving one tag map."""

    def __init__(self, kind: str, n_devices: int, n_tags: int, pipelining: bool = True) -> None:
        self.ports = free_ports(n_devices)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--devices", str(n_devices), "--tags", str(n_tags),
             "--ports", ",".join(map(str, self.ports)), *(["--pipelining"] if pipelining else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"simulators did not start: {line!r}")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ------------------------------------------------------------------------------------------- polling


async def poll_all(devices: list[ModbusDevice], seconds: float) -> dict[str, float]:
    """Poll every device back to back for `seconds`, all devices concurrently."""
    adapters = [ModbusAdapter(d) for d in devices]
    w = await poll_back_to_back(adapters, seconds)
    n_tags = len(devices[0].tags)
    total_cycles = sum(w.cycles)
    requests = sum(len(a.plan) * c for a, c in zip(adapters, w.cycles, strict=True))
    return {"req_per_cycle": sum(len(a.plan) for a in adapters) / len(adapters),
            "cycles_s": total_cycles / w.wall, "tags_s": total_cycles * n_tags / w.wall,
            "requests_s": requests / w.wall, "cpu_us_per_tag": 1e6 * w.cpu / max(1, total_cycles * n_tags),
            "bad": w.bad}


async def bench(n_devices: int, n_tags: int, seconds: float, max_outstanding: int = 8) -> None:
    print(f"Modbus polling: {n_devices} devices x {n_tags} tags over Modbus TCP on 127.0.0.1, "
          f"{seconds:g} s per scenario, all devices polled concurrently, each back to back")
    print(f"{'map':<11} {'plan':<20} {'req/cycle':>9} {'cycles/s':>9} {'requests/s':>10} {'tags/s':>9} "
          f"{'CPU µs/tag':>10}")
    for kind in ("contiguous", "sparse"):
        sims = Simulators(kind, n_devices, n_tags)
        try:
            results = {}
            piped = f"coalesced, max_out {max_outstanding}"
            for coalesce, max_gap, window, label in ((True, None, 1, "coalesced"), (True, 10, 1, "max_gap 10"),
                                                     (True, None, max_outstanding, piped),
                                                     (False, None, 1, "one per tag")):
                if label == piped and max_outstanding <= 1:
                    continue
                r = await poll_all(build(kind, n_devices, n_tags, sims.ports, coalesce, max_gap, window), seconds)
                results[label] = r
                print(f"{kind:<11} {label:<20} {r['req_per_cycle']:>9.1f} {r['cycles_s']:>9.0f} "
                      f"{r['requests_s']:>10.0f} {r['tags_s']:>9.0f} {r['cpu_us_per_tag']:>10.1f}"
                      + (f"  ({r['bad']:.0f} bad readings!)" if r["bad"] else ""))
            c, b, g = results["coalesced"], results["one per tag"], results["max_gap 10"]
            print(f"{kind:<11} {'ratio':<20} {b['req_per_cycle'] / c['req_per_cycle']:>8.1f}x fewer requests, "
                  f"{c['tags_s'] / b['tags_s']:.1f}x the tags/s (against one per tag); "
                  f"{g['req_per_cycle'] / c['req_per_cycle']:.1f}x fewer requests, {c['tags_s'] / g['tags_s']:.2f}x "
                  "the tags/s (against max_gap 10)")
            if piped in results:
                m = results[piped]
                print(f"{kind:<11} {'pipelined/coalesced':<20} {m['tags_s'] / c['tags_s']:>8.2f}x the tags/s, "
                      f"{m['cpu_us_per_tag'] / c['cpu_us_per_tag']:.2f}x the CPU per tag")
        finally:
            sims.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--tags", type=int, default=100)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--max-outstanding", type=int, default=8, help="the pipelined row's max_outstanding (1: no row)")
    p.add_argument("--pipelining", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--ports", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.devices, args.tags, [int(x) for x in args.ports.split(",")],
                          args.pipelining))
        return
    asyncio.run(bench(args.devices, args.tags, args.seconds, args.max_outstanding))


if __name__ == "__main__":
    main()
