"""A status listener that raises: real Modbus simulator over TCP, a port nothing listens on, a real mosquitto.

In the field a wildcard in `mqtt.topic_root` made every retained status publish raise inside the state
listener; the task of a device that could not connect died on it, silently, and was never retried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from collector.app import Collector
from collector.broker import MosquittoProcess
from collector.config import Settings, parse_config
from simulators.workshop import Workshop
from tests.conftest import Recorder
from tests.test_backbone import demo_on_free_ports


async def test_a_raising_listener_is_logged_once_and_every_device_keeps_going(
        broker: MosquittoProcess, state_dir: Path, recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    data = demo_on_free_ports(state_dir, broker.port)
    data["devices"] = [d for d in data["devices"] if d["id"] in ("knit-01", "comp-01")]
    data["assets"] = []
    cfg = parse_config(data)
    workshop = Workshop(cfg, ["knit-01"])  # comp-01's port has nothing listening: refused at every try
    await workshop.start()
    collector = Collector(cfg, Settings())
    calls: list[tuple[Any, ...]] = []

    def broken(*args: Any) -> None:
        calls.append(args)
        raise ValueError("Publish topic cannot contain wildcards.")

    collector.status.listeners.insert(0, broken)  # before the sink's own listener
    collector.status.delivery_listeners.append(broken)
    caplog.set_level("INFO")
    await collector.start()
    try:
        dead, live = collector.engine.tasks["comp-01"], collector.engine.tasks["knit-01"]
        await recorder.wait_for(lambda: dead.errors >= 4, 20, "comp-01 refused and retried 4 times")
        assert dead.task is not None and not dead.task.done()
        polls = live.polls
        await recorder.wait_for(lambda: live.polls >= polls + 3, 10, "knit-01 polled 3 more times")
        await recorder.wait_for(lambda: len(recorder.on("/devices/knit-01/data")) >= 3, 10, "knit-01 data")
        # the listeners after the broken one still ran: the retained statuses are on the broker
        await recorder.wait_for(lambda: (m := recorder.last("/devices/knit-01/status"))
                                and m.json()["state"] == "online", 10, "knit-01 online")
        comp = recorder.last("/devices/comp-01/status")
        assert comp is not None and comp.json()["state"] == "offline"
    finally:
        await collector.stop()
        await workshop.stop()
    assert len(calls) >= 5, calls  # two state changes and every acknowledged good batch
    failed = [r for r in caplog.records if "listener" in r.getMessage() and "broken" in r.getMessage()]
    assert [r.getMessage() for r in failed] == [
        "event=listener_failed listener=test_a_raising_listener_is_logged_once_and_every_device_keeps_going"
        ".<locals>.broken"]
    assert failed[0].exc_info is not None and "wildcards" in str(failed[0].exc_info[1])
