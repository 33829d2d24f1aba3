"""Shared fixtures: a private mosquitto per test module, free ports, an MQTT subscriber that records."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import MosquittoProcess, free_port


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
    client_id: str | None = None  # with clean_session False: a persistent session the broker queues for
    clean_session: bool = True
    messages: list[Message] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id or f"test-rec-{id(self)}",
                                  clean_session=self.clean_session)
        self.client.reconnect_delay_set(0.2, 1)
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


class VictoriaMetrics:
    """A private VictoriaMetrics (accepts influxdb-client's /api/v2/write) on a free port; restartable."""

    def __init__(self, data_dir: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.proc: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import shutil
        import subprocess
        import urllib.request

        exe = shutil.which("victoria-metrics")
        if exe is None:
            pytest.fail("victoria-metrics is not installed: `apt-get install victoria-metrics` (.ci/run does it)")
        self.proc = subprocess.Popen([exe, f"-httpListenAddr=127.0.0.1:{self.port}",
                                      f"-storageDataPath={self.data_dir}", "-loggerLevel=ERROR",
                                      "-search.latencyOffset=0s"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=0.5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("victoria-metrics did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(15)
            self.proc = None

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every stored series matching `match`, after a forced flush."""
        import json
        import urllib.parse
        import urllib.request

        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=5).read()
        body = urllib.parse.urlencode({"match[]": match}).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/export", data=body, timeout=10) as resp:
            return [json.loads(line) for line in resp.read().decode().splitlines() if line.strip()]
