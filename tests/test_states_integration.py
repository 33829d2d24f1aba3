"""Machine states end to end: scripted simulators over real TCP (Modbus and OPC UA), a real mosquitto, the
collector as it runs on a gateway; time in state and availability are checked against the script."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from collector.app import Collector
from collector.config import CollectorConfig, Settings, parse_config
from collector.indicators import periods
from collector.states.summary import period_figures
from collector.status import StatusStore
from simulators.workshop import Workshop
from tests.conftest import Recorder
from tests.support.broker import MosquittoProcess, free_port

pytestmark = pytest.mark.integration
INTERVAL = 0.2  # the poll interval: every transition must be seen within it (plus the simulator's tick)
SIM_TICK = 0.05
SCRIPT = [("running", 3.0), ("idle", 1.5), ("alarm", 1.5), ("setup", 1.0)]
OUR_NAME = {"running": "running", "idle": "idle", "alarm": "fault", "setup": "setup"}


def scripted_config(state_dir: Path, broker_port: int) -> dict[str, Any]:
    sim = {"script": [list(s) for s in SCRIPT], "update_interval": SIM_TICK}
    return {
        "site": {"enterprise_id": "e1", "workshop": "w1", "timezone": "Asia/Shanghai"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}"},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "state_dir": str(state_dir),
        "indicators": {"publish_interval": 0.5, "bucket": 1.0, "allow_simulated": True},
        "devices": [
            {"id": "imm-01", "protocol": "modbus", "endpoint": f"tcp://127.0.0.1:{free_port()}",
             "interval": INTERVAL, "simulate": sim,
             "states": {"ideal_cycle_time": 2.0, "counter_wrap": 65536},
             "tags": [{"name": "machine_state", "register": 40001, "type": "uint16", "sim": {"kind": "state"}},
                      {"name": "shot_count", "register": 40002, "type": "uint16",
                       "sim": {"kind": "counter", "rate": 1.0}}]},
            {"id": "cnc-01", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{free_port()}",
             "interval": INTERVAL, "mode": "poll", "simulate": sim, "namespace_uri": "urn:t:cnc-01",
             "tags": [{"name": "channel_state", "node": "nsu=urn:t:cnc-01;s=Monitoring.Channel.ChannelState",
                       "type": "string", "sim": {"kind": "state", "value": "name"}},
                      {"name": "alarm", "node": "nsu=urn:t:cnc-01;s=Notification.AlarmActive", "type": "bool",
                       "sim": {"kind": "alarm"}}]},
        ],
    }


def script_seconds(t0: float, a: float, b: float) -> dict[str, float]:
    """Seconds per state the script (started at t0, repeating) spends in [a, b)."""
    out: dict[str, float] = {}
    total = sum(s for _, s in SCRIPT)
    k = int((a - t0) // total)
    start = t0 + k * total
    while start < b:
        for name, secs in SCRIPT:
            lo, hi = max(a, start), min(b, start + secs)
            if hi > lo:
                out[OUR_NAME[name]] = out.get(OUR_NAME[name], 0.0) + hi - lo
            start += secs
    return out


def transitions(t0: float, a: float, b: float) -> list[tuple[float, str]]:
    out = []
    total = sum(s for _, s in SCRIPT)
    start = t0 + int((a - t0) // total) * total
    while start < b:
        for name, secs in SCRIPT:
            if a < start < b:
                out.append((start, OUR_NAME[name]))
            start += secs
    return out


async def test_time_in_state_and_availability_follow_the_script(broker: MosquittoProcess, state_dir: Path,
                                                                recorder: Recorder) -> None:
    cfg: CollectorConfig = parse_config(scripted_config(state_dir, broker.port))
    workshop = Workshop(cfg)
    await workshop.start()
    collector = Collector(cfg, Settings())
    starting = time.time()
    await collector.start()
    began = time.time()
    try:
        await asyncio.sleep(sum(s for _, s in SCRIPT) + 1.5)
        await recorder.wait_for(lambda: recorder.on("/states/shift"), what="the shift summary")
    finally:
        stopping = time.time()
        await collector.stop()
        stopped = time.time()
        await workshop.stop()  # an OPC UA server can take seconds to stop on a loaded box: not the collector's time
    ended = time.time()
    store = StatusStore(state_dir / "status.db", 1.0)
    tol = INTERVAL + SIM_TICK + 0.15  # one poll interval, the simulator's tick, and scheduling slack
    for dev in ("imm-01", "cnc-01"):
        t0 = workshop.model(dev).script_start
        segs = [r for r in store.machine_states(began - 60, ended + 60) if r[0] == dev]
        seen = [r for r in segs if r[3] != "offline"]
        assert seen, f"{dev}: no state seen"
        a, b = seen[0][1], seen[-1][2]
        # every scripted change appears as a segment boundary no later than one poll interval after it
        starts = [(r[1], r[3]) for r in seen]
        for when, state in transitions(t0, a + tol, b - tol):
            match = [s for s, st in starts if st == state and when - 0.05 <= s <= when + tol]
            assert match, f"{dev}: the change to {state} at +{when - t0:.2f} s was not seen within {tol} s: " \
                f"{[(round(s - t0, 2), st) for s, st in starts]}"
        # time in state over the observed window, against the script
        got: dict[str, float] = {}
        for _d, s, e, state, *_ in seen:
            got[state] = got.get(state, 0.0) + e - s
        want = script_seconds(t0, a, b)
        for state in set(got) | set(want):
            assert got.get(state, 0.0) == pytest.approx(want.get(state, 0.0), abs=2 * tol), (dev, state, got, want)
        # availability of today (no calendar: the whole day is planned, the time before the start unknown)
        res = period_figures(cfg, store, periods.parse("today", ended, "Asia/Shanghai"), ended)
        f = res["devices"][dev]
        running = want.get("running", 0.0)
        observed = f["planned_operation_time_s"] - f["unknown_s"]
        # the collector's own span: at least from started to asked to stop, at most from asked to start to
        # stopped (start and stop take their time on a loaded box), within a second
        assert stopping - began - 1.0 <= observed <= stopped - starting + 1.0, (
            observed, stopping - began, stopped - starting)
        assert f["availability"]["value"] == pytest.approx(running / observed, abs=2 * tol / observed)
        assert f["alarms"]["count"] == sum(1 for _, st in transitions(t0, a, b) if st == "fault") + (
            1 if seen[0][3] == "fault" else 0)
    # parts: the counter rises 1/s while running; performance = 2 s x parts / running time, about 2
    imm = period_figures(cfg, store, periods.parse("today", ended, "Asia/Shanghai"), ended)["devices"]["imm-01"]
    assert imm["produced_quantity"] == pytest.approx(imm["actual_production_time_s"], abs=2.0)
    assert imm["performance"]["value"] == pytest.approx(2.0, abs=0.5)
    assert imm["quality"]["value"] is None and "no good counter" in imm["quality"]["reason"]
    store.close()
    # MQTT: every change was published; after the stop the retained state says offline (no good data)
    changes = [m.json()["state"] for m in recorder.on("/devices/imm-01/state")]
    assert {"running", "idle", "fault", "setup"} <= set(changes), changes
    late = Recorder(broker.host, broker.port, topic=f"{cfg.topic_root}/#")
    try:
        await late.wait_for(lambda: late.on("/states/shift") and len(late.on("/state")) == 2, what="retained")
        assert {m.json()["device"]: m.json()["state"] for m in late.on("/state")} == {
            "imm-01": "offline", "cnc-01": "offline"}
        assert all(m.retain for m in late.on("/state"))
        summary = late.last("/states/shift").json()  # type: ignore[union-attr]
        assert set(summary["devices"]) == {"imm-01", "cnc-01"} and summary["label"] == "00:00-24:00"
        assert summary["devices"]["imm-01"]["availability"]["value"] is not None
    finally:
        late.close()


CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_status_page_shows_the_timeline_and_the_shift_figures(broker: MosquittoProcess,
                                                                    state_dir: Path) -> None:
    """Headless Chromium reads the strip's states (in the script's order) and the shift's figures back."""
    pytest.importorskip("playwright.async_api", reason="playwright (pip, dev extra) is not installed")
    from playwright.async_api import async_playwright

    from collector.http import start_http

    data = scripted_config(state_dir, broker.port)
    data["indicators"]["publish_interval"] = 3600  # the shift figures change only when the test refreshes them
    cfg = parse_config(data)
    workshop = Workshop(cfg)
    await workshop.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    http = await start_http(collector)
    assert http is not None
    try:
        await asyncio.sleep(sum(s for _, s in SCRIPT) + 0.5)
        collector.states.tracker.flush()
        await collector.states.refresh()
        shift = collector.states.shift
        assert shift is not None
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = await browser.new_page()
                await page.goto(http.url)
                await page.wait_for_selector("#machine-states", state="visible", timeout=10_000)
                for dev in ("imm-01", "cnc-01"):
                    states = await page.eval_on_selector_all(f"#ms-table tr[data-machine='{dev}'] .strip span",
                                                             "es => es.map(e => e.dataset.state)")
                    seen = [s for s in states if s != "offline"]
                    # the script from where the collector came in: running, idle, fault, setup, running ...
                    order = ["running", "idle", "fault", "setup"]
                    assert len(seen) >= 4 and seen[0] in order, states
                    i = order.index(seen[0])
                    assert seen == [order[(i + k) % 4] for k in range(len(seen))], states
                    for key in ("utilization", "availability", "oee"):
                        text = await page.text_content(f"#ms-table tr[data-machine='{dev}'] [data-figure={key}]")
                        v = shift["devices"][dev][key]["value"]
                        assert text == ("—" if v is None else f"{v * 100:.1f} %"), (dev, key, text, v)
                    assert shift["devices"][dev]["utilization"]["value"] is not None
                label = await page.text_content("#ms-shift") or ""
                assert label.endswith("shift 1 00:00-24:00"), label
                legend = await page.text_content("#ms-legend") or ""
                assert "故障 fault" in legend and "运行 running" in legend
                # /metrics: one state at 1 per machine, time in state, the shift's ratios
                import urllib.request

                body = await asyncio.to_thread(lambda: urllib.request.urlopen(http.url + "metrics").read().decode())
                for dev in ("imm-01", "cnc-01"):
                    ones = [ln for ln in body.splitlines() if ln.startswith(f'shopfloor_machine_state{{device="{dev}"')
                            and ln.endswith(" 1.0")]
                    assert len(ones) == 1, ones
                    run = next(ln for ln in body.splitlines() if ln.startswith(
                        f'shopfloor_machine_state_seconds_total{{device="{dev}",state="running"}}'))
                    assert float(run.split()[-1]) > 2.0
                assert 'shopfloor_machine_shift_ratio{device="imm-01",figure="utilization"}' in body
                assert 'shopfloor_machine_parts_total{counter="parts",device="imm-01"}' in body or \
                    'shopfloor_machine_parts_total{device="imm-01",counter="parts"}' in body
            finally:
                await browser.close()
    finally:
        await http.stop()
        await collector.stop()
        await workshop.stop()
