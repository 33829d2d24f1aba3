"""MQTT sink (paho-mqtt 2.x): data, retained statuses, the gateway's will, the indicator snapshot.

paho runs its network loop in its own thread. Every callback from that thread is handed to the asyncio loop
with `call_soon_threadsafe` and nothing else: taking our own lock inside a paho callback while the loop
thread holds it and calls `publish()` would invert paho's lock order. Because `publish()` runs on the loop
thread and the ack is processed there too, the message id is always recorded before its ack is handled.

Topics and payloads: docs/mqtt.md.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from collector.model import Batch

log = logging.getLogger(__name__)

DeliveredCallback = Callable[[str, float], None]


@dataclass
class MqttSettings:
    """What the sink needs to know, resolved from the config and the environment by the collector."""

    host: str
    port: int
    topic_root: str
    qos: int = 1
    client_id: str = "shopfloor-collector"
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    max_inflight: int = 100


def ms(ts: float | None) -> int | None:
    return None if ts is None else int(round(ts * 1000))


def encode_data(batch: Batch) -> bytes:
    """`{root}/devices/{device}/data`: one message per device per cycle."""
    return orjson.dumps({
        "device": batch.device,
        "seq": batch.seq,
        "ts": ms(batch.ts),
        "historical": batch.historical,
        "tags": {r.tag: {"value": r.value, "unit": r.unit, "quality": r.quality, "ts": ms(r.source_ts)}
                 for r in batch.readings},
    }, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class MqttSink:
    """Publishes batches and statuses; tells `on_delivered` when the broker acknowledged a good sample."""

    def __init__(self, settings: MqttSettings, on_delivered: DeliveredCallback | None = None) -> None:
        self.s = settings
        self.root = settings.topic_root.rstrip("/")
        self.on_delivered = on_delivered
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connected = asyncio.Event()
        self.connected_flag = False
        self.stopping = False
        self.on_connect_hooks: list[Callable[[], None]] = []
        self._pending: dict[int, tuple[str, float | None]] = {}
        self._acked = threading.Event()
        self.published = 0
        self.acked = 0
        self.errors = 0
        self.client = self._make_client()

    # -- setup

    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.s.client_id, clean_session=True)
        if self.s.username:
            c.username_pw_set(self.s.username, self.s.password)
        if self.s.tls:
            c.tls_set(ca_certs=self.s.ca_file, certfile=self.s.cert_file, keyfile=self.s.key_file,
                      cert_reqs=ssl.CERT_REQUIRED)
        c.max_inflight_messages_set(self.s.max_inflight)
        c.reconnect_delay_set(min_delay=1, max_delay=15)
        c.will_set(self.gateway_topic, orjson.dumps({"state": "offline", "reason": "connection lost"}),
                   qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        return c

    @property
    def gateway_topic(self) -> str:
        return f"{self.root}/gateway/status"

    def device_topic(self, device: str, kind: str) -> str:
        return f"{self.root}/devices/{device}/{kind}"

    async def start(self, wait: float = 5.0) -> None:
        """Connect in the background; wait up to `wait` s for the first connection, never fail on a dead broker."""
        self.loop = asyncio.get_running_loop()
        self.client.connect_async(self.s.host, self.s.port, keepalive=self.s.keepalive)
        self.client.loop_start()
        try:
            await asyncio.wait_for(self.connected.wait(), wait)
        except TimeoutError:
            log.warning("sink=mqtt event=not_connected host=%s port=%s (will keep trying)", self.s.host, self.s.port)

    async def stop(self, gateway_payload: dict[str, Any] | None = None, wait: float = 3.0) -> None:
        """Publish the gateway's offline status (retained), wait for outstanding acks, disconnect."""
        if self.connected_flag:
            payload = gateway_payload or {"state": "offline", "reason": "shutdown", "ts": iso(time.time())}
            info = self.client.publish(self.gateway_topic, orjson.dumps(payload), qos=1, retain=True)
            deadline = time.monotonic() + wait
            while (self._pending or not info.is_published()) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        self.stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (network thread): hand over to the loop, nothing else

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if self.loop is not None and not rc.is_failure:
            self.loop.call_soon_threadsafe(self._connected)
        elif rc.is_failure:
            log.warning("sink=mqtt event=connect_refused reason=%s", rc)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._disconnected, str(rc))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any = None) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._ack, mid)

    # -- loop thread

    def _connected(self) -> None:
        log.info("sink=mqtt event=connected host=%s port=%s", self.s.host, self.s.port)
        self.connected_flag = True
        self.connected.set()
        self.publish_json(self.gateway_topic, {"state": "online", "ts": iso(time.time())}, retain=True)
        for hook in self.on_connect_hooks:
            hook()

    def _disconnected(self, reason: str) -> None:
        if self.connected_flag and not self.stopping:
            log.warning("sink=mqtt event=disconnected reason=%s", reason)
        self.connected_flag = False
        self.connected.clear()

    def _ack(self, mid: int) -> None:
        entry = self._pending.pop(mid, None)
        if entry is None:
            return
        self.acked += 1
        device, good_ts = entry
        if good_ts is not None and self.on_delivered is not None:
            self.on_delivered(device, good_ts)

    # -- publishing (loop thread)

    def publish_batch(self, batch: Batch) -> None:
        info = self.client.publish(self.device_topic(batch.device, "data"), encode_data(batch), qos=self.s.qos)
        self.published += 1
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            self.errors += 1
            log.warning("sink=mqtt event=publish_failed device=%s rc=%s", batch.device, info.rc)
            return
        if self.s.qos == 0:
            if batch.good_ts is not None and self.on_delivered is not None and self.connected_flag:
                self.on_delivered(batch.device, batch.good_ts)  # QoS 0 has no ack: sent on a live link
            return
        self._pending[info.mid] = (batch.device, batch.good_ts)

    def publish_json(self, topic: str, payload: dict[str, Any], retain: bool = False, qos: int = 1) -> None:
        info = self.client.publish(topic, orjson.dumps(payload), qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.errors += 1
            log.warning("sink=mqtt event=publish_failed topic=%s rc=%s", topic, info.rc)

    def publish_status(self, status: dict[str, Any]) -> None:
        payload = {
            "device": status["device"],
            "state": status["state"],
            "since": iso(status.get("since")),
            "reason": status.get("reason"),
            "last_good_data": iso(status.get("last_good")),
            "ts": iso(time.time()),
        }
        self.publish_json(self.device_topic(status["device"], "status"), payload, retain=True)

    def publish_indicators(self, snapshot: dict[str, Any]) -> None:
        self.publish_json(f"{self.root}/indicators", snapshot, retain=True)

    def stats(self) -> dict[str, Any]:
        return {"connected": self.connected_flag, "published": self.published, "acked": self.acked,
                "pending": len(self._pending), "errors": self.errors}
