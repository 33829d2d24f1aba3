"""`collector run` stops cleanly on SIGTERM whatever it is doing at that moment.

It once exited -11 (SIGSEGV): `Collector.stop()` cancelled the periodic refreshes, whose queries
(`period_summaries`, `shift_figures`) ran on in their worker threads, and then closed the SQLite connection they
were reading. Python 3.11's sqlite3 then reads a NULL handle. The subprocess test starts a gateway (a Modbus
machine with machine states, a simulator over real TCP, a real mosquitto) on a state store with three months of
history, so a refresh's query takes a while, refreshing every 0.1 s, and SIGTERMs it again and again at
different moments. The in-process test pins the order: `stop()` waits for a refresh's thread before it closes
what the thread reads.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.app import Collector
from collector.config import Settings, parse_config
from collector.status import StatusStore
from simulators.workshop import Workshop
from tests.support.broker import MosquittoProcess, free_port
from tests.test_watchdog import FakeNotifySocket

pytestmark = pytest.mark.integration
BUDGET = 20.0  # seconds of start/SIGTERM cycles
PARALLEL = 2  # gateways at a time (each its own workshop, state store and HTTP port): more load, more cycles
HISTORY_DAYS = 90
SEGMENT = 30.0  # s per machine-state segment in the history: ~260 k rows, the shift query scans them


def gateway_config(state_dir: Path, broker_port: int, workshop: str, modbus_port: int) -> dict[str, Any]:
    sim = {"script": [["running", 2.0], ["idle", 1.0], ["alarm", 0.5]], "update_interval": 0.05}
    return {
        "site": {"enterprise_id": "e1", "workshop": workshop, "timezone": "Asia/Shanghai"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}"},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "state_dir": str(state_dir),
        "indicators": {"publish_interval": 0.1, "bucket": 60.0, "allow_simulated": True},
        "devices": [
            {"id": "imm-01", "protocol": "modbus", "endpoint": f"tcp://127.0.0.1:{modbus_port}", "interval": 0.2,
             "simulate": sim, "states": {"ideal_cycle_time": 2.0, "counter_wrap": 65536},
             "tags": [{"name": "machine_state", "register": 40001, "type": "uint16", "sim": {"kind": "state"}},
                      {"name": "shot_count", "register": 40002, "type": "uint16",
                       "sim": {"kind": "counter", "rate": 1.0}}]},
        ],
    }


def with_history(state_dir: Path, bucket: float, now: float) -> None:
    """A store the way a gateway has it after three months: state segments and good buckets."""
    store = StatusStore(state_dir / "status.db", bucket)
    start = now - HISTORY_DAYS * 86400
    n = int((now - 3600 - start) // SEGMENT)  # history up to an hour ago: nothing of the running shift
    states = ("running", "idle", "fault")
    store.write_machine_states(("imm-01", start + i * SEGMENT, start + (i + 1) * SEGMENT, states[i % 3], None,
                                None, None) for i in range(n))
    store.write([], [], {("imm-01", store.bucket_of(start + i * bucket)): start + i * bucket + 1.0
                         for i in range(int((now - 3600 - start) // bucket))}, set())
    store.close()


async def start_and_sigterm(path: Path, notify_path: Path, delay: float) -> str:
    """One `collector run` until READY=1, `delay` s more, then SIGTERM: '' on exit 0, else the exit and log tail."""
    notify = FakeNotifySocket(str(notify_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_") and k != "WATCHDOG_PID"}
    env.update(NOTIFY_SOCKET=notify.address, PYTHONFAULTHANDLER="1")
    log = path.with_suffix(".log")
    try:
        with log.open("w") as log_file:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "collector.cli", "run", "-c", str(path),
                                                        "--log-level", "WARNING", env=env, stdout=log_file,
                                                        stderr=log_file)
            try:
                for _ in range(1500):
                    if any(m.startswith("READY=1") for m in notify.texts()) or proc.returncode is not None:
                        break
                    await asyncio.sleep(0.02)
                if not any(m.startswith("READY=1") for m in notify.texts()):
                    return f"no READY=1 (exit {proc.returncode}): {log.read_text(errors='replace')[-3000:]}"
                await asyncio.sleep(delay)
                proc.terminate()
                code = await asyncio.wait_for(proc.wait(), 30)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    finally:
        notify.close()
    return "" if code == 0 else f"exit {code} after SIGTERM: {log.read_text(errors='replace')[-4000:]}"


async def test_collector_run_exits_0_on_every_sigterm(broker: MosquittoProcess, tmp_path: Path) -> None:
    now = time.time()
    paths = []
    ports = [free_port() for _ in range(PARALLEL)]
    for n in range(PARALLEL):
        data = gateway_config(tmp_path / f"state{n}", broker.port, f"w{n}", ports[n])
        with_history(tmp_path / f"state{n}", data["indicators"]["bucket"], now)
        paths.append(tmp_path / f"gateway{n}.yaml")
        paths[n].write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    workshop = Workshop(parse_config({**data, "devices": [
        {**data["devices"][0], "id": f"imm-{n}", "endpoint": f"tcp://127.0.0.1:{port}"}
        for n, port in enumerate(ports)]}))
    await workshop.start()
    failures: list[str] = []
    cycles = 0
    try:
        deadline = time.monotonic() + BUDGET
        while time.monotonic() < deadline:
            delays = [0.05 * ((cycles + n) % 8) for n in range(PARALLEL)]  # SIGTERM at READY=1 ... 0.35 s after
            results = await asyncio.gather(*(start_and_sigterm(p, tmp_path / f"notify-{cycles}-{n}.sock", d)
                                             for n, (p, d) in enumerate(zip(paths, delays, strict=True))))
            failures += [f"cycle {cycles}, {p.name}: {why}" for p, why in zip(paths, results, strict=True) if why]
            cycles += PARALLEL
    finally:
        await workshop.stop()
    assert not failures, "\n\n".join(failures)
    assert cycles >= 6, cycles  # the budget really ran the collector several times
    for n in range(PARALLEL):  # and it collected: the machine's states reached the store between the SIGTERMs
        store = StatusStore(tmp_path / f"state{n}" / "status.db", 60.0)
        try:
            assert [r for r in store.machine_states(now - 60, time.time() + 60) if r[0] == "imm-01"]
        finally:
            store.close()


@pytest.mark.parametrize("refresh", ["period_summaries", "shift_figures"])
async def test_stop_waits_for_a_refresh_running_in_its_thread(
        refresh: str, broker: MosquittoProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refresh's thread outlives its cancelled task; `stop()` must not close its connection under it."""
    from collector.indicators import monthly
    from collector.states import service

    data = gateway_config(tmp_path / "state", broker.port, "w1", free_port())
    data["indicators"]["publish_interval"] = 60.0
    c = Collector(parse_config(data), Settings())
    started = threading.Event()
    outcome: list[object] = []

    def slow(cfg: object, *args: Any) -> None:
        store = next(a for a in args if isinstance(a, StatusStore))
        started.set()
        time.sleep(1.0)  # stop() has long been asked for by now
        try:
            outcome.append(store.first_uptime())
        except Exception as exc:  # sqlite3.ProgrammingError: "Cannot operate on a closed database."
            outcome.append(exc)
        outcome.append(time.monotonic())

    monkeypatch.setattr(monthly if refresh == "period_summaries" else service, refresh, slow)
    await c.start()
    try:
        assert await asyncio.to_thread(started.wait, 10)
    finally:
        await c.stop()
    stopped = time.monotonic()
    assert len(outcome) == 2, outcome
    assert isinstance(outcome[0], int), outcome  # the query ran on an open connection: the first uptime bucket
    assert isinstance(outcome[1], float) and outcome[1] <= stopped
