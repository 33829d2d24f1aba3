"""The MQTT connection (paho-mqtt 2.x) that the data sink, the control publisher and the evidence sink share.

It connects, reconnects, subscribes and routes: every acknowledgement goes to the object that published the
message (`publish(..., owner=)`), every incoming message to the hooks. What is published is theirs:
collector/sinks/mqtt_data.py (the data), collector/sinks/control.py (statuses, gateway, indicators, monthly
records), collector/sinks/evidence.py (signed heads), collector/sinks/sparkplug.py (a Sparkplug node, which
also owns the session: its will and when the link is up).

paho runs its network loop in its own thread. Every callback from that thread is handed to the asyncio loop
with `call_soon_threadsafe` and nothing else: taking our own lock inside a paho callback while the loop
thread holds it and calls `publish()` would invert paho's lock order. Because `publish()` runs on the loop
thread and the ack is processed there too, the message id is always recorded before its ack is handled.

Topics and payloads: docs/mqtt.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from collector.model import Row
from collector.sinks.base import AckCallback
from collector.sinks.link import LinkState

log = logging.getLogger(__name__)



@dataclass
class MqttSettings:
    """What the sink needs to know, resolved from the config and the environment by the collector."""

    host: str
    port: int
    topic_root: str
    qos: int = 1
    client_id: str = "shopfloor-collector"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a printout or a log line
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    max_inflight: int = 100
    reconnect_max_delay: int = 10
    # MQTT 5 (the hub link): the broker says when it refuses a publish (PUBACK reason code >= 0x80, e.g. 0x87
    # Not authorized by the ACL), and a session that outlives a disconnect for `session_expiry` s keeps the
    # QoS 1 messages sent to the client meanwhile (the hub's receipts). MQTT 3.1.1 otherwise, clean sessions.
    mqtt5: bool = False
    session_expiry: int = 0
    log_name: str = "mqtt"  # the `sink=` of its log lines


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
    """The time format of every JSON topic: UTC, milliseconds, `Z`."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class AckOwner(Protocol):
    """Who published a tracked message: told its message id when the broker acknowledged it."""

    def acked(self, mid: int) -> None: ...


@runtime_checkable
class RefusalOwner(AckOwner, Protocol):
    """An owner that wants to know when an MQTT 5 broker refused its message (PUBACK reason >= 0x80): the
    message did not reach any subscriber. Owners without it are told `acked`, as with MQTT 3.1.1."""

    def refused(self, mid: int, reason: str) -> None: ...


class Session(Protocol):
    """Who owns the MQTT session's rules (a Sparkplug node): told at every connect, and decides when the link
    is up (`MqttConnection.ready()`); the default session is up at once."""

    def session_started(self) -> bool:
        """A new connection: True when the link is up now, False when the session calls `ready()` later."""


Will = tuple[str, bytes, int, bool]  # topic, payload, qos, retain


def _settled(info: mqtt.MQTTMessageInfo) -> bool:
    """Published, or never to be: paho's `is_published` raises when the publish failed (the link dropped while
    the closing hooks sent, under load), and a stop must not die of the link it is closing."""
    try:
        return bool(info.is_published())
    except (RuntimeError, ValueError):
        return True


class MqttConnection(LinkState):
    """One paho client: connects in the background, reconnects, and hands every callback over to the loop.

    Its link state (`connected`, `generation`) is what every sink riding it reports to its sender; a new
    connection raises `generation`, so each sender starts again from the oldest row its sink does not hold.
    """

    def __init__(self, settings: MqttSettings, will: Will | None = None) -> None:
        self.s = settings
        self.root = settings.topic_root.rstrip("/")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connected_event = asyncio.Event()
        LinkState.__init__(self)
        self.stopping = False
        self.session: Session | None = None
        self.on_connect_hooks: list[Callable[[], None]] = []  # called once the link is up, in order
        # called at stop() while connected, in order; each returns a message to wait for (or None)
        self.closing_hooks: list[Callable[[], mqtt.MQTTMessageInfo | None]] = []
        # (topic filter, qos) subscribed at every connect; messages go to every hook as (topic, payload)
        self.subscriptions: list[tuple[str, int]] = []
        self.on_message_hooks: list[Callable[[str, bytes], None]] = []
        self._owners: dict[int, AckOwner] = {}  # mid -> who published it, until its PUBACK
        self.errors = 0
        self.connect_error: str | None = None  # why the last connection attempt failed (None once connected)
        self._session_ended = asyncio.Event()
        self.client = self._make_client(will)

    # -- setup

    def _make_client(self, will: Will | None) -> mqtt.Client:
        if self.s.mqtt5:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.s.client_id, protocol=mqtt.MQTTv5)
        else:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.s.client_id, clean_session=True)
        if self.s.username:
            c.username_pw_set(self.s.username, self.s.password)
        if self.s.tls:
            c.tls_set(ca_certs=self.s.ca_file, certfile=self.s.cert_file, keyfile=self.s.key_file,
                      cert_reqs=ssl.CERT_REQUIRED)
        c.max_inflight_messages_set(self.s.max_inflight)
        c.reconnect_delay_set(min_delay=1, max_delay=self.s.reconnect_max_delay)
        if will is not None:
            topic, payload, qos, retain = will
            c.will_set(topic, payload, qos=qos, retain=retain)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    def set_will(self, will: Will) -> None:
        """The will the next connection is made with."""
        topic, payload, qos, retain = will
        self.client.will_set(topic, payload, qos=qos, retain=retain)

    async def start(self, wait: float = 5.0) -> None:
        """Connect in the background; wait up to `wait` s for the first connection, never fail on a dead broker."""
        self.loop = asyncio.get_running_loop()
        self._connect_async()
        self.client.loop_start()
        try:
            async with asyncio.timeout(wait):
                await self.connected_event.wait()
        except TimeoutError:
            if self.client.is_connected():  # e.g. a Sparkplug node waiting for its primary host
                log.info("sink=%s event=connected_not_ready host=%s port=%s", self.s.log_name, self.s.host,
                         self.s.port)
            else:
                log.warning("sink=%s event=not_connected host=%s port=%s (will keep trying) reason=%s",
                            self.s.log_name, self.s.host, self.s.port, self.connect_error or "no answer yet")

    async def stop(self, wait: float = 3.0) -> None:
        """The closing hooks' last messages (the gateway's offline status, NDEATH), up to `wait` s for them and
        every outstanding acknowledgement, then disconnect."""
        if self.connected:
            infos = [info for info in (hook() for hook in self.closing_hooks) if info is not None]
            deadline = time.monotonic() + wait
            while (self._owners or not all(_settled(i) for i in infos)) and time.monotonic() < deadline:
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
            self._hand_over(self._connect_refused, str(rc))
        else:
            self._hand_over(self._connect_succeeded)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        """paho calls this inside its `except OSError` around a connection attempt and passes no exception:
        the reason (an unknown CA, a hostname mismatch, a refused port) is only in `sys.exc_info()`."""
        self._hand_over(self._connect_failed, connect_failure_reason(sys.exc_info()[1]))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self._hand_over(self._disconnected, str(rc))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any = None) -> None:
        if getattr(rc, "is_failure", False):  # MQTT 5: the broker refused it (e.g. 0x87 Not authorized)
            self._hand_over(self._refused, mid, str(rc))
        else:
            self._hand_over(self._ack, mid)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._hand_over(self._message, msg.topic, bytes(msg.payload))

    # -- loop thread

    def _connect_failed(self, reason: str) -> None:
        """Log the reason when it is new (the first failure, or another one than before): paho retries every
        few seconds and the same line each time would flood the journal."""
        if reason != self.connect_error:
            log.warning("sink=%s event=connect_failed host=%s port=%s reason=%s", self.s.log_name, self.s.host,
                        self.s.port, reason)
        self.connect_error = reason

    def _connect_refused(self, reason: str) -> None:
        """The broker answered and refused (CONNACK): logged when new, like a failed attempt (paho retries)."""
        if reason != self.connect_error:
            log.warning("sink=%s event=connect_refused host=%s port=%s reason=%s (check the user name and "
                        "password)", self.s.log_name, self.s.host, self.s.port, reason)
        self.connect_error = reason

    def _connect_succeeded(self) -> None:
        self.connect_error = None
        if self.session is None or self.session.session_started():
            self.ready()

    def ready(self) -> None:
        """The link is up: senders start (the backlog as historical), subscriptions, then the hooks."""
        log.info("sink=%s event=connected host=%s port=%s", self.s.log_name, self.s.host, self.s.port)
        self.link_up()
        self.connected_event.set()
        for topic, qos in self.subscriptions:
            self.client.subscribe(topic, qos=qos)
        for hook in self.on_connect_hooks:
            hook()

    def link_lost(self) -> None:
        """The session ended without a disconnect yet (a Sparkplug primary host went offline)."""
        self.link_down()
        self.connected_event.clear()

    def _disconnected(self, reason: str) -> None:
        if self.connected and not self.stopping:
            log.warning("sink=%s event=disconnected reason=%s", self.s.log_name, reason)
        self.link_lost()
        self._session_ended.set()

    async def new_session(self, last: mqtt.MQTTMessageInfo | None) -> None:
        """`last` acknowledged, DISCONNECT sent (so the broker drops the will), then connect again. Each step
        is bounded: a dead broker must not stall this."""
        deadline = time.monotonic() + 3.0
        while last is not None and not last.is_published() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._session_ended.clear()
        self.client.disconnect()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3.0):
                await self._session_ended.wait()
        await asyncio.to_thread(self.client.loop_stop)
        if self.stopping:
            return
        self._connect_async()
        self.client.loop_start()

    def _connect_async(self) -> None:
        if not self.s.mqtt5:
            self.client.connect_async(self.s.host, self.s.port, keepalive=self.s.keepalive)
            return
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.s.session_expiry
        self.client.connect_async(self.s.host, self.s.port, keepalive=self.s.keepalive,
                                  clean_start=self.s.session_expiry == 0, properties=props)

    def _message(self, topic: str, payload: bytes) -> None:
        for hook in self.on_message_hooks:
            try:
                hook(topic, payload)
            except Exception:
                log.exception("sink=%s event=message_hook_failed topic=%s", self.s.log_name, topic)

    def _ack(self, mid: int) -> None:
        owner = self._owners.pop(mid, None)
        if owner is not None:
            owner.acked(mid)

    def _refused(self, mid: int, reason: str) -> None:
        owner = self._owners.pop(mid, None)
        if isinstance(owner, RefusalOwner):
            owner.refused(mid, reason)
        elif owner is not None:
            owner.acked(mid)

    # -- publishing (loop thread)

    async def wait_connected(self) -> None:
        await self.connected_event.wait()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                owner: AckOwner | None = None) -> int | None:
        """Hand a message to paho; its PUBACK goes to `owner.acked(mid)` (QoS 1). Returns the message id, or
        None when paho refused it (e.g. its queue is full): logged and counted."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.errors += 1
            log.warning("sink=%s event=publish_refused topic=%s rc=%s", self.s.log_name, topic, info.rc)
            return None
        if owner is not None and qos > 0:
            self._owners[info.mid] = owner
        return int(info.mid)


class OnConnection:
    """A sink that sends over a shared `MqttConnection` (JSON data, Sparkplug, evidence): its link state is the
    connection's, so a reconnect is seen by every sink that rides it."""

    conn: MqttConnection

    @property
    def connected(self) -> bool:
        return self.conn.connected

    @property
    def generation(self) -> int:
        return self.conn.generation

    async def wait_connected(self) -> None:
        await self.conn.wait_connected()


class RowPublisher(OnConnection):
    """A sink that publishes each outbox row as one QoS 1 message on a shared connection and holds it until its
    PUBACK (the evidence and hub sinks): a window of rows in flight, message ids mapped back to rows."""

    WINDOW = 8
    retain = False

    def __init__(self, conn: MqttConnection, name: str, on_ack: AckCallback | None = None) -> None:
        self.conn = conn
        self.name = name
        self.on_ack = on_ack
        self._pending: dict[int, Row] = {}  # row id -> row, until its PUBACK
        self._mids: dict[int, Row] = {}  # message id -> row

    def row_topic(self, row: Row) -> str:
        raise NotImplementedError

    def in_flight(self) -> set[int]:
        return set(self._pending)

    def capacity(self) -> int:
        return max(0, self.WINDOW - len(self._pending))

    async def send(self, rows: list[Row], historical: list[bool]) -> None:
        for row in rows:
            mid = self.conn.publish(self.row_topic(row), row.payload, qos=1, retain=self.retain, owner=self)
            if mid is None:
                self.conn.resync()
                return
            self._pending[row.id] = row
            self._mids[mid] = row

    def acked(self, mid: int) -> None:
        row = self._mids.pop(mid, None)
        if row is None:
            return
        self._pending.pop(row.id, None)
        if self.on_ack is not None:
            self.on_ack(row)
