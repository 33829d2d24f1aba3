"""A lean MQTT 5 session for the hub: one shared subscription at QoS 1 with manual acks, QoS 1 receipts out.

Why not paho (which the collector's own sinks use): at a city's month close the hub receives thousands of signed
records a second, and each costs paho a PUBLISH decode with a full `Properties` object, a PUBACK, a receipt
PUBLISH and the receipt's PUBACK, one socket call each, in a network thread that competes with the ingest worker
for the GIL. bench/hub.py measured paho at ~250 µs of the hub's ~440 µs of CPU per record (direct ingest without
MQTT: ~185 µs), so the broker link, not verification, capped a process below 2,000 records/s. This session does
only what the hub needs:

- it parses a whole socket read at once and hands the PUBLISH packets to the worker as one list (their
  properties are skipped, never decoded: the hub reads topic and payload only);
- the worker sends a batch's receipts and PUBACKs in one write;
- receipts respect the broker's Receive Maximum: beyond it they wait here, in order, and go out as PUBACKs free
  the window; unacknowledged receipts are sent again (DUP) after a reconnect, so none is lost while the process
  lives;
- all socket I/O runs on one asyncio loop in its own thread (TLS included), never from two threads at once.

What is received on a connection is acknowledged only on that connection: a PUBACK for a message of an earlier
connection is dropped (its packet id may now name another message), and the broker redelivers that message, which
the ingest stores once. tests/test_hub_mqtt5.py checks the codec against paho's own encoder and the session
against a real mosquitto.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

log = logging.getLogger("collector.hub")

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"

# CONNACK reason codes an operator can act on (MQTT 5, 3.2.2.2)
REASONS = {0x80: "unspecified error", 0x84: "unsupported protocol version", 0x85: "client id not valid",
           0x86: "bad user name or password", 0x87: "not authorized", 0x88: "server unavailable",
           0x89: "server busy", 0x8A: "banned", 0x8C: "bad authentication method", 0x95: "packet too large",
           0x97: "quota exceeded", 0x9F: "connection rate exceeded", 0x8E: "session taken over",
           0x8B: "server shutting down", 0x8D: "keep alive timeout", 0x93: "receive maximum exceeded"}


class ProtocolError(Exception):
    """The broker sent something this session cannot read: the connection is dropped and made again."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def connect_packet(client_id: str, *, username: str | None, password: str | None, keepalive: int,
                   session_expiry: int, receive_maximum: int, clean_start: bool) -> bytes:
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0) | (0x02 if clean_start
                                                                                            else 0)
    props = b"\x11" + struct.pack("!I", session_expiry) + b"\x21" + struct.pack("!H", receive_maximum)
    body = _utf8("MQTT") + bytes((5, flags)) + struct.pack("!H", keepalive) + varint(len(props)) + props
    body += _utf8(client_id)
    if username is not None:
        body += _utf8(username)
    if password is not None:
        body += _utf8(password)
    return _packet(CONNECT << 4, body)


def subscribe_packet(pid: int, topic_filter: str, qos: int) -> bytes:
    return _packet(SUBSCRIBE << 4 | 0x02, struct.pack("!H", pid) + b"\x00" + _utf8(topic_filter) + bytes((qos,)))


def publish_packet(topic: bytes, payload: bytes, pid: int, *, dup: bool = False) -> bytes:
    """A QoS 1 PUBLISH without properties. `topic` is UTF-8 already (receipts go to a few thousand topics)."""
    body_len = 2 + len(topic) + 2 + 1 + len(payload)
    return b"".join((bytes((PUBLISH << 4 | 0x02 | (0x08 if dup else 0),)), varint(body_len),
                     struct.pack("!H", len(topic)), topic, struct.pack("!HB", pid, 0), payload))


def puback_packet(pid: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", pid)  # reason Success and no properties may be left out (3.4.2.1)


def _read_varint(buf: bytes | bytearray, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    for _ in range(4):
        if i >= len(buf):
            raise IndexError
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
    raise ProtocolError("a variable byte integer longer than 4 bytes")


@dataclass(slots=True)
class Message:
    """A PUBLISH the broker delivered: `pid` is None at QoS 0; `connection` numbers the connection it came on."""

    topic: str
    payload: bytes
    qos: int
    pid: int | None
    connection: int


def split_packets(buf: bytearray) -> tuple[list[tuple[int, int, bytes]], int]:
    """The whole packets at the front of `buf` as (type, flags, body), and how many bytes they took."""
    out: list[tuple[int, int, bytes]] = []
    i, n = 0, len(buf)
    while i + 2 <= n:
        try:
            length, start = _read_varint(buf, i + 1)
        except IndexError:
            break
        end = start + length
        if end > n:
            break
        first = buf[i]
        out.append((first >> 4, first & 0x0F, bytes(buf[start:end])))
        i = end
    return out, i


def parse_publish(flags: int, body: bytes, connection: int) -> Message:
    (tlen,) = struct.unpack_from("!H", body, 0)
    topic = body[2:2 + tlen].decode()
    i = 2 + tlen
    qos = (flags >> 1) & 0x03
    pid = None
    if qos:
        (pid,) = struct.unpack_from("!H", body, i)
        i += 2
    plen, i = _read_varint(body, i)
    return Message(topic, body[i + plen:], qos, pid, connection)


def parse_connack(body: bytes) -> tuple[bool, int, dict[int, int]]:
    """Session present, reason code, and the integer properties this session uses (Receive Maximum 0x21,
    Server Keep Alive 0x13, Maximum Packet Size 0x27)."""
    if len(body) < 2:
        raise ProtocolError("CONNACK too short")
    present, reason = bool(body[0] & 0x01), body[1]
    props: dict[int, int] = {}
    if len(body) > 2:
        plen, i = _read_varint(body, 2)
        end = i + plen
        while i < end:
            pid = body[i]
            i += 1
            if pid in (0x21, 0x13, 0x22, 0x23):  # two-byte integers
                props[pid] = struct.unpack_from("!H", body, i)[0]
                i += 2
            elif pid in (0x11, 0x27):  # four-byte integers
                props[pid] = struct.unpack_from("!I", body, i)[0]
                i += 4
            elif pid in (0x24, 0x25, 0x28, 0x29, 0x2A):  # bytes
                props[pid] = body[i]
                i += 1
            elif pid in (0x12, 0x1A, 0x1C, 0x1F, 0x15) or pid == 0x16:  # strings
                (slen,) = struct.unpack_from("!H", body, i)
                i += 2 + slen
            elif pid == 0x26:  # user property: a string pair
                for _ in range(2):
                    (slen,) = struct.unpack_from("!H", body, i)
                    i += 2 + slen
            else:
                raise ProtocolError(f"CONNACK property 0x{pid:02x} is not MQTT 5")
    return present, reason, props


class Inbox:
    """Messages for the worker, put a socket read at a time and taken a batch at a time (one lock round each)."""

    def __init__(self) -> None:
        self._items: deque[Message] = deque()
        self._cond = threading.Condition()

    def put_many(self, msgs: list[Message]) -> None:
        with self._cond:
            self._items.extend(msgs)
            self._cond.notify()

    def take(self, most: int, timeout: float) -> list[Message]:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            items = self._items
            return [items.popleft() for _ in range(min(most, len(items)))]


@dataclass
class Settings:
    host: str
    port: int
    client_id: str
    username: str | None
    password: str | None
    topic_filter: str
    keepalive: int = 30
    session_expiry: int = 7 * 86400
    receive_maximum: int = 800
    ssl_context: ssl.SSLContext | None = None
    reconnect_min: float = 1.0
    reconnect_max: float = 10.0


class _Link(asyncio.Protocol):
    def __init__(self, session: Session) -> None:
        self.session = session
        self.buf = bytearray()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        packets, used = split_packets(self.buf)
        if used:
            del self.buf[:used]
        try:
            self.session._on_packets(packets)
        except (ProtocolError, struct.error, UnicodeDecodeError, IndexError) as exc:
            log.error("unreadable packet from the broker (%s); reconnecting", exc)
            if self.session.transport is not None:
                self.session.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


class Session:
    """The hub's broker link, in a thread of its own. `inbox` fills with delivered messages; `send` gives back a
    batch's receipts and acknowledgements from any thread."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.inbox = Inbox()
        self.connected = threading.Event()
        self.connection = 0  # numbers connections; a message's acknowledgement goes only on its own
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="hub-mqtt", daemon=True)
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._next_pid = 0
        self._window = 65535  # the broker's Receive Maximum, from its CONNACK
        self._inflight: OrderedDict[int, tuple[bytes, bytes]] = OrderedDict()  # pid → (topic, payload)
        self._pending: deque[tuple[bytes, bytes]] = deque()  # receipts waiting for the window
        self._connack: asyncio.Future[tuple[bool, int, dict[int, int]]] | None = None
        self._suback: asyncio.Future[bytes] | None = None
        self._live = False  # CONNACK accepted on the current connection: receipts may go out
        self._sub_pid = 0
        self._last_in = self._last_out = 0.0
        self.sent_receipts = 0
        self.most_inflight = 0  # the most receipts unacknowledged at once: never above the broker's window

    # --- from other threads
    def start(self) -> None:
        self._thread.start()

    def send(self, receipts: list[tuple[str, bytes]], acks: list[Message]) -> None:
        """Queue receipts (QoS 1) and acknowledge messages, in one write once the loop takes it."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._send, [(t.encode(), p) for t, p in receipts], acks)
        except RuntimeError:  # the loop closed meanwhile: stopping
            pass

    def stop(self, timeout: float = 5.0) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._begin_stop)
            except RuntimeError:
                pass
        self._thread.join(timeout)

    @property
    def backlog(self) -> int:
        """Receipts not yet acknowledged by the broker (in flight or waiting for the window)."""
        return len(self._inflight) + len(self._pending)

    # --- on the loop
    def _begin_stop(self) -> None:
        self._stopping = True
        if self.transport is not None and not self.transport.is_closing():
            self._write(_DISCONNECT)
            self.transport.close()
        if self._stopped is not None:
            self._stopped.set()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        delay = self.s.reconnect_min
        while not self._stopping:
            try:
                ok = await self._connection()
            except (TimeoutError, OSError, ProtocolError, ssl.SSLError) as exc:
                log.warning("broker %s:%s: %s; reconnecting in %.0f s", self.s.host, self.s.port,
                            exc or type(exc).__name__, delay)
                ok = False
            finally:
                self.connected.clear()
                self._live = False
                self.transport = None
            if self._stopping:
                break
            delay = self.s.reconnect_min if ok else min(delay * 2, self.s.reconnect_max)
            try:
                await asyncio.wait_for(self._stopped.wait(), delay)
            except TimeoutError:
                pass

    async def _connection(self) -> bool:
        """One connection, from CONNECT to its loss. True when it got as far as subscribing."""
        loop = asyncio.get_running_loop()
        transport, link = await asyncio.wait_for(loop.create_connection(
            lambda: _Link(self), self.s.host, self.s.port, ssl=self.s.ssl_context,
            server_hostname=self.s.host if self.s.ssl_context is not None else None), 10.0)
        self.transport = transport
        self._last_in = self._last_out = self._now()
        self.connection += 1
        self._connack = loop.create_future()
        transport.write(connect_packet(self.s.client_id, username=self.s.username, password=self.s.password,
                                       keepalive=self.s.keepalive, session_expiry=self.s.session_expiry,
                                       receive_maximum=self.s.receive_maximum, clean_start=False))
        try:
            present, reason, props = await asyncio.wait_for(asyncio.shield(self._connack), 10.0)
        except TimeoutError:
            transport.close()
            raise TimeoutError("no CONNACK within 10 s") from None
        if reason >= 0x80:
            what = REASONS.get(reason, f"reason 0x{reason:02x}")
            log.error("broker %s:%s refused the hub: %s (check mqtt.username and the password)", self.s.host,
                      self.s.port, what)
            transport.close()
            return False
        self._live = True
        self._window = props.get(0x21, 65535) or 65535
        keepalive = props.get(0x13, self.s.keepalive)
        self._resend(present)
        self._sub_pid = 0
        self._sub_pid = self._pid()
        self._suback = loop.create_future()
        self._write(subscribe_packet(self._sub_pid, self.s.topic_filter, 1))
        try:
            codes = await asyncio.wait_for(asyncio.shield(self._suback), 10.0)
        except TimeoutError:
            transport.close()
            raise TimeoutError("no SUBACK within 10 s") from None
        if not codes or codes[0] >= 0x80:
            log.error("broker %s:%s refused the subscription %s (reason 0x%02x): the ACL must let user %s read "
                      "it", self.s.host, self.s.port, self.s.topic_filter, codes[0] if codes else 0,
                      self.s.username)
            transport.close()
            return False
        self.connected.set()
        log.info("connected to %s:%s, subscribed %s (session present: %s)", self.s.host, self.s.port,
                 self.s.topic_filter, present)
        pinger = asyncio.create_task(self._keepalive(keepalive))
        try:
            await link.lost
        finally:
            pinger.cancel()
        if not self._stopping:
            log.warning("broker connection lost; reconnecting")
        return True

    async def _keepalive(self, keepalive: int) -> None:
        """A PINGREQ when nothing was sent for most of the keep-alive; the link is dropped when nothing was
        received for 1.5 keep-alives (the broker is gone without a FIN)."""
        if keepalive <= 0:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(keepalive / 4, 0.25))
            now = loop.time()
            if now - self._last_in >= 1.5 * keepalive:
                log.warning("nothing from the broker for %.0f s; reconnecting", now - self._last_in)
                if self.transport is not None:
                    self.transport.close()
                return
            if now - self._last_out >= 0.5 * keepalive:
                self._write(_PINGREQ)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self._last_out = self._now()

    def _pid(self) -> int:
        for _ in range(65535):
            self._next_pid = self._next_pid % 65535 + 1
            if self._next_pid not in self._inflight and self._next_pid != self._sub_pid:
                return self._next_pid
        raise ProtocolError("no free packet id")  # cannot happen: the window is at most 65,535 - 1

    def _resend(self, session_present: bool) -> None:
        """Receipts the broker had not acknowledged: again with their ids on a kept session (DUP), else anew."""
        if session_present:
            if self._inflight:
                self._write(b"".join(publish_packet(t, p, pid, dup=True) for pid, (t, p) in self._inflight.items()))
        else:
            self._pending.extendleft(reversed(list(self._inflight.values())))
            self._inflight.clear()
        self._flush(self._fill())

    def _send(self, receipts: list[tuple[bytes, bytes]], acks: list[Message]) -> None:
        self._pending.extend(receipts)
        parts = self._fill()
        conn = self.connection
        if self._live:
            parts.extend(puback_packet(m.pid) for m in acks if m.pid is not None and m.connection == conn)
        self._flush(parts)

    def _flush(self, parts: list[bytes]) -> None:
        if parts:
            self._write(b"".join(parts))

    def _fill(self) -> list[bytes]:
        """Receipts from the waiting queue into the broker's window (none before a CONNACK accepted us)."""
        parts: list[bytes] = []
        if not self._live:
            return parts
        while self._pending and len(self._inflight) < self._window:
            topic, payload = self._pending.popleft()
            pid = self._pid()
            self._inflight[pid] = (topic, payload)
            parts.append(publish_packet(topic, payload, pid))
        self.most_inflight = max(self.most_inflight, len(self._inflight))
        return parts

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def _on_packets(self, packets: list[tuple[int, int, bytes]]) -> None:
        if not packets:
            return
        self._last_in = self._now()
        conn = self.connection
        msgs: list[Message] = []
        freed = False
        for kind, flags, body in packets:
            if kind == PUBLISH:
                msgs.append(parse_publish(flags, body, conn))
            elif kind == PUBACK:
                (pid,) = struct.unpack_from("!H", body, 0)
                if self._inflight.pop(pid, None) is not None:
                    freed = True
                    self.sent_receipts += 1
                if len(body) > 2 and body[2] >= 0x80:
                    log.warning("the broker refused a receipt (reason 0x%02x): the ACL must let user %s "
                                "publish to {prefix}/+/receipt", body[2], self.s.username)
            elif kind == CONNACK:
                if self._connack is not None and not self._connack.done():
                    self._connack.set_result(parse_connack(body))
            elif kind == SUBACK:
                if self._suback is not None and not self._suback.done():
                    plen, i = _read_varint(body, 2)
                    self._suback.set_result(body[i + plen:])
            elif kind == DISCONNECT:
                reason = body[0] if body else 0
                log.warning("the broker closed the connection: %s", REASONS.get(reason, f"reason 0x{reason:02x}"))
            elif kind == PINGRESP:
                pass
            else:
                raise ProtocolError(f"unexpected packet type {kind}")
        if msgs:
            self.inbox.put_many(msgs)
        if freed and self._pending:
            self._flush(self._fill())
