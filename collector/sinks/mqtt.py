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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from collector.model import Batch, Row
from collector.sinks.link import LinkState

log = logging.getLogger(__name__)

AckCallback = Callable[[Row], None]
HISTORICAL_FALSE = b'"historical":false'
HISTORICAL_TRUE = b'"historical":true'


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
    reconnect_max_delay: int = 10


def ms(ts: float | None) -> int | None:
    return None if ts is None else int(ts * 1000)  # truncated, as databases store ns timestamps in ms


def encode_data(batch: Batch) -> bytes:
    """`{root}/devices/{device}/data`: one message per device per cycle.

    The hot path of every reading (docs/BENCHMARKS.md): a plain loop, the millisecond timestamp converted
    once per distinct source time (a Modbus cycle shares one per request), and orjson without options, which
    are slower; adapters hand over JSON-friendly values, `default=str` is only a safety net."""
    tags: dict[str, dict[str, Any]] = {}
    last_ts: float | None = None
    last_ms: int | None = None
    for r in batch.readings:
        ts = r.source_ts
        if ts != last_ts:
            last_ts, last_ms = ts, ms(ts)
        tags[r.tag] = {"value": r.value, "unit": r.unit, "quality": r.quality, "ts": last_ms}
    return orjson.dumps({"device": batch.device, "seq": batch.seq, "ts": ms(batch.ts),
                         "historical": batch.historical, "tags": tags}, default=str)


# OpenSSL verify codes (X509_V_ERR_*) and what to check in the config
_VERIFY_HINTS = {
    18: "unknown CA: the broker's certificate is self-signed; put it or its CA in mqtt.ca_file",
    19: "unknown CA: the broker's chain ends in a CA that mqtt.ca_file does not hold",
    20: "unknown CA: the broker's certificate is not signed by a CA in mqtt.ca_file",
    21: "unknown CA: the broker's certificate is not signed by a CA in mqtt.ca_file",
    10: "the broker's certificate has expired",
    9: "the broker's certificate is not valid yet (check the gateway's clock)",
    62: "hostname mismatch: the host in mqtt.url is not among the certificate's names",
    64: "hostname mismatch: the IP address in mqtt.url is not among the certificate's addresses",
}


def connect_failure_reason(exc: BaseException | None) -> str:
    """Why a connection attempt failed, in words an operator can act on: for TLS the certificate check that
    failed (unknown CA, hostname mismatch, expired) and OpenSSL's own message, else the socket error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = _VERIFY_HINTS.get(exc.verify_code, "the broker's certificate was not accepted")
        return f"TLS: {hint} ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if exc is None:
        return "unknown"
    return str(exc) or type(exc).__name__


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class MqttSink(LinkState):
    """Publishes outbox rows (the data) and statuses; calls `on_ack(row)` when the broker acknowledged a row.

    It is the outbox sender's transport (collector/delivery.py): it publishes only while connected, keeps its
    in-flight rows by message id across a reconnect (paho re-sends them), and reports the rest through
    `generation` so the sender starts again from the oldest row not in flight.
    """

    def __init__(self, settings: MqttSettings, on_ack: AckCallback | None = None) -> None:
        self.s = settings
        self.root = settings.topic_root.rstrip("/")
        self.on_ack = on_ack
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connected_event = asyncio.Event()
        LinkState.__init__(self)
        self.stopping = False
        self.on_connect_hooks: list[Callable[[], None]] = []
        # (topic filter, qos) subscribed at every connect; messages go to every hook as (topic, payload)
        self.subscriptions: list[tuple[str, int]] = []
        self.on_message_hooks: list[Callable[[str, bytes], None]] = []
        self.data_qos = settings.qos
        self.gateway_info: Callable[[], dict[str, Any]] | None = None
        self._pending: dict[int, Row] = {}
        self._tracked: dict[int, Callable[[], None]] = {}  # mid -> callback: publish_tracked()
        self.published = 0
        self.acked = 0
        self.errors = 0
        self.connect_error: str | None = None  # why the last connection attempt failed (None once connected)
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
        c.reconnect_delay_set(min_delay=1, max_delay=self.s.reconnect_max_delay)
        topic, payload, qos, retain = self.will()
        c.will_set(topic, payload, qos=qos, retain=retain)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    def will(self) -> tuple[str, bytes, int, bool]:
        """The will (topic, payload, qos, retain): the gateway's offline status; a subclass may send another."""
        return self.gateway_topic, orjson.dumps({"state": "offline", "reason": "connection lost"}), 1, True

    def row_message(self, row: Row, historical: bool) -> tuple[str, bytes] | None:
        """The (topic, payload) an outbox row is published as; None acknowledges it without publishing."""
        payload = row.payload.replace(HISTORICAL_FALSE, HISTORICAL_TRUE, 1) if historical else row.payload
        return self.device_topic(row.device, "data"), payload

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
            async with asyncio.timeout(wait):
                await self.connected_event.wait()
        except TimeoutError:
            if self.client.is_connected():  # e.g. a Sparkplug node waiting for its primary host
                log.info("sink=mqtt event=connected_not_ready host=%s port=%s", self.s.host, self.s.port)
            else:
                log.warning("sink=mqtt event=not_connected host=%s port=%s (will keep trying) reason=%s",
                            self.s.host, self.s.port, self.connect_error or "no answer yet")

    async def stop(self, gateway_payload: dict[str, Any] | None = None, wait: float = 3.0) -> None:
        """Publish the gateway's offline status (retained), wait for outstanding acks, disconnect."""
        if self.connected:
            payload = gateway_payload or {"state": "offline", "reason": "shutdown", "ts": iso(time.time())}
            info = self.client.publish(self.gateway_topic, orjson.dumps(payload), qos=1, retain=True)
            deadline = time.monotonic() + wait
            while (self._pending or not info.is_published()) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        self.stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (network thread): hand over to the loop, nothing else

    def _hand_over(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn` on the loop thread; after shutdown (loop closed) there is nobody left to tell."""
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.warning("sink=mqtt event=connect_refused reason=%s", rc)
        else:
            self._hand_over(self._connect_succeeded)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        """paho calls this inside its `except OSError` around a connection attempt and passes no exception:
        the reason (an unknown CA, a hostname mismatch, a refused port) is only in `sys.exc_info()`."""
        self._hand_over(self._connect_failed, connect_failure_reason(sys.exc_info()[1]))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self._hand_over(self._disconnected, str(rc))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any = None) -> None:
        self._hand_over(self._ack, mid)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._hand_over(self._message, msg.topic, bytes(msg.payload))

    # -- loop thread

    def _connect_failed(self, reason: str) -> None:
        """Log the reason when it is new (the first failure, or another one than before): paho retries every
        few seconds and the same line each time would flood the journal."""
        if reason != self.connect_error:
            log.warning("sink=mqtt event=connect_failed host=%s port=%s reason=%s", self.s.host, self.s.port,
                        reason)
        self.connect_error = reason

    def _connect_succeeded(self) -> None:
        self.connect_error = None
        self._connected()

    def _connected(self) -> None:
        log.info("sink=mqtt event=connected host=%s port=%s", self.s.host, self.s.port)
        self.link_up()
        self.connected_event.set()
        for topic, qos in self.subscriptions:
            self.client.subscribe(topic, qos=qos)
        self.publish_gateway()
        for hook in self.on_connect_hooks:
            hook()

    def _disconnected(self, reason: str) -> None:
        if self.connected and not self.stopping:
            log.warning("sink=mqtt event=disconnected reason=%s", reason)
        self.link_down()
        self.connected_event.clear()

    def _message(self, topic: str, payload: bytes) -> None:
        for hook in self.on_message_hooks:
            try:
                hook(topic, payload)
            except Exception:
                log.exception("sink=mqtt event=message_hook_failed topic=%s", topic)

    def _ack(self, mid: int) -> None:
        tracked = self._tracked.pop(mid, None)
        if tracked is not None:
            tracked()
            return
        row = self._pending.pop(mid, None)
        if row is None:
            return
        self.acked += 1
        if self.on_ack is not None:
            self.on_ack(row)

    # -- the outbox sender's transport (loop thread)

    async def wait_connected(self) -> None:
        await self.connected_event.wait()

    def capacity(self) -> int:
        return max(0, 2 * self.s.max_inflight - len(self._pending))

    def in_flight(self) -> set[int]:
        return {row.id for row in self._pending.values()}

    async def send(self, rows: list[Row], historical: list[bool]) -> None:
        for row, hist in zip(rows, historical, strict=True):
            msg = self.row_message(row, hist)
            if msg is None:
                if self.on_ack is not None:
                    self.on_ack(row)  # nothing to publish (e.g. Sparkplug: no value changed)
                continue
            info = self.client.publish(msg[0], msg[1], qos=self.data_qos)
            self.published += 1
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                # paho refused it (e.g. its queue is full): start again from the oldest row not in flight
                self.errors += 1
                log.warning("sink=mqtt event=publish_refused device=%s rc=%s", row.device, info.rc)
                self.resync()
                return
            if self.data_qos == 0:
                if self.on_ack is not None:
                    self.on_ack(row)  # QoS 0 has no acknowledgement: handed to a live link
                continue
            self._pending[info.mid] = row

    def publish_tracked(self, topic: str, payload: bytes, on_ack: Callable[[], None], retain: bool = False) -> bool:
        """Publish at QoS 1 on this connection and call `on_ack` at its PUBACK (another outbox sink's transport
        rides the same connection: collector/sinks/evidence.py). False when paho refused it."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.errors += 1
            log.warning("sink=mqtt event=publish_refused topic=%s rc=%s", topic, info.rc)
            return False
        self._tracked[info.mid] = on_ack
        return True

    def publish_json(self, topic: str, payload: dict[str, Any], retain: bool = False, qos: int = 1) -> None:
        info = self.client.publish(topic, orjson.dumps(payload), qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.errors += 1
            log.warning("sink=mqtt event=publish_failed topic=%s rc=%s", topic, info.rc)

    def publish_gateway(self) -> None:
        """The retained gateway status: `online` plus what `gateway_info` adds (outbox figures, counts)."""
        payload: dict[str, Any] = {"state": "online", "ts": iso(time.time())}
        if self.gateway_info is not None:
            payload.update(self.gateway_info())
        self.publish_json(self.gateway_topic, payload, retain=True)

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
        return {"connected": self.connected, "published": self.published, "acked": self.acked,
                "in_flight": len(self._pending), "errors": self.errors}
