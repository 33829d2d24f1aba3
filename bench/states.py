"""Bench: the collector's CPU per reading with and without machine states on every demo device.

Serves config/demo.yaml from the bundled simulators (one `collector simulate` process) with every poll interval
shortened, and runs `collector run` against a private mosquitto twice per round: `states.enabled: false`, then
true with rules on every device (meter-01, which has no state tags of its own, gets `active_power > 40`). The
collector's user+sys CPU over the window is divided by the readings it took (/metrics
`shopfloor_device_readings_total`). The ratio on/off is what docs/BENCHMARKS.md's row shows (≤ 1.10 wanted).

    .venv/bin/python bench/states.py [--interval 0.02] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (its process wrapper: CPU of a child from the OS)

from tests.support.broker import MosquittoProcess, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def demo(interval: float, broker_port: int, state: Path, http_port: int, states: bool) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "config/demo.yaml").read_text(encoding="utf-8"))
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{broker_port}"
    data["http"] = {"listen": f"127.0.0.1:{http_port}"}
    data["state_dir"] = str(state)
    data["states"] = {"enabled": states}
    for dev in data["devices"]:
        dev["interval"] = interval
        if dev["id"] == "meter-01":
            dev["states"] = {"rules": {"running": "active_power > 40"}}
    return data


def readings(http_port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
    return sum(float(m[1]) for m in re.finditer(r"^shopfloor_device_readings_total\{[^}]*\} (\S+)$", body, re.M))


def one_run(work: Path, name: str, data: dict[str, Any], http_port: int, seconds: float) -> tuple[float, float]:
    """(CPU seconds, readings) of the collector over `seconds` after a warm-up."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    proc = e2e.Proc(name, [*e2e.COLLECTOR, "run", "-c", str(path), "--log-level", "WARNING"], work)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if readings(http_port) > 0:
                    break
            except OSError:
                pass
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"collector did not start: {proc.tail()}")
            time.sleep(0.2)
        time.sleep(3.0)  # warm-up: sessions open, subscriptions running
        cpu0, n0 = proc.cpu(), readings(http_port)
        time.sleep(seconds)
        cpu1, n1 = proc.cpu(), readings(http_port)
        return cpu1 - cpu0, n1 - n0
    finally:
        proc.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=0.02, help="poll interval of every device, s")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    ap.add_argument("--rounds", type=int, default=2, help="off/on pairs (alternated, so drift hits both)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-states-") as tmp:
        work = Path(tmp)
        broker = MosquittoProcess(free_port())
        broker.start()
        sim_cfg = demo(args.interval, broker.port, work / "sim-state", free_port(), True)
        (work / "sim.yaml").write_text(yaml.safe_dump(sim_cfg, allow_unicode=True), encoding="utf-8")
        sims = e2e.Proc("sim", [*e2e.COLLECTOR, "simulate", "-c", str(work / "sim.yaml")], work)
        try:
            deadline = time.monotonic() + 60
            while "simulators ready" not in sims.tail(400):
                if not sims.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"simulators did not start: {sims.tail()}")
                time.sleep(0.2)
            results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for r in range(args.rounds):
                for on in (False, True):
                    port = free_port()
                    data = demo(args.interval, broker.port, work / f"state-{r}-{int(on)}", port, on)
                    cpu, n = one_run(work, f"collector-{r}-{'on' if on else 'off'}", data, port, args.seconds)
                    results[on].append((cpu, n))
                    print(f"round {r + 1} states {'on ' if on else 'off'}: {n:8.0f} readings, {cpu:6.2f} s CPU, "
                          f"{cpu / n * 1e6 if n else float('nan'):7.1f} µs/reading", flush=True)
        finally:
            sims.stop()
            broker.stop()
    per = {on: sum(c for c, _ in v) / max(1.0, sum(n for _, n in v)) for on, v in results.items()}
    ratio = per[True] / per[False] if per[False] else float("nan")
    print(f"states off: {per[False] * 1e6:.1f} µs/reading; states on (every demo device): {per[True] * 1e6:.1f} "
          f"µs/reading; ratio {ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
