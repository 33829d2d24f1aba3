"""Reload without restart: unchanged devices keep running without a gap, changed ones restart, removed ones stop,
added ones start; an invalid config is rejected and the old one keeps running. In process (Collector.reload) and
end to end (`collector run` with SIGHUP, `collector reload`, sd_notify to a fake socket)."""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from collector.app import Collector
from collector.config import Settings, parse_config
from collector.snapshot import devices_snapshot
from simulators.workshop import Workshop
from tests.conftest import Recorder
from tests.support.broker import MosquittoProcess, free_port
from tests.test_http import INTERVAL, workshop_config
from tests.test_watchdog import FakeNotifySocket

pytestmark = pytest.mark.integration


def only(data: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    out["devices"] = [d for d in out["devices"] if d["id"] in ids]
    return out


def seqs(rec: Recorder, device: str) -> list[int]:
    return [m.json()["seq"] for m in rec.on(f"/devices/{device}/data")]


def write(path: Path, data: dict[str, Any]) -> Path:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: a big config below takes 1 s, not 4
    path.write_text(yaml.dump(data, Dumper=dumper, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


MAX_STALL = 0.3
"""How long a reload may keep the event loop from running anything. Read on the loop, the big config below held
it 1.1–1.6 s (the whole read; 2 cores, idle to two tests at once); read in a worker thread, the loop's longest
stall was 0.02–0.13 s (its share of the cores and of the GIL)."""


@pytest.fixture
def no_gc_pauses() -> Iterator[None]:
    """No cyclic garbage collection while a test times the loop. A full collection in this pytest process walks
    its whole heap (every test module, asyncua, pydantic...) and holds the GIL 0.3–0.4 s (measured), on the loop
    or in the reload's worker, wherever an allocation triggers it; that would be a stall of the test process,
    not of the reload. (`collector run` freezes its start-up heap, collector/runtime.py `tune_gc`, so its
    collections walk far less.)"""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_reload_adds_removes_restarts_and_leaves_unchanged_devices_alone(
        broker: MosquittoProcess, state_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        no_gc_pauses: None) -> None:
    caplog.set_level(logging.INFO)
    full = workshop_config(state_dir, broker.port)
    workshop = Workshop(parse_config(full))  # every machine is on the network; the config picks
    await workshop.start()
    first = only(full, ["cnc-01", "cnc-02", "imm-01", "knit-01", "comp-01"])
    cfg = parse_config(first)
    rec = Recorder(broker.host, broker.port, f"{cfg.topic_root}/#")
    collector = Collector(cfg, Settings())
    await collector.start()
    try:
        unchanged = ["cnc-01", "cnc-02", "imm-01"]
        await rec.wait_for(lambda: all(len(seqs(rec, d)) >= 3 for d in first_ids(first)), 20, "data from all five")
        tasks_before = {d: collector.engine.tasks[d] for d in unchanged}
        knit_before = collector.engine.tasks["knit-01"]
        assert collector.indicators()["figures"]["D1"]["denominator"] == 7

        second = only(full, ["cnc-01", "cnc-02", "imm-01", "knit-01", "meter-01"])  # comp-01 out, meter-01 in
        next(d for d in second["devices"] if d["id"] == "knit-01")["interval"] = INTERVAL + 0.1  # changed
        second["mqtt"]["keepalive"] = 45  # needs a restart: logged, not applied
        path = write(tmp_path / "second.yaml", second)
        stalls = await LoopStalls.start()
        reload_at = time.time()
        result = await collector.reload_file(path)
        done_at = time.time()
        stall = stalls.stop(since=reload_at)

        assert result == {"ok": True, "added": ["meter-01"], "removed": ["comp-01"], "changed": ["knit-01"],
                          "unchanged": unchanged, "restart_needed": ["mqtt"]}
        assert "event=reload_needs_restart sections=mqtt" in caplog.text
        assert "event=reloaded added=meter-01 removed=comp-01 changed=knit-01 unchanged=3" in caplog.text
        assert collector.cfg.mqtt.keepalive == 30  # the running sink settings stay
        # unchanged devices: the very same task, never stopped
        for dev in unchanged:
            assert collector.engine.tasks[dev] is tasks_before[dev]
        assert collector.engine.tasks["knit-01"] is not knit_before
        assert "comp-01" not in collector.engine.tasks and "comp-01" not in collector.status.devices
        assert [r["id"] for r in devices_snapshot(collector)] == ["cnc-01", "cnc-02", "imm-01", "knit-01", "meter-01"]

        await rec.wait_for(lambda: len(seqs(rec, "meter-01")) >= 3, 15, "the added device's data")
        await rec.wait_for(lambda: all(len([m for m in rec.on(f"/devices/{d}/data") if m.received > done_at]) >= 4
                                       for d in unchanged + ["knit-01"]), 15, "data after the reload")
        for dev in unchanged + ["knit-01"]:
            s = seqs(rec, dev)
            assert s == list(range(s[0], s[0] + len(s))), f"{dev}: sequence gap across the reload: {s}"
        polled = [d.id for d in cfg.devices if d.id in unchanged and getattr(d, "mode", "poll") == "poll"]
        assert polled
        # ... and no pause in polling either (the batch time, not the delivery time): the reload held the loop
        # no longer than MAX_STALL, and no device was held back longer than that while the loop ran on
        assert stall < MAX_STALL, f"the reload held the event loop {stall:.2f} s"
        for dev in polled:
            times = [m.json()["ts"] / 1000 for m in rec.on(f"/devices/{dev}/data")]
            around = [b - a for a, b in zip(times, times[1:], strict=False) if b > reload_at - 1]
            assert around and max(around) < 2 * INTERVAL + MAX_STALL, (
                f"{dev} paused {max(around):.2f} s across the reload (the loop stalled {stall:.2f} s at most)")
        assert seqs(rec, "meter-01")[0] == 1
        # the removed device: published offline with the reason, then silent
        st = rec.last("/devices/comp-01/status")
        assert st is not None and st.json()["state"] == "offline" and st.json()["reason"] == "removed from config"
        assert [m for m in rec.on("/devices/comp-01/data") if m.received > done_at + 0.5] == []
        # the register follows the config: comp-01 (auxiliary, in the universe) left; meter-01 is non-production
        assert collector.indicators()["figures"]["D1"]["denominator"] == 6
        assert collector.reload_counts == {"applied": 1, "rejected": 0}

        # the removed device comes back later: its sequence continues where it stopped
        last_comp = seqs(rec, "comp-01")[-1]
        back = await collector.reload(parse_config(only(full, [*unchanged, "knit-01", "meter-01", "comp-01"])))
        assert back["added"] == ["comp-01"] and back["changed"] == ["knit-01"]  # knit-01's interval reverts
        await rec.wait_for(lambda: seqs(rec, "comp-01")[-1] > last_comp + 1, 15, "comp-01 back")
        after = [s for s in seqs(rec, "comp-01") if s > last_comp]
        assert after[0] == last_comp + 1
    finally:
        await collector.stop()
        await workshop.stop()
        rec.close()


class LoopStalls:
    """Ticks every TICK s on the running loop and keeps how late each tick came (wall time, lateness): how
    long the loop could not run anything, the test's own waits included."""

    TICK = 0.02

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.late: list[tuple[float, float]] = []
        self.before = self.loop.time()
        self.task = self.loop.create_task(self._run())

    @classmethod
    async def start(cls) -> LoopStalls:
        """Ticking already: the first tick has begun before the caller goes on."""
        stalls = cls()
        await asyncio.sleep(2 * cls.TICK)
        return stalls

    async def _run(self) -> None:
        while True:
            self.before = self.loop.time()
            await asyncio.sleep(self.TICK)
            self.late.append((time.time(), self.loop.time() - self.before - self.TICK))

    def stop(self, since: float = 0.0) -> float:
        """The longest stall since `since` (wall time), the tick still pending included: code that never
        yields to the loop keeps that tick from ever ending."""
        if not self.task.done():
            self.task.cancel()
            self.late.append((time.time(), self.loop.time() - self.before - self.TICK))
        return max((late for at, late in self.late if at >= since), default=0.0)


def first_ids(data: dict[str, Any]) -> list[str]:
    return [d["id"] for d in data["devices"]]


BIG_TAGS = 20_000
"""A flat device this size (the most a gateway is benchmarked with): about 1 s to read, parse and validate on an
idle core, more on a loaded one."""


def with_big_device(data: dict[str, Any], bad_last_tag: bool = False) -> dict[str, Any]:
    """`data` plus a disabled device of BIG_TAGS tags: read, validated and compared, never polled."""
    out = copy.deepcopy(data)
    tags: list[dict[str, Any]] = [{"name": f"t{i}", "table": "holding_register", "address": i, "type": "uint16"}
                                  for i in range(BIG_TAGS)]
    if bad_last_tag:
        tags[-1]["type"] = "float33"
    out["devices"].append({"id": "big-01", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:1", "enabled": False,
                           "tags": tags})
    return out


async def test_a_large_config_is_read_off_the_loop_while_polling_goes_on(
        broker: MosquittoProcess, state_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        no_gc_pauses: None) -> None:
    """A reload reads, parses, validates and start-checks the file in a worker thread, so a big config (a flat
    device of BIG_TAGS tags) holds neither the loop nor the polling, whether it is refused or applied. Read on
    the loop, it held both for the whole read (MAX_STALL gives the figures)."""
    caplog.set_level(logging.INFO)
    data = only(workshop_config(state_dir, broker.port), ["knit-01", "comp-01"])
    cfg = parse_config(data)
    workshop = Workshop(cfg)
    await workshop.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    rec = Recorder(broker.host, broker.port, f"{cfg.topic_root}/#")
    polled = ["knit-01", "comp-01"]
    stopped = False
    try:
        await rec.wait_for(lambda: all(len(seqs(rec, d)) >= 3 for d in polled), 20, "data")
        bad = write(tmp_path / "bad.yaml", with_big_device(data, bad_last_tag=True))
        good = write(tmp_path / "big.yaml", with_big_device(data))
        stalls = await LoopStalls.start()
        first = began = time.time()
        refused = await collector.reload_file(bad)
        refused_stall, refused_in = stalls.stop(since=began), time.time() - began
        kept = collector.cfg

        stalls = await LoopStalls.start()
        began = time.time()
        applied = await collector.reload_file(good)
        applied_stall, applied_in = stalls.stop(since=began), time.time() - began
        done = time.time()
        print(f"refused in {refused_in:.2f} s (loop stalled {refused_stall:.3f} s at most), applied in "
              f"{applied_in:.2f} s (loop stalled {applied_stall:.3f} s at most)")

        # the outcome is the one of a read on the loop: the bad file refused with its path, the good one applied
        assert refused["ok"] is False and kept is cfg
        assert refused["errors"] == [f"devices[2].tags[{BIG_TAGS - 1}].type: Input should be 'bool', 'int16', "
                                     "'uint16', 'int32', 'uint32', 'int64', 'uint64', 'float32', 'float64', "
                                     "'string' or 'raw' (got 'float33'); did you mean 'float32'?"]
        assert f"event=reload_rejected source={bad} errors=1 keeping=running_config" in caplog.text
        assert applied == {"ok": True, "added": ["big-01"], "removed": [], "changed": [], "unchanged": polled,
                           "restart_needed": []}
        assert collector.cfg.devices[2].id == "big-01" and len(collector.cfg.devices[2].tags) == BIG_TAGS
        assert "big-01" not in collector.engine.tasks  # disabled
        assert collector.reload_counts == {"applied": 1, "rejected": 1}
        # ... without holding the loop: it ran on while the file was read
        assert refused_stall < MAX_STALL, f"the refused reload held the loop {refused_stall:.2f} s ({refused_in:.2f} s)"
        assert applied_stall < MAX_STALL, f"the applied reload held the loop {applied_stall:.2f} s ({applied_in:.2f} s)"
        # ... nor the polling
        await rec.wait_for(lambda: all(len([m for m in rec.on(f"/devices/{d}/data") if m.received > done]) >= 2
                                       for d in polled), 15, "data after the reloads")
        for dev in polled:
            times = [m.json()["ts"] / 1000 for m in rec.on(f"/devices/{dev}/data")]
            around = [b - a for a, b in zip(times, times[1:], strict=False) if b > first]
            assert around and max(around) < 2 * INTERVAL + MAX_STALL, (
                f"{dev} paused {max(around):.2f} s while the big configs were read")

        # reloads asked for one after the other apply in that order, though the second file is read far faster
        again = with_big_device(data)
        again["devices"][0]["interval"] = INTERVAL + 0.1  # knit-01 restarts
        again_path, small_path = write(tmp_path / "again.yaml", again), write(tmp_path / "small.yaml", data)
        big_then_small = await asyncio.gather(collector.reload_file(again_path), collector.reload_file(small_path))
        assert [(r["added"], r["removed"], r["changed"]) for r in big_then_small] == [
            ([], [], ["knit-01"]), ([], ["big-01"], ["knit-01"])]
        assert [d.id for d in collector.cfg.devices] == polled

        # a shutdown while a reload reads: stop() does not wait for the read, and what was read is not applied
        pending = asyncio.create_task(collector.reload_file(again_path))
        await asyncio.sleep(0.2)
        assert not pending.done(), "the read took under 0.2 s: make BIG_TAGS larger"
        stopped = True
        await collector.stop()
        assert await pending == {"ok": False, "errors": ["the collector is stopping: the new config was not applied"]}
        assert collector.engine.tasks == {} and [d.id for d in collector.cfg.devices] == polled
        assert collector.cfg.devices[0].interval == INTERVAL
    finally:
        if not stopped:
            await collector.stop()
        await workshop.stop()
        rec.close()


async def test_an_invalid_config_is_rejected_and_the_old_one_keeps_running(
        broker: MosquittoProcess, state_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    full = workshop_config(state_dir, broker.port)
    data = only(full, ["knit-01", "comp-01"])
    cfg = parse_config(data)
    workshop = Workshop(cfg)
    await workshop.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    rec = Recorder(broker.host, broker.port, f"{cfg.topic_root}/#")
    try:
        await rec.wait_for(lambda: len(seqs(rec, "knit-01")) >= 2, 20, "knit-01 data")
        tasks = dict(collector.engine.tasks)
        bad = copy.deepcopy(data)
        bad["devices"][0]["interval"] = -1
        bad["devices"].append({"id": "knit-01", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:1",
                               "tags": [{"name": "x", "register": 40001}]})
        result = await collector.reload_file(write(tmp_path / "bad.yaml", bad))
        assert result["ok"] is False
        assert any(line.startswith("devices[0].interval:") for line in result["errors"]), result
        assert "event=reload_rejected" in caplog.text and "devices[0].interval" in caplog.text
        # nothing changed: same config, same tasks, data still flowing
        assert collector.cfg is cfg and collector.engine.tasks == tasks
        assert collector.reload_counts == {"applied": 0, "rejected": 1}
        n = len(seqs(rec, "knit-01"))
        await rec.wait_for(lambda: len(seqs(rec, "knit-01")) >= n + 3, 10, "knit-01 still flowing")
        not_yaml = tmp_path / "broken.yaml"
        not_yaml.write_text("devices: [\n", encoding="utf-8")
        result = await collector.reload_file(not_yaml)
        assert result["ok"] is False and "not valid YAML" in result["errors"][0]

        # What `check` refuses at start, a reload refuses, with the same line: here an added OPC UA device
        # whose login has no password (the device would start and fail its login) ...
        login = copy.deepcopy(data)
        login["devices"].append({**next(d for d in full["devices"] if d["id"] == "cnc-01"), "username": "operator"})
        path = write(tmp_path / "login.yaml", login)
        code, _, err = await _cli("check", "-c", str(path))
        result = await collector.reload_file(path)
        expected = "devices[2].username: user 'operator' needs a password: set password_env or password_file"
        assert code == 2 and f"  {expected}" in err.splitlines(), err
        assert result == {"ok": False, "errors": [expected]}
        assert collector.cfg is cfg and collector.engine.tasks == tasks
        assert collector.reload_counts == {"applied": 0, "rejected": 3}
        # ... and what it accepts with a warning, a reload applies, logging the warning as `run` does at start
        login["devices"][2]["password_env"] = "RELOAD_TEST_UNSET_PASSWORD"
        code, out, err = await _cli("check", "-c", str(write(path, login)))
        assert code == 0 and "devices[2].password_env: RELOAD_TEST_UNSET_PASSWORD is not set here" in err, err
        result = await collector.reload_file(path)
        assert result["ok"] is True and result["added"] == ["cnc-01"], result
        assert "event=config_warning devices[2].password_env: RELOAD_TEST_UNSET_PASSWORD is not set here" \
            in caplog.text
    finally:
        await collector.stop()
        await workshop.stop()
        rec.close()


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "collector.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_collector_run_under_systemd_reloads_on_sighup_and_collector_reload(
        broker: MosquittoProcess, state_dir: Path, tmp_path: Path) -> None:
    full = workshop_config(state_dir, broker.port, http_port=free_port())
    workshop = Workshop(parse_config(only(full, ["knit-01", "comp-01", "meter-01"])))
    await workshop.start()
    path = write(tmp_path / "workshop.yaml", only(full, ["knit-01", "comp-01"]))
    base = f"http://{full['http']['listen']}"
    notify = FakeNotifySocket(str(tmp_path / "notify.sock"))
    log_file = (tmp_path / "run.log").open("w")
    env = {**os.environ, "NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000", "COLLECTOR_LOG_LEVEL": "INFO"}
    env.pop("WATCHDOG_PID", None)
    run = await asyncio.create_subprocess_exec(sys.executable, "-m", "collector.cli", "run", "-c", str(path),
                                               env=env, stderr=log_file)

    async def wait_msg(prefix: str, after: int = 0, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, m in enumerate(notify.texts()):
                if i >= after and m.startswith(prefix):
                    return i
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {prefix!r} after message {after}: {notify.texts()}")

    async def device_ids(session: aiohttp.ClientSession) -> list[str]:
        async with session.get(base + "/api/devices") as r:
            return [d["id"] for d in (await r.json())["devices"]]

    try:
        ready = await wait_msg("READY=1")
        assert f"STATUS=collecting from 2 devices; status page {base}/" in notify.texts()[ready]
        async with aiohttp.ClientSession() as session:
            assert await device_ids(session) == ["knit-01", "comp-01"]

            write(path, only(full, ["knit-01", "comp-01", "meter-01"]))
            run.send_signal(signal.SIGHUP)
            reloading = await wait_msg("RELOADING=1", ready + 1)
            again = await wait_msg("READY=1", reloading + 1)
            assert notify.texts()[again] == "READY=1\nSTATUS=reloaded"
            assert await device_ids(session) == ["knit-01", "comp-01", "meter-01"]

            write(path, only(full, ["knit-01", "meter-01"]))
            code, out, err = await _cli("reload", "--url", base)
            assert code == 0, err
            assert out.startswith("reloaded: added -; removed comp-01; changed -; 2 unchanged")
            assert await device_ids(session) == ["knit-01", "meter-01"]

            bad = only(full, ["knit-01", "meter-01"])
            bad["devices"][1]["endpoint"] = "http://nope"
            write(path, bad)
            code, out, err = await _cli("reload", "--url", base)
            assert code == 2
            assert "reload rejected" in err and "devices[1].endpoint:" in err
            assert await device_ids(session) == ["knit-01", "meter-01"]  # still the previous config
            async with session.get(base + "/healthz") as r:
                assert r.status == 200
        deadline = time.monotonic() + 5
        while len([m for m in notify.texts() if m == "WATCHDOG=1"]) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len([m for m in notify.texts() if m == "WATCHDOG=1"]) >= 3, "WatchdogSec=1 s: a ping every 0.5 s"
        run.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(run.wait(), 20) == 0
        assert notify.texts()[-1] == "STOPPING=1" or "STOPPING=1" in notify.texts()
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
        log_file.close()
        notify.close()
        await workshop.stop()
    log = (tmp_path / "run.log").read_text()
    assert "event=reloaded added=meter-01 removed=- changed=- unchanged=2" in log
    assert "event=reload_rejected" in log and "devices[1].endpoint" in log
    assert "event=watchdog_enabled interval=0.5" in log
