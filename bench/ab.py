"""Source trees' collectors on the same simulators and broker, interleaved: A, B, B, A, A, B, ...

For "before and after" on a shared machine: each tree runs `collector run` from its own venv against the very
same Modbus simulators (this tree's, started once), broker and counting subscriber of bench/e2e.py, one
collector at a time, alternating, so that load from other jobs falls on both alike.

- default: the collector's CPU per reading (µs, from the OS) and its peak RSS; readings/s shows whether the
  offered rate was delivered. On a loaded machine this is noisy (±15 % run to run on 2 busy cores).
- `--callgrind`: each collector runs under valgrind's callgrind, counting the machine instructions of all its
  threads over the window, divided by the readings it read in that window (its own counters, from /metrics).
  Repeatable under load (a few %: periodic jobs that fall in the window or not), blind to what instructions
  do not show (cache misses, the kernel's side of a system call). Few devices (`--devices 3`): under
  callgrind a collector is ~50× slower; device timeouts are raised to 10 s so that slowness is no failure.

    .venv/bin/python bench/ab.py OTHER_TREE... [--map sparse] [--interval 1.0] [--rounds 4] [--window 8]
    .venv/bin/python bench/ab.py OTHER_TREE... --callgrind --devices 3 --rounds 1 --window 40

Each OTHER_TREE is a worktree with its own .venv (e.g. `git worktree add --detach /tmp/before COMMIT`, then
`make .venv/.installed-dev` in it); they are A, B, ... in the order given, and this tree comes last.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (the same simulators, configs, subscriber and measurement)

from tests.support.broker import MosquittoProcess, free_port  # noqa: E402


def readings_read(port: int) -> float:
    """The collector's own count of tag values read (all devices), from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=300).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("shopfloor_device_readings_total{", "shopfloor_device_readings{")))


def callgrind_total(out: Path) -> int:
    """The instructions of the dump `callgrind_control -d` wrote (the largest `totals:`/`summary:` line)."""
    total = 0
    for f in out.parent.glob(out.name + "*"):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total


def one_run(tree: Path, name: str, cfg: Path, work: Path, sub: e2e.Subscriber, sims: e2e.Simulators,
            broker: MosquittoProcess, warm: float, window: float, spy: Path | None = None) -> e2e.Run:
    py = str(tree / ".venv" / "bin" / "python")
    proc = e2e.Proc(name, [py, "-m", "collector.cli", "run", "-c", str(cfg), "--log-level", "WARNING"], work,
                    cwd=tree, env={"PYTHONPATH": str(tree)})
    sampler: subprocess.Popen[bytes] | None = None
    try:
        e2e.wait_data(sub, proc)
        time.sleep(warm)
        if spy is not None:  # py-spy over the window (bench/profile.py summarizes the raw file)
            sampler = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p",
                                        str(proc.popen.pid), "-d", str(round(window)), "-r", "100", "-f", "raw",
                                        "-o", str(spy)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run = e2e.measure(proc, sub, window, sims, broker)
        if sampler is not None:
            sampler.wait(timeout=window + 30)
        return run
    finally:
        proc.stop()


def one_callgrind(tree: Path, name: str, cfg: Path, work: Path, sub: e2e.Subscriber, warm: float,
                  window: float) -> tuple[int, float]:
    """(instructions, readings read) over one window of a collector under callgrind."""
    port = free_port()
    data: dict[str, Any] = yaml.safe_load(cfg.read_text())
    data["http"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    out = work / "callgrind.out"
    py = str(tree / ".venv" / "bin" / "python")
    proc = e2e.Proc(name, ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", py,
                           "-m", "collector.cli", "run", "-c", str(cfg), "--log-level", "WARNING"], work,
                    cwd=tree, env={"PYTHONPATH": str(tree)})
    pid = str(proc.popen.pid)
    try:
        e2e.wait_data(sub, proc, timeout=600)
        time.sleep(warm)
        before = readings_read(port)
        subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=True)
        time.sleep(window)
        subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True, check=True)
        after = readings_read(port)
        subprocess.run(["callgrind_control", "-d", pid], capture_output=True, check=True)
    finally:
        proc.stop(timeout=60)
    return callgrind_total(out), after - before


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("other", type=Path, nargs="+", help="the other source trees (A, B, ...), each with a .venv")
    ap.add_argument("--map", choices=("contiguous", "sparse"), default="sparse")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warm", type=float, default=2.0)
    ap.add_argument("--window", type=float, default=8.0)
    ap.add_argument("--spy", type=Path, help="a folder for a py-spy raw profile of every run")
    ap.add_argument("--callgrind", action="store_true", help="instructions per reading under valgrind")
    args = ap.parse_args()
    if args.devices < 2:
        ap.error("--devices: at least 2 (the simulators are two processes, each serving its share)")
    if args.callgrind and shutil.which("callgrind_control") is None:
        print("--callgrind needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    paths = [p.resolve() for p in args.other] + [e2e.ROOT]
    trees = {chr(ord("A") + i): p for i, p in enumerate(paths)}
    work = Path(tempfile.mkdtemp(prefix="ab-"))
    broker = MosquittoProcess(free_port())
    broker.start()
    fleet = e2e.Fleet(args.map, args.devices, 200)
    sims = e2e.Simulators(fleet, work).wait()
    sub = e2e.Subscriber(broker.port, f"{e2e.TOPIC_ROOT}/devices/+/data", "ours", work)
    runs: dict[str, list[e2e.Run]] = {key: [] for key in trees}
    per: dict[str, list[float]] = {key: [] for key in trees}  # µs or instructions per reading
    try:
        for i in range(args.rounds):
            for key in list(trees) if i % 2 == 0 else list(trees)[::-1]:
                d = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=work))
                devices = fleet.devices(args.interval)
                if args.callgrind:
                    devices = [{**dev, "timeout": 10.0} for dev in devices]
                cfg = e2e.collector_config(d / "collector.yaml", d / "state", broker.port, devices, fleet.templates())
                if args.callgrind:
                    instr, n = one_callgrind(trees[key], f"collector-{key}", cfg, d, sub, args.warm, args.window)
                    per[key].append(instr / max(n, 1))
                    e2e.log(f"{key} round {i + 1}: {n:,.0f} readings read, {instr:,} instructions = "
                            f"{per[key][-1]:,.0f} per reading")
                    continue
                spy = None
                if args.spy is not None:
                    args.spy.mkdir(parents=True, exist_ok=True)
                    spy = args.spy / f"{key}-{i + 1}.txt"
                r = one_run(trees[key], f"collector-{key}", cfg, d, sub, sims, broker, args.warm, args.window, spy)
                runs[key].append(r)
                per[key].append(r.cpu / max(r.rate, 1) * 1e6)
                e2e.log(f"{key} round {i + 1}: {r.rate:,.0f} readings/s, CPU {r.cpu:.3f} = "
                        f"{per[key][-1]:.2f} µs/reading, RSS {r.rss:.0f} MB, sims {r.sim_cpu:.2f}")
    finally:
        sub.stop()
        sims.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    unit = "instructions/reading" if args.callgrind else "µs/reading"
    print(f"{args.map} map, {args.interval * 1000:.0f} ms, {args.devices} devices x 200 tags, {args.rounds} rounds:")
    for key, tree in trees.items():
        line = (f"  {key} {tree}: {statistics.median(per[key]):,.2f} {unit} "
                f"(min {min(per[key]):,.2f}, max {max(per[key]):,.2f})")
        if runs[key]:
            rs = runs[key]
            line += (f", {statistics.median(r.rate for r in rs):,.0f} readings/s, "
                     f"CPU {statistics.median(r.cpu for r in rs):.3f} cores, "
                     f"peak RSS {statistics.median(r.rss for r in rs):.0f} MB")
        print(line)
    base = statistics.median(per["A"])
    for key in list(trees)[1:]:
        print(f"  {key}/A per reading: {statistics.median(per[key]) / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
