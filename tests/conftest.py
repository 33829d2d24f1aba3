"""Shared fixtures: a private mosquitto per test module, free ports, an MQTT subscriber that records."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.broker import MosquittoProcess, free_port


@pytest.fixture(scope="module")
def broker() -> Iterator[MosquittoProcess]:
    """A private mosquitto on a free port; tests may stop() and start() it again."""
    if not MosquittoProcess.available():
        pytest.fail("mosquitto is not installed: `apt-get install mosquitto` (.ci/run does it)")
    proc = MosquittoProcess(free_port())
    proc.start()
    yield proc
    proc.stop()


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    received: float

    def json(self) -> Any:
        return orjson.loads(self.payload)


@dataclass
class Recorder:
    """Subscribes with QoS 1 in paho's thread; tests read `messages` and wait on conditions."""

    host: str
    port: int
    topic: str = "#"
    messages: list[Message] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-rec-{id(self)}")
        self.client.on_connect = lambda c, u, f, rc, p=None: (c.subscribe(self.topic, qos=1), self.ready.set())
        self.client.on_message = self._on_message
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        if not self.ready.wait(10):
            raise RuntimeError("recorder could not connect")
        time.sleep(0.1)  # let the SUBACK arrive

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(Message(msg.topic, msg.payload, bool(msg.retain), time.time()))

    def on(self, suffix: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def last(self, suffix: str) -> Message | None:
        found = self.on(suffix)
        return found[-1] if found else None

    async def wait_for(self, cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = cond()
            if result:
                return result
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def recorder(broker: MosquittoProcess) -> Iterator[Recorder]:
    rec = Recorder(broker.host, broker.port)
    yield rec
    rec.close()


@pytest.fixture
def state_dir(tmp_path: Any) -> Any:
    d = tmp_path / "state"
    d.mkdir()
    return d


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONASYNCIODEBUG", "0")
