"""End to end: simulators (real TCP) → collector → a private mosquitto → a subscriber.

The demo workshop is loaded from config/demo.yaml, moved to free ports, and given a few extra tags with
constant values, so the decoded values can be checked exactly for each type.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.app import Collector
from collector.config import CollectorConfig, Settings, parse_config
from simulators.workshop import Workshop
from tests.conftest import Recorder
from tests.support.broker import MosquittoProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
INTERVAL = 0.3

# (tag, type, extra, value as served, value expected after decoding)
MODBUS_CONSTANTS = [
    ("k_int16", "int16", {}, -1234, -1234),
    ("k_uint16", "uint16", {}, 54321, 54321),
    ("k_int32", "int32", {}, -123456789, -123456789),
    ("k_uint32_cdab", "uint32", {"byte_order": "CDAB"}, 3_000_000_000, 3_000_000_000),
    ("k_float32", "float32", {}, 3.25, 3.25),
    ("k_float32_volts", "float32", {"unit": "V"}, 230.0057, 230.0057),
    ("k_scaled", "int16", {"scale": 0.1, "unit": "°C"}, 61.5, 61.5),
]
OPCUA_CONSTANTS = [
    ("k_double", "double", 2.5), ("k_uint32", "uint32", 4_000_000_000), ("k_string", "string", "O1001-HOUSING"),
    ("k_bool", "bool", True), ("k_int16", "int16", -7),
]


def demo_on_free_ports(state_dir: Path, broker_port: int) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "config/demo.yaml").read_text(encoding="utf-8"))
    data = copy.deepcopy(data)
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{broker_port}"
    data["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    data["state_dir"] = str(state_dir)
    data["indicators"] = {"publish_interval": 0.5, "bucket": 1.0, "live_window": 1.5, "allow_simulated": True}
    for dev in data["devices"]:
        scheme = dev["endpoint"].split("://")[0]
        dev["endpoint"] = f"{scheme}://127.0.0.1:{free_port()}"
        dev["interval"] = INTERVAL
    imm = next(d for d in data["devices"] if d["id"] == "imm-01")
    for i, (name, type_, extra, served, _) in enumerate(MODBUS_CONSTANTS):
        imm["tags"].append({"name": name, "table": "holding_register", "address": 200 + 4 * i, "type": type_,
                            **extra, "sim": {"kind": "constant", "value": served}})
    cnc = next(d for d in data["devices"] if d["id"] == "cnc-01")
    for name, type_, served in OPCUA_CONSTANTS:
        cnc["tags"].append({"name": name, "node": f"nsu=urn:jx-hengda:cnc-01;s=Test.{name}", "type": type_,
                            "sim": {"kind": "constant", "value": served}})
    return data


class Running:
    def __init__(self, cfg: CollectorConfig, workshop: Workshop, collector: Collector) -> None:
        self.cfg, self.workshop, self.collector = cfg, workshop, collector

    @property
    def root(self) -> str:
        return self.cfg.topic_root


@pytest.fixture
async def running(broker: MosquittoProcess, state_dir: Path) -> AsyncIterator[Running]:
    cfg = parse_config(demo_on_free_ports(state_dir, broker.port))
    workshop = Workshop(cfg)
    await workshop.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    try:
        yield Running(cfg, workshop, collector)
    finally:
        await collector.stop()
        await workshop.stop()


CONNECTED = ["cnc-01", "cnc-02", "imm-01", "knit-01", "comp-01", "pack-01", "meter-01", "press-01"]


def data_of(rec: Recorder, device: str) -> list[dict[str, Any]]:
    return [m.json() for m in rec.on(f"/devices/{device}/data")]


async def test_every_device_delivers_decoded_values_with_rising_seq(running: Running, recorder: Recorder) -> None:
    await recorder.wait_for(lambda: all(len(data_of(recorder, d)) >= 3 for d in CONNECTED), 20,
                            "3 data messages from every connected device")
    for dev in CONNECTED:
        msgs = data_of(recorder, dev)
        seqs = [m["seq"] for m in msgs]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), (dev, seqs)
        assert seqs[-1] - seqs[0] == len(seqs) - 1, f"{dev}: gap in {seqs}"
        assert all(m["device"] == dev and m["historical"] is False for m in msgs)
    imm = data_of(recorder, "imm-01")[-1]["tags"]
    for name, _type, _extra, _served, expected in MODBUS_CONSTANTS:
        assert imm[name]["quality"] == "good", (name, imm[name])
        assert imm[name]["value"] == pytest.approx(expected), name
    assert imm["k_scaled"]["unit"] == "°C"
    # float32 read back from its two registers, computed here with struct, not by the codec
    assert imm["k_float32"]["value"] == struct.unpack(">f", struct.pack(">f", 3.25))[0]
    # the shortest decimal that reads back as the same float32, not 230.00570678710938
    assert imm["k_float32_volts"]["value"] == 230.0057
    raw = next(m.payload for m in reversed(recorder.on("/devices/imm-01/data")))
    assert b'"k_float32_volts":{"value":230.0057,' in raw
    # in subscribe mode a message carries what changed: take each tag's latest value over all messages
    cnc: dict[str, Any] = {}
    for msg in data_of(recorder, "cnc-01"):
        cnc.update(msg["tags"])
    for name, _type, expected in OPCUA_CONSTANTS:
        assert cnc[name]["quality"] == "good", (name, cnc[name])
        assert cnc[name]["value"] == expected, name
    assert cnc["spindle_speed"]["unit"] == "rpm"
    # the machine states move through the documented names
    assert cnc["channel_state"]["value"] in ("idle", "running", "alarm", "setup")


async def test_statuses_and_gateway_are_retained(running: Running, broker: MosquittoProcess,
                                                 recorder: Recorder) -> None:
    await recorder.wait_for(lambda: all(
        (m := recorder.last(f"/devices/{d}/status")) and m.json()["state"] == "online" for d in CONNECTED), 20,
        "every device online")
    late = Recorder(broker.host, broker.port, f"{running.root}/#")
    try:
        await late.wait_for(lambda: len([m for m in late.on("/status") if m.retain]) >= len(CONNECTED) + 1, 10,
                            "retained statuses")
        gw = late.last("/gateway/status")
        assert gw is not None and gw.retain and gw.json()["state"] == "online"
        for dev in CONNECTED:
            st = late.last(f"/devices/{dev}/status")
            assert st is not None and st.retain
            body = st.json()
            assert body["device"] == dev and body["state"] == "online" and body["last_good_data"]
        ind = late.last("/indicators")
        assert ind is not None and ind.retain
    finally:
        late.close()


async def test_stopped_device_goes_offline_lowers_rate_and_comes_back(running: Running, recorder: Recorder) -> None:
    def d2() -> tuple[int, int]:
        m = recorder.last("/indicators")
        f = m.json()["figures"]["D2"] if m else {"numerator": -1, "denominator": -1}
        return f["numerator"], f["denominator"]

    await recorder.wait_for(lambda: d2() == (7, 8), 20, "live 联网率 7/8 with every machine up")
    assert recorder.last("/indicators").json()["figures"]["D1"]["numerator"] == 7  # type: ignore[union-attr]

    stopped_at = time.monotonic()
    await running.workshop.stop_device("imm-01")
    await recorder.wait_for(lambda: (m := recorder.last("/devices/imm-01/status")) and m.json()["state"] == "offline",
                            10, "imm-01 offline")
    assert time.monotonic() - stopped_at <= 3 * INTERVAL + 0.5, "offline later than 3 poll intervals"
    await recorder.wait_for(lambda: d2() == (6, 8), 10, "live 联网率 down to 6/8")

    # the other devices keep flowing while imm-01 is away
    before = {d: len(data_of(recorder, d)) for d in CONNECTED if d != "imm-01"}
    await asyncio.sleep(4 * INTERVAL)
    for dev, count in before.items():
        assert len(data_of(recorder, dev)) >= count + 2, f"{dev} stopped flowing"

    await running.workshop.start_device("imm-01")
    await recorder.wait_for(lambda: (m := recorder.last("/devices/imm-01/status")) and m.json()["state"] == "online",
                            15, "imm-01 back online")
    await recorder.wait_for(lambda: d2() == (7, 8), 10, "live 联网率 back to 7/8")


def test_run_command_shuts_down_cleanly_on_sigterm(broker: MosquittoProcess, state_dir: Path,
                                                   tmp_path: Path) -> None:
    data = demo_on_free_ports(state_dir, broker.port)
    data["devices"] = [d for d in data["devices"] if d["id"] in ("knit-01", "comp-01")]
    data["assets"] = []
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    cfg = parse_config(data)
    sim = subprocess.Popen([sys.executable, "-m", "collector.cli", "simulate", "-c", str(path)],
                           stdout=subprocess.PIPE, text=True)
    rec = Recorder(broker.host, broker.port, f"{cfg.topic_root}/#")
    try:
        assert sim.stdout is not None and "ready" in "".join(sim.stdout.readline() for _ in range(3))
        env = {**os.environ, "COLLECTOR_LOG_LEVEL": "INFO"}
        run = subprocess.Popen([sys.executable, "-m", "collector.cli", "run", "-c", str(path)], env=env,
                               stderr=subprocess.PIPE, text=True)
        asyncio.run(rec.wait_for(lambda: len(rec.on("/devices/knit-01/data")) >= 2, 20, "data from collector run"))
        run.send_signal(signal.SIGTERM)
        assert run.wait(15) == 0
        gw = rec.last("/gateway/status")
        assert gw is not None and gw.json()["state"] == "offline" and gw.json()["reason"] == "shutdown"
        # every device's retained status says so too (it said `online` until the next start)
        late = Recorder(broker.host, broker.port, f"{cfg.topic_root}/devices/+/status")
        try:
            ran = ("knit-01", "comp-01")  # earlier tests of this module left others of the same root
            asyncio.run(late.wait_for(lambda: all(late.on(f"/{d}/status") for d in ran), 10,
                                      "retained device statuses"))
            statuses = {m.json()["device"]: (m.json()["state"], m.json()["reason"], m.retain)
                        for m in late.on("/status") if m.json()["device"] in ran}
            assert statuses == {d: ("offline", "shutdown", True) for d in ran}, statuses
        finally:
            late.close()
        logs = run.stderr.read() if run.stderr else ""
        assert "event=stopped" in logs
        assert "loop=uvloop" in logs  # the service runs on uvloop where it is installed (collector/runtime.py)
    finally:
        rec.close()
        sim.send_signal(signal.SIGINT)
        assert sim.wait(15) == 0


async def test_first_snapshot_waits_for_the_first_poll_round(broker: MosquittoProcess, state_dir: Path,
                                                            recorder: Recorder) -> None:
    """Published at connect, the first retained snapshot said D2 0 of 7 until the next one, a minute later."""
    data = demo_on_free_ports(state_dir, broker.port)
    data["indicators"] = {"publish_interval": 30, "bucket": 5.0, "live_window": 10, "allow_simulated": True}
    cfg = parse_config(data)
    workshop = Workshop(cfg)
    await workshop.start()
    collector = Collector(cfg, Settings())
    started = time.time()
    await collector.start()
    try:
        def snapshots() -> list[Any]:  # published by this collector (not retained ones of earlier tests)
            return [m for m in recorder.on("/indicators") if not m.retain and m.received >= started]

        first = (await recorder.wait_for(snapshots, 25, "the first snapshot"))[0]
        assert first.received - started < 25  # long before the first periodic one
        d2 = first.json()["figures"]["D2"]
        assert (d2["numerator"], d2["denominator"]) == (7, 8), d2
        assert first.json()["networked_now"] == sorted(first.json()["networked_now"]) and len(
            first.json()["networked_now"]) == 7
        data_at = {d: min(m.received for m in recorder.on(f"/devices/{d}/data")) for d in CONNECTED}
        assert all(t <= first.received for t in data_at.values()), (first.received, data_at)
        assert len(snapshots()) == 1
    finally:
        await collector.stop()
        await workshop.stop()
