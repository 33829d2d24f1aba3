"""The InfluxDB sink against a real line-protocol database (VictoriaMetrics): what was read is what is stored,
and a database outage loses nothing (the influx outbox holds it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from pathlib import Path

import pytest

from collector.app import Collector
from collector.config import Settings, parse_config
from collector.model import Batch, Reading
from collector.sinks.influx import InfluxSettings, InfluxSink
from simulators.workshop import Workshop
from tests.conftest import Recorder, VictoriaMetrics
from tests.support.broker import MosquittoProcess
from tests.test_outbox_outage import by_device, load_config

TOKEN = "s3cret-influx-token"


def test_line_protocol_escapes_and_types() -> None:
    sink = InfluxSink(InfluxSettings(url="http://127.0.0.1:1", org="o", bucket="b", token=None,
                                     enterprise="acme co", workshop="ws,1", measurements={"d 1": "cnc=lathe"}))
    batch = Batch("d 1", 7, 0.0, [
        Reading("d 1", "speed", 1500.5, "rpm", "good", 1.5, 1.5),
        Reading("d 1", "count", 42, None, "good", 1.5, 1.5),
        Reading("d 1", "on", True, None, "good", 1.5, 1.5),
        Reading("d 1", "prog", 'O1 "x"', None, "good", 1.5, 1.5),
        Reading("d 1", "bad", None, None, "bad_timeout", 1.5, 1.5),
    ])
    lines = sink.encode(batch).decode().splitlines()
    prefix = r"cnc=lathe,enterprise=acme\ co,workshop=ws\,1,device=d\ 1,tag="
    assert lines == [
        prefix + 'speed value=1500.5,quality="good" 1500000000',
        prefix + 'count value=42i,quality="good" 1500000000',
        prefix + 'on value=true,quality="good" 1500000000',
        prefix + r'prog value="O1 \"x\"",quality="good" 1500000000',
        prefix + 'bad quality="bad_timeout" 1500000000',
    ]


async def test_points_read_back_equal_what_was_read_and_an_outage_loses_nothing(
        broker: MosquittoProcess, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("COLLECTOR_INFLUX_TOKEN", TOKEN)
    vm = VictoriaMetrics(tmp_path / "vm")
    vm.start()
    data = load_config(state_dir, broker.port, devices=2, interval=0.2,
                       influx={"url": vm.url, "bucket": "factory", "batch_rows": 20})
    cfg = parse_config(data)
    rec = Recorder(broker.host, broker.port, f"{cfg.topic_root}/devices/+/data")  # before the first reading
    workshop = Workshop(cfg)
    await workshop.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    try:
        # conditions, not sleeps: points before, during and after the outage, however slow the box
        await rec.wait_for(lambda: len(by_device(rec)) == 2 and all(len(v) >= 10 for v in by_device(rec).values()),
                           20, "points before the outage")
        vm.stop()
        await rec.wait_for(lambda: collector.outbox.stats("influx")["depth_batches"] >= 20, 20,
                           "20 batches held while the database is down")
        vm.start()
        up_at = time.time()
        await rec.wait_for(lambda: all(len(v) >= 35 and sum(m["ts"] / 1000 > up_at for m in v) >= 5
                                       for v in by_device(rec).values()), 30, "points after the outage")
        for dev in ("m00", "m01"):
            await collector.engine.stop_device(dev)
        # both sinks drained: the subscriber (the reference) has everything the database has
        await rec.wait_for(lambda: collector.outbox.stats("influx")["depth_batches"] == 0
                           and collector.outbox.stats("mqtt")["depth_batches"] == 0
                           and collector.sink.stats()["in_flight"] == 0, 30, "both sinks to drain")
        await asyncio.sleep(0.5)
        wanted = sum(len(m["tags"]) for msgs in by_device(rec).values() for m in msgs)
        for _ in range(20):  # VictoriaMetrics makes a point searchable shortly after its 204: poll, bounded
            series = vm.export('{__name__="device_value"}')
            if sum(len(x["timestamps"]) for x in series) >= wanted:
                break
            await asyncio.sleep(0.25)
    finally:
        await collector.stop()
        await workshop.stop()
        rec.close()
        vm.stop()
    stored: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for s in series:
        key = (s["metric"]["device"], s["metric"]["tag"])
        assert s["metric"]["enterprise"] == "acme" and s["metric"]["workshop"] == "ws1"
        stored[key].update(zip(s["timestamps"], s["values"], strict=True))
    expected: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for device, msgs in by_device(rec).items():
        for m in msgs:
            for tag, t in m["tags"].items():
                expected[(device, tag)][t["ts"]] = float(t["value"])
    assert set(expected) == set(stored) and len(expected) == 10
    for key, points in expected.items():
        assert len(points) >= 30, f"{key}: too few points to span the outage"
        assert stored[key] == pytest.approx(points), f"{key}: stored points differ from what was read"
    assert TOKEN not in caplog.text
