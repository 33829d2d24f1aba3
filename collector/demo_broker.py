"""A local MQTT broker for `collector demo`: mosquitto when installed, else the embedded amqtt (the `demo`
extra), and the clean-up of the demo's retained topics on a broker it did not start.

A gateway uses the broker of its config; this module exists so that `make demo` needs nothing but Python. The
test suite's restartable mosquitto runner builds on `Mosquitto` in tests/support/broker.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def clear_retained(host: str, port: int, topic_filter: str, quiet: float = 0.5, timeout: float = 10.0,
                   username: str | None = None, password: str | None = None) -> list[str]:
    """Remove every retained message under `topic_filter` (a zero-length retained publish each) and return the
    topics cleared. The broker sends retained messages right after the SUBACK: once none has come for `quiet`
    seconds, they are all in. `make demo` uses it so that a broker it did not start keeps none of its topics."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    retained: dict[str, None] = {}
    last = [time.monotonic()]
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-demo-clear-{time.time_ns()}")
    if username:
        client.username_pw_set(username, password)
    client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic_filter, qos=1)
    def on_subscribe(c: mqtt.Client, u: Any, mid: int, codes: Any, props: Any = None) -> None:
        last[0] = time.monotonic()
        subscribed.set()

    client.on_subscribe = on_subscribe

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        last[0] = time.monotonic()
        if msg.retain and msg.payload:
            retained[msg.topic] = None

    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        if not subscribed.wait(timeout):
            raise TimeoutError(f"no SUBACK from {host}:{port} for {topic_filter}")
        while time.monotonic() - last[0] < quiet and time.monotonic() < deadline:
            time.sleep(0.05)
        infos = [client.publish(topic, b"", qos=1, retain=True) for topic in retained]
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
    finally:
        client.disconnect()
        client.loop_stop()
    return list(retained)


class Mosquitto:
    """mosquitto on host:port with a throw-away config, started and stopped by this process."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("mosquitto") is not None

    def config_lines(self) -> list[str]:
        """The broker's config; `user`: started as root, mosquitto would switch to user mosquitto and lose
        access to our folders."""
        return [f"listener {self.port} {self.host}", "allow_anonymous true", "max_queued_messages 0",
                "max_inflight_messages 0", f"user {getpass.getuser()}", "log_dest stderr", "log_type error",
                "log_type warning", "persistence false"]

    def start(self, timeout: float = 10.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)  # again after a stop() removed it
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(self.config_lines()) + "\n")
        self.proc = subprocess.Popen([shutil.which("mosquitto") or "mosquitto", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "ab"))  # noqa: SIM115
        deadline = time.monotonic() + timeout
        while not port_answers(self.host, self.port, 0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.dir / 'log').read_text()[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)  # the throw-away config and log go with the broker


class EmbeddedBroker:
    """amqtt in this process, for machines without mosquitto."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.broker = Broker(config)
        await self.broker.start()

    async def stop(self) -> None:
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.shutdown()


class DemoBroker:
    """Use the configured broker when it answers; otherwise start one there (mosquitto, else amqtt)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.kind = "external"
        self._mosq: Mosquitto | None = None
        self._amqtt: EmbeddedBroker | None = None

    async def start(self) -> str:
        if port_answers(self.host, self.port):
            return self.kind
        if Mosquitto.available():
            self._mosq = Mosquitto(self.port, self.host)
            await asyncio.to_thread(self._mosq.start)
            self.kind = "mosquitto"
        else:
            self._amqtt = EmbeddedBroker(self.port, self.host)
            await self._amqtt.start()
            self.kind = "amqtt"
        return self.kind

    async def stop(self) -> None:
        if self._mosq is not None:
            await asyncio.to_thread(self._mosq.stop)
        if self._amqtt is not None:
            await self._amqtt.stop()
