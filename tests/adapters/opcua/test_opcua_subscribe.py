"""Subscribe mode end to end: OPC UA machine-tool simulator → Collector (subscribe) → private mosquitto.

The sim's clock runs an hour behind, so a tag `ts` an hour old on MQTT is the server's SourceTimestamp, not our
receive time. The restart test kills the sim's server, brings it back on the same port and checks data flows
again within 10 s of its return with exactly one session and one subscription on the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from collector.app import Collector
from collector.config import CollectorConfig, OpcUaDevice, Settings, parse_config
from simulators.opcua import OpcUaMachineSim
from tests.conftest import Recorder
from tests.support.broker import MosquittoProcess, free_port

pytestmark = pytest.mark.integration

NS = "urn:shopfloor-collector:test-sub"
SKEW = 3600.0
INTERVAL = 0.25


def skewed_clock() -> float:
    return time.time() - SKEW


def make_config(state_dir: Path, broker_port: int, **device: Any) -> CollectorConfig:
    return parse_config({
        "site": {"enterprise_id": "t", "workshop": "w"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}", "qos": 1},
        "state_dir": str(state_dir),
        "devices": [{
            "id": "cnc", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{free_port()}", "namespace_uri": NS,
            "interval": INTERVAL, "timeout": 2.0,
            "simulate": {"initial": "running", "seed": 3, "update_interval": 0.1, "dwell": [3600, 3600]},
            "tags": [
                {"name": "speed", "node": f"nsu={NS};s=Spindle.Speed", "unit": "rpm", "type": "double",
                 "sim": {"kind": "walk", "min": 1000, "max": 3000, "step": 0.2}},
                {"name": "program", "node": f"nsu={NS};s=Program", "type": "string",
                 "sim": {"kind": "constant", "value": "O4711"}},
                {"name": "level", "node": f"nsu={NS};s=Coolant.Level", "type": "double", "deadband": 1.0,
                 "sim": {"kind": "constant", "value": 10.0}},
                {"name": "override", "node": f"nsu={NS};s=Monitoring.Spindle1.Override", "unit": "%"},
            ],
            **device,
        }],
    })


class Running:
    def __init__(self, cfg: CollectorConfig, sim: OpcUaMachineSim, collector: Collector) -> None:
        self.cfg, self.sim, self.collector = cfg, sim, collector


@pytest.fixture
async def running(broker: MosquittoProcess, state_dir: Path) -> AsyncIterator[Running]:
    cfg = make_config(state_dir, broker.port)
    device = cfg.devices[0]
    assert isinstance(device, OpcUaDevice) and device.mode == "subscribe"  # the default
    sim = OpcUaMachineSim(device, clock=skewed_clock)
    await sim.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    try:
        yield Running(cfg, sim, collector)
    finally:
        await collector.stop()
        await sim.stop()


def data(rec: Recorder) -> list[dict[str, Any]]:
    return [m.json() for m in rec.on("/devices/cnc/data")]


async def test_subscribe_delivers_values_with_source_timestamps(running: Running, recorder: Recorder) -> None:
    await recorder.wait_for(lambda: len(data(recorder)) >= 4, 15, "4 data messages")
    msgs = data(recorder)
    first = msgs[0]["tags"]
    # the first publish carries every monitored item's initial value, in one message
    assert set(first) == {"speed", "program", "level", "override"}
    assert first["program"]["value"] == "O4711" and first["program"]["quality"] == "good"
    assert first["level"]["value"] == 10.0
    assert first["override"]["value"] == 100.0 and first["override"]["unit"] == "%"
    assert 1000 <= first["speed"]["value"] <= 3000 and first["speed"]["unit"] == "rpm"
    now_ms = time.time() * 1000
    for msg in msgs:
        for name, tag in msg["tags"].items():
            # the server's SourceTimestamp (the sim's clock, an hour behind), not our receive time
            assert now_ms - (SKEW + 60) * 1000 <= tag["ts"] <= now_ms - (SKEW - 60) * 1000, (name, tag)
    # later publishes carry what changed (the walking speed), one message per publish
    assert any(set(m["tags"]) == {"speed"} for m in msgs[1:])
    adapter = running.collector.engine.tasks["cnc"].adapter
    assert adapter is not None
    stats = adapter.stats()
    assert stats["mode"] == "subscribe" and stats["subscriptions"] == 1 and stats["reads"] == 0
    st = recorder.last("/devices/cnc/status")
    assert st is not None and st.json()["state"] == "online"


async def test_static_machine_sends_heartbeats_and_stays_online(broker: MosquittoProcess, state_dir: Path,
                                                                recorder: Recorder) -> None:
    cfg = make_config(state_dir, broker.port)
    device = cfg.devices[0]
    assert isinstance(device, OpcUaDevice)
    device.tags = [t for t in device.tags if t.name != "speed"]  # nothing changes any more
    sim = OpcUaMachineSim(device, clock=skewed_clock)
    await sim.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    try:
        await recorder.wait_for(lambda: len(data(recorder)) >= 6, 15, "heartbeat messages")
        msgs = data(recorder)
        # keep-alives re-deliver the last values: every tag, unchanged source timestamps
        assert all(set(m["tags"]) == {"program", "level", "override"} for m in msgs)
        assert len({m["tags"]["program"]["ts"] for m in msgs}) == 1
        adapter = collector.engine.tasks["cnc"].adapter
        assert adapter is not None and adapter.stats()["keepalives"] >= 4
        st = recorder.last("/devices/cnc/status")
        assert st is not None and st.json()["state"] == "online"
    finally:
        await collector.stop()
        await sim.stop()


async def test_deadband_suppresses_changes_below_the_band(running: Running, recorder: Recorder) -> None:
    await recorder.wait_for(lambda: any("level" in m["tags"] for m in data(recorder)), 15, "level reported")

    def levels() -> list[float]:
        return [m["tags"]["level"]["value"] for m in data(recorder) if "level" in m["tags"]]

    model = running.sim.model
    model.values["level"] = 10.4  # 0.4 from the reported 10.0: inside the 1.0 band
    await running.sim.update_now()
    await asyncio.sleep(6 * INTERVAL)
    model.values["level"] = 12.0  # 2.0 from the last value reported (10.0): over the band
    await running.sim.update_now()
    await recorder.wait_for(lambda: 12.0 in levels(), 10, "level 12.0 reported")
    assert 10.4 not in levels()
    assert set(levels()) == {10.0, 12.0}


async def test_restart_resubscribes_with_one_session(running: Running, recorder: Recorder) -> None:
    sim = running.sim
    await recorder.wait_for(lambda: len(data(recorder)) >= 2, 15, "data before the restart")
    assert (sim.session_count(), sim.subscription_count()) == (1, 1)
    before = running.collector.engine.tasks["cnc"].adapter

    await sim.stop()  # the server is gone: sessions and subscriptions with it
    await recorder.wait_for(lambda: (m := recorder.last("/devices/cnc/status")) and m.json()["state"] == "offline",
                            10, "cnc offline")
    await asyncio.sleep(1.5)  # the collector retries while the server is down
    count = len(data(recorder))
    await sim.start()  # a new server process on the same port
    back = time.monotonic()
    await recorder.wait_for(lambda: len(data(recorder)) > count + 2, 10, "data again after the restart")
    assert time.monotonic() - back < 10
    await recorder.wait_for(lambda: (m := recorder.last("/devices/cnc/status")) and m.json()["state"] == "online",
                            5, "cnc online again")
    await asyncio.sleep(3 * INTERVAL)
    # exactly one session and one subscription: nothing leaked from retries while the server was down
    assert (sim.session_count(), sim.subscription_count()) == (1, 1)
    new = data(recorder)[count]["tags"]
    assert set(new) == {"speed", "program", "level", "override"}  # re-created: initial values of every item
    assert new["program"]["value"] == "O4711"
    adapter = running.collector.engine.tasks["cnc"].adapter
    # one adapter per device, connected again: a fresh subscription for each of its two sessions, no more
    assert adapter is before and adapter is not None
    assert (adapter.stats()["connects"], adapter.stats()["subscriptions"]) == (2, 2)


async def test_a_server_restart_logs_one_warning_per_state_change_and_no_library_traceback(
        running: Running, recorder: Recorder) -> None:
    """The documented `journalctl -p warning` must show the device going offline and back, each once with
    its reason, and none of asyncua's tracebacks of the failed reconnects (those are DEBUG now)."""
    import io
    import logging

    from collector.logs import setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    setup_logging("INFO", "kv", out)
    try:
        sim = running.sim
        await recorder.wait_for(lambda: len(data(recorder)) >= 2, 15, "data before the restart")
        await sim.stop()
        await recorder.wait_for(lambda: (m := recorder.last("/devices/cnc/status")) and
                                m.json()["state"] == "offline", 10, "cnc offline")
        await asyncio.sleep(2.0)  # failed reconnects while the server is down
        await sim.start()
        await recorder.wait_for(lambda: (m := recorder.last("/devices/cnc/status")) and
                                m.json()["state"] == "online", 15, "cnc online again")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = out.getvalue().splitlines()
    loud = [line for line in lines if "level=WARNING" in line or "level=ERROR" in line]
    states = [line for line in loud if "event=state" in line]
    assert len(states) == 2 and "state=offline from=online reason=" in states[0], loud
    assert "state=online from=offline" in states[1]
    assert not [line for line in lines if "level=ERROR" in line or 'exc="Traceback' in line], loud
    assert not [line for line in loud if "logger=asyncua" in line], loud  # no disconnect of a closed socket


async def test_a_server_that_revises_the_keepalive_count_still_gets_one_heartbeat_per_interval(
        broker: MosquittoProcess, state_dir: Path, recorder: Recorder) -> None:
    """docs/opcua.md promises one message per `interval` from a static machine. This server revises the
    requested MaxKeepAliveCount 1 to 8, so its keep-alives come every 2 s; the heartbeat must not follow them."""
    cfg = make_config(state_dir, broker.port)
    device = cfg.devices[0]
    assert isinstance(device, OpcUaDevice)
    device.tags = [t for t in device.tags if t.name != "speed"]  # nothing changes
    sim = OpcUaMachineSim(device, clock=skewed_clock, min_keepalive_count=8)
    await sim.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    try:
        await recorder.wait_for(lambda: len(data(recorder)) >= 1, 15, "the first data message")
        start = len(recorder.on("/devices/cnc/data"))
        await asyncio.sleep(12 * INTERVAL)
        times = [m["ts"] / 1000 for m in data(recorder)[start:]]  # when the batch was made, not delivered
        adapter = collector.engine.tasks["cnc"].adapter
        assert adapter is not None and adapter.keepalive_s == pytest.approx(8 * INTERVAL)  # the revised count
        assert 9 <= len(times) <= 13, times  # one per interval, not one per 2 s keep-alive
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert min(gaps) > 0.4 * INTERVAL and max(gaps) < 2.2 * INTERVAL, gaps  # no doubles, no holes
        assert all(set(m["tags"]) == {"program", "level", "override"} for m in data(recorder))
    finally:
        await collector.stop()
        await sim.stop()


async def test_the_status_reason_counts_the_whole_tag_set(broker: MosquittoProcess, state_dir: Path,
                                                          recorder: Recorder) -> None:
    """Seven tags, three of them on nodes the server does not have, one walking: every status says "3 of 7
    tags bad" with good data, whatever each publish carries (it used to flip between "all 3 tags bad" with
    `last_good_data` null, "3 of 7" and "3 of 4")."""
    from collector.config import OpcUaTag

    cfg = make_config(state_dir, broker.port)
    device = cfg.devices[0]
    assert isinstance(device, OpcUaDevice)
    sim = OpcUaMachineSim(device.model_copy(deep=True), clock=skewed_clock)  # serves the four real tags
    device.tags += [OpcUaTag(name=f"ghost{i}", node=f"nsu={NS};s=Ghost.{i}") for i in range(3)]
    await sim.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    try:
        await recorder.wait_for(lambda: len(data(recorder)) >= 6, 15, "data messages")
        await asyncio.sleep(2 * INTERVAL)
        assert any(set(m["tags"]) == {"speed", "ghost0", "ghost1", "ghost2"} for m in data(recorder)[1:])
    finally:
        await collector.stop()
        await sim.stop()
    statuses = [m.json() for m in recorder.on("/devices/cnc/status") if not m.retain]  # not an earlier test's
    live = [s for s in statuses if s["state"] != "never_seen" and s["reason"] != "shutdown"]
    assert live and all((s["state"], s["reason"]) == ("degraded", "3 of 7 tags bad") for s in live), statuses
    assert all(s["last_good_data"] is not None for s in live), statuses
