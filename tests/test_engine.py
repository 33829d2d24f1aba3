"""The engine on its own: backoff, isolation of a failing device, stopping a task that swallows a cancel."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from adapters.base import Adapter, AdapterError
from collector.config import parse_config
from collector.engine import Backoff, Engine
from collector.model import DeviceState, Reading


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    b = Backoff(base=0.5, cap=8.0, jitter=0.2, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    nominal = [0.5, 1, 2, 4, 8, 8, 8, 8]
    for d, n in zip(delays, nominal, strict=True):
        assert n * 0.8 <= d <= n * 1.2
    assert len(set(delays[4:])) == 4  # jittered: devices don't retry in step
    b.reset()
    assert b.next_delay() <= 0.6


def device(id_: str, interval: float = 0.05) -> Any:
    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [
        {"id": id_, "protocol": "modbus", "endpoint": "tcp://127.0.0.1:1", "interval": interval,
         "tags": [{"name": "t", "register": 40001}]}]})
    return cfg.devices[0]


class Good(Adapter):
    protocol = "fake"

    async def connect(self) -> None:
        return None

    async def read(self) -> list[Reading]:
        await asyncio.sleep(0)
        now = time.time()
        return [Reading(self.device.id, "t", 1, None, "good", now, now)]

    async def close(self) -> None:
        return None


class Dead(Good):
    async def connect(self) -> None:
        raise AdapterError("connection refused")


class SwallowsCancel(Good):
    """Like pymodbus under Python 3.11's wait_for race: the answer wins and the cancellation is lost."""

    swallowed = 0

    async def read(self) -> list[Reading]:
        try:
            await asyncio.sleep(10)  # a slow answer: the cancel lands here
        except asyncio.CancelledError:
            SwallowsCancel.swallowed += 1
        return await super().read()


async def test_a_failing_device_never_stops_another() -> None:
    seen: dict[str, int] = {}
    states: list[tuple[str, DeviceState, str | None]] = []
    engine = Engine(lambda dev, r: seen.__setitem__(dev, seen.get(dev, 0) + len(r)),
                    lambda dev, st, why: states.append((dev, st, why)))
    factories = {"good": Good, "dead": Dead}
    for name in ("good", "dead"):
        engine.start_device(device(name))
        engine.tasks[name].adapter_factory = factories[name]
    await asyncio.sleep(0.6)
    await engine.stop()
    assert seen.get("good", 0) >= 8 and "dead" not in seen
    assert ("dead", DeviceState.OFFLINE, "connection refused") in states
    assert not any(dev == "good" for dev, _, _ in states)
    assert engine.tasks == {}


async def test_stop_ends_a_task_whose_adapter_swallows_the_cancellation() -> None:
    engine = Engine(lambda dev, r: None, lambda dev, st, why: None)
    engine.start_device(device("m", interval=0.001))
    task = engine.tasks["m"]
    task.adapter_factory = SwallowsCancel
    await asyncio.sleep(0.05)
    inner = task.task
    await asyncio.wait_for(engine.stop(), 5)
    assert inner is not None and inner.done()
    assert SwallowsCancel.swallowed >= 1


async def test_a_raising_state_sink_never_ends_the_task_and_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def on_state(dev: str, st: DeviceState, why: str | None) -> None:
        calls.append(dev)
        raise ValueError("Publish topic cannot contain wildcards.")

    engine = Engine(lambda dev, r: None, on_state)
    engine.start_device(device("dead", interval=0.01))
    task = engine.tasks["dead"]
    task.adapter_factory = Dead
    task.backoff.cap = 0.02  # retry fast
    caplog.set_level("INFO", logger="collector.engine")
    deadline = time.monotonic() + 5
    while task.errors < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    alive = task.task is not None and not task.task.done()
    await engine.stop()
    assert task.errors >= 5 and alive and len(calls) >= 5
    failed = [r.getMessage() for r in caplog.records if "listener" in r.getMessage()]
    assert failed == ["event=listener_failed listener=dead:on_state"]


async def test_an_adapter_that_cannot_be_built_marks_its_device_offline(caplog: pytest.LogCaptureFixture) -> None:
    """A plugin's adapter module is imported at the first device that uses it: when that import fails, the
    device is offline with the reason and the other devices poll on."""
    seen: dict[str, int] = {}
    states: list[tuple[str, DeviceState, str | None]] = []

    def missing(dev: Any) -> Adapter:
        raise ModuleNotFoundError("No module named 'asyncua'")

    engine = Engine(lambda dev, r: seen.__setitem__(dev, seen.get(dev, 0) + len(r)),
                    lambda dev, st, why: states.append((dev, st, why)))
    for name, factory in (("good", Good), ("broken", missing)):
        engine.start_device(device(name))
        engine.tasks[name].adapter_factory = factory
    await asyncio.sleep(0.3)
    broken = engine.tasks["broken"].task
    await engine.stop()
    assert broken is not None and broken.done() and broken.exception() is None
    assert states == [("broken", DeviceState.OFFLINE,
                       "internal error: ModuleNotFoundError: No module named 'asyncua'")]
    assert seen.get("good", 0) >= 3 and "broken" not in seen
    assert any("event=adapter_not_built" in r.getMessage() for r in caplog.records)
