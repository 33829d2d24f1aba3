"""Profile the collector at saturation: the hot path by function, and the CPU of each of its threads.

Runs one scenario of bench/e2e.py (simulators, a private mosquitto, `collector run`, the counting subscriber),
samples the collector with py-spy (`pip install py-spy`; dev extra) and prints what its threads cost and where
the event-loop thread spends its time: self time and inclusive time by function. This is how the causes in
docs/BENCHMARKS.md ("What limits us now") were found.

    .venv/bin/python bench/profile.py [--map contiguous|sparse] [--interval 0.05] [--seconds 10] [--rate 200]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (same simulators, configs and subscriber as the end-to-end bench)

from tests.support.broker import MosquittoProcess, free_port  # noqa: E402

PY_SPY = Path(sys.executable).parent / "py-spy"


def thread_cpu(pid: int) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def summarize(raw: Path, main_only: bool, top: int) -> str:
    """py-spy's raw output (one `frame;frame;... count` line per stack) -> self and inclusive shares."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or (main_only and not stack.startswith("_run_module_as_main")):
            continue
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += int(n)
        own[frames[-1]] += int(n)
        for f in set(frames):
            incl[f] += int(n)
    if not total:
        return "no samples\n"
    out = [f"{total} samples{' of the event-loop thread' if main_only else ''}", "self:"]
    out += [f"  {n / total * 100:5.1f} %  {f}" for f, n in own.most_common(top)]
    out.append("inclusive:")
    out += [f"  {n / total * 100:5.1f} %  {f}" for f, n in incl.most_common(top * 2)
            if not re.search(r"runpy|asyncio/(runners|base_events)|collector/(cli|runtime)\.py", f)][:top]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--map", choices=("contiguous", "sparse"), default="contiguous")
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    if not PY_SPY.exists() and shutil.which("py-spy") is None:
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    spy = str(PY_SPY if PY_SPY.exists() else shutil.which("py-spy"))
    work = Path(tempfile.mkdtemp(prefix="profile-"))
    broker = MosquittoProcess(free_port())
    broker.start()
    fleet = e2e.Fleet(args.map, 100, 200)
    sims = e2e.Simulators(fleet, work).wait()
    sub = e2e.Subscriber(broker.port, f"{e2e.TOPIC_ROOT}/devices/+/data", "ours", work)
    cfg = e2e.collector_config(work / "collector.yaml", work / "state", broker.port, fleet.devices(args.interval),
                               fleet.templates())
    proc = e2e.Proc("collector", [*e2e.COLLECTOR, "run", "-c", str(cfg), "--log-level", "WARNING"], work)
    raw = work / "py-spy.txt"
    try:
        e2e.wait_data(sub, proc)
        time.sleep(2)
        pid = proc.popen.pid
        sampler = subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(round(args.seconds)), "-r",
                                    str(args.rate), "-f", "raw", "-o", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = thread_cpu(pid)
        run = e2e.measure(proc, sub, args.seconds, sims, broker)
        after = thread_cpu(pid)
        sampler.wait(timeout=args.seconds + 30)
        print(f"{args.map} map, {args.interval * 1000:.0f} ms, 100 devices x 200 tags: {run.rate:,.0f} readings/s, "
              f"collector {run.cpu:.2f} cores = {run.cpu / max(run.rate, 1) * 1e6:.2f} µs per reading, "
              f"simulators {run.sim_cpu:.2f} cores (sampling by py-spy adds a little)")
        for tid in sorted(after, key=lambda t: before.get(t, 0) - after[t]):
            used = (after[tid] - before.get(tid, 0)) / args.seconds
            if used >= 0.005:
                print(f"  thread {tid}{' (event loop)' if tid == pid else ''}: {used:.3f} cores")
        print(summarize(raw, main_only=True, top=args.top))
    finally:
        proc.stop()
        sub.stop()
        sims.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
