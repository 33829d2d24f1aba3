"""The hub's lean MQTT 5 session (collector/hub/mqtt5.py) against a real mosquitto, with paho as the independent
client on the other side: the enterprises' publisher and the receipts' reader. Plus its codec on packets built
byte by byte with `struct` (an encoder that is not ours)."""

from __future__ import annotations

import logging
import signal
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.hub.mqtt5 import (
    Message,
    Session,
    Settings,
    connect_packet,
    parse_connack,
    parse_publish,
    split_packets,
)
from tests.support.broker import MosquittoProcess, free_port

FILTER = "$share/hub/cityhub/+/evidence/#"


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --- the codec, on bytes laid out by hand


def _publish_v5(topic: str, payload: bytes, pid: int, props: bytes) -> bytes:
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + struct.pack("!H", pid) + bytes((len(props),)) + props + payload
    assert len(body) < 128
    return bytes((0x32, len(body))) + body


def test_a_publish_with_properties_is_read_at_every_split_of_the_stream() -> None:
    """Topic, packet id and payload of PUBLISH packets whose properties (payload format, message expiry, a user
    property, a subscription identifier) are skipped, however the stream is cut into reads."""
    props = (b"\x01\x01" + b"\x02" + struct.pack("!I", 3600) + b"\x26" + struct.pack("!H", 2) + b"k1" +
             struct.pack("!H", 2) + b"v1" + b"\x0b\x07")
    stream = (_publish_v5("cityhub/A/evidence", b'{"seq":1}', 7, props) + b"\x40\x02\x00\x09" +
              _publish_v5("cityhub/B/evidence/ws", b'{"seq":2}', 8, b""))
    for cut in range(len(stream) + 1):
        buf = bytearray(stream[:cut])
        got, used = split_packets(buf)
        del buf[:used]
        buf += stream[cut:]
        more, used2 = split_packets(buf)
        packets = got + more
        assert used2 == len(buf), cut
        assert [p[0] for p in packets] == [3, 4, 3]
        first = parse_publish(packets[0][1], packets[0][2], 1)
        last = parse_publish(packets[2][1], packets[2][2], 1)
        assert (first.topic, first.pid, first.qos, first.payload) == ("cityhub/A/evidence", 7, 1, b'{"seq":1}')
        assert (last.topic, last.pid, last.payload) == ("cityhub/B/evidence/ws", 8, b'{"seq":2}')
        assert struct.unpack("!H", packets[1][2])[0] == 9


def test_connect_and_connack_fields() -> None:
    pkt = connect_packet("hub-1", username="hub", password="pw", keepalive=30, session_expiry=600,
                         receive_maximum=800, clean_start=False)
    assert pkt[0] == 0x10 and pkt[1] == len(pkt) - 2 and pkt[2:8] == b"\x00\x04MQTT"
    assert pkt[8] == 5 and pkt[9] == 0xC0  # v5; user name and password, clean start off
    assert struct.unpack("!H", pkt[10:12])[0] == 30
    assert pkt[12:13] == b"\x08" and pkt[13:18] == b"\x11" + struct.pack("!I", 600)
    assert pkt[18:21] == b"\x21" + struct.pack("!H", 800)
    # CONNACK: session present, success, Receive Maximum 20, a reason string and a user property skipped
    props = (b"\x21\x00\x14" + b"\x1f" + struct.pack("!H", 2) + b"ok" + b"\x26" + struct.pack("!H", 1) + b"a" +
             struct.pack("!H", 1) + b"b" + b"\x13\x00\x3c")
    present, reason, got = parse_connack(b"\x01\x00" + bytes((len(props),)) + props)
    assert (present, reason, got[0x21], got[0x13]) == (True, 0, 20, 60)


# --- against mosquitto


class Peer:
    """paho on the enterprise side: publishes evidence (with MQTT 5 properties) and reads receipts."""

    def __init__(self, port: int) -> None:
        self.receipts: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="peer", protocol=mqtt.MQTTv5)
        c.on_message = lambda _c, _u, m: self.receipts.append((m.topic, bytes(m.payload)))
        c.on_subscribe = lambda *_a: self.subscribed.set()
        c.on_connect = lambda cl, *_a: cl.subscribe("cityhub/+/receipt", qos=1)
        c.reconnect_delay_set(1, 2)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
        c.loop_start()
        assert self.subscribed.wait(10)
        self.c = c

    def publish(self, n: int, start: int = 0) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = ("origin", "peer")
        props.MessageExpiryInterval = 3600
        for i in range(start, start + n):
            self.c.publish(f"cityhub/E{i % 3}/evidence", f'{{"i":{i}}}'.encode(), qos=1, properties=props)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def session(port: int, *, keepalive: int = 30, password: str | None = None, username: str | None = None,
            ctx: ssl.SSLContext | None = None, receive_maximum: int = 800) -> Session:
    return Session(Settings(host="127.0.0.1", port=port, client_id="hub-test", username=username,
                            password=password, topic_filter=FILTER, keepalive=keepalive, session_expiry=3600,
                            receive_maximum=receive_maximum, ssl_context=ctx, reconnect_min=0.2,
                            reconnect_max=0.5))


def drain(s: Session, want: int, timeout: float = 15.0) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += s.inbox.take(1000, 0.1)
    assert len(got) == want, f"{len(got)} of {want} messages"
    return got


def answer(s: Session, msgs: list[Message]) -> None:
    """A receipt per message on its sender's receipt topic, then the acks: what the hub's worker does."""
    s.send([(m.topic.replace("/evidence", "/receipt"), b"r" + m.payload) for m in msgs], msgs)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    # a Receive Maximum of 5 towards the hub: most receipts of a batch wait for the window
    b = MosquittoProcess(free_port(), persistence_dir=tmp_path, extra=["max_inflight_messages 5",
                                                                        "max_queued_messages 10000"])
    b.start()
    yield b
    b.stop()


def test_messages_in_order_and_receipts_through_a_window_of_five(broker: MosquittoProcess) -> None:
    s = session(broker.port)
    s.start()
    peer = Peer(broker.port)
    try:
        assert s.connected.wait(10)
        peer.publish(600)
        msgs = drain(s, 600)
        assert [m.payload for m in msgs] == [f'{{"i":{i}}}'.encode() for i in range(600)]
        assert {m.qos for m in msgs} == {1} and all(m.pid for m in msgs)
        for i in range(0, 600, 200):
            answer(s, msgs[i:i + 200])
        wait_for(lambda: len(peer.receipts) == 600, what="600 receipts")
        assert s.most_inflight == 5  # the broker's Receive Maximum (from its CONNACK), reached, never exceeded
        assert [p for _, p in peer.receipts] == [b"r" + m.payload for m in msgs]  # in order
        assert [t for t, _ in peer.receipts[:3]] == ["cityhub/E0/receipt", "cityhub/E1/receipt",
                                                     "cityhub/E2/receipt"]
        wait_for(lambda: s.backlog == 0, what="every receipt acknowledged")
        assert s.sent_receipts == 600
    finally:
        s.stop()
        peer.close()


def test_what_was_not_acknowledged_comes_again_after_a_broker_restart(broker: MosquittoProcess) -> None:
    """10 messages taken but not acknowledged when the broker restarts: they come again on the new connection
    (the session is kept). Acknowledgements of the old connection's copies are not sent on the new one: the new
    copies, left unacknowledged, come a third time after another restart; acknowledged, never again. A receipt
    queued while the broker was down goes out once it is back."""
    s = session(broker.port)
    s.start()
    peer = Peer(broker.port)

    def restart(connection: int) -> None:
        time.sleep(0.5)  # what was sent reaches the broker before it saves its state at stop
        broker.stop()
        wait_for(lambda: not s.connected.is_set(), what="the session to notice")
        broker.start()
        wait_for(lambda: s.connected.is_set() and s.connection == connection, what=f"connection {connection}")

    try:
        assert s.connected.wait(10)
        peer.publish(10)
        first = drain(s, 10)
        assert {m.connection for m in first} == {1}
        broker.stop()
        wait_for(lambda: not s.connected.is_set(), what="the session to notice")
        s.send([("cityhub/E0/receipt", b"while-down")], [])
        broker.start()
        assert wait_for(lambda: s.connected.is_set() and s.connection == 2, what="a reconnect")
        again = drain(s, 10)
        assert [m.payload for m in again] == [m.payload for m in first]
        assert {m.connection for m in again} == {2}
        wait_for(lambda: any(p == b"while-down" for _, p in peer.receipts), what="the receipt queued while down")
        s.send([], first)  # connection 1's: not sent
        restart(3)
        third = drain(s, 10)
        assert [m.payload for m in third] == [m.payload for m in first]
        s.send([], third)
        wait_for(lambda: s.backlog == 0, what="the receipt acknowledged")
        restart(4)
        assert s.inbox.take(100, 1.5) == []  # all acknowledged: nothing comes a fourth time
    finally:
        s.stop()
        peer.close()


def test_a_silent_broker_is_noticed_by_the_keep_alive(broker: MosquittoProcess,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Idle for three keep-alives, the session stays up (its PINGREQs keep mosquitto from closing it); a broker
    that stops answering without closing the socket (SIGSTOP) is noticed after 1.5 keep-alives and left."""
    caplog.set_level(logging.INFO, logger="collector.hub")
    s = session(broker.port, keepalive=1)
    s.start()
    try:
        assert s.connected.wait(10)
        time.sleep(3.2)
        assert s.connected.is_set() and s.connection == 1
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: not s.connected.is_set(), timeout=6, what="the silence noticed")
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        assert any("nothing from the broker" in r.getMessage() for r in caplog.records)
        assert wait_for(lambda: s.connected.is_set() and s.connection >= 2, what="a reconnect")
    finally:
        s.stop()


def test_a_refused_password_is_said_with_the_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.hubsupport import password_file

    pw = password_file(tmp_path / "passwd", {"hub": "right"})
    b = MosquittoProcess(free_port(), extra=["allow_anonymous false", f"password_file {pw}"])
    b.start()
    caplog.set_level(logging.INFO, logger="collector.hub")
    s = session(b.port, username="hub", password="wrong")
    s.start()
    try:
        line = wait_for(lambda: [r.getMessage() for r in caplog.records if "refused the hub" in r.getMessage()],
                        what="the refusal logged")
        assert "not authorized" in line[0] and "check mqtt.username and the password" in line[0]  # mosquitto: 0x87
        assert not s.connected.is_set()
    finally:
        s.stop()
        b.stop()


def test_tls_with_the_configured_ca_and_a_wrong_ca_refused(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from tests.test_mqtt_tls import make_ca, make_server_cert

    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca("hub CA", pki / "ca.pem")
    make_ca("someone else", pki / "other.pem")
    make_server_cert(ca, ["hub.test"], pki / "server.pem", pki / "server.key")
    b = MosquittoProcess(free_port(), listener_options=[
        f"cafile {pki / 'ca.pem'}", f"certfile {pki / 'server.pem'}", f"keyfile {pki / 'server.key'}"])
    b.start()
    caplog.set_level(logging.INFO, logger="collector.hub")
    good = session(b.port, ctx=ssl.create_default_context(cafile=str(pki / "ca.pem")))
    bad = Session(Settings(host="127.0.0.1", port=b.port, client_id="hub-bad", username=None, password=None,
                           topic_filter=FILTER, ssl_context=ssl.create_default_context(cafile=str(pki / "other.pem")),
                           reconnect_min=0.2, reconnect_max=0.5))
    good.start()
    bad.start()
    try:
        assert good.connected.wait(10)
        wait_for(lambda: any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() or "certificate verify failed" in
                             r.getMessage() for r in caplog.records), what="the wrong CA refused")
        assert not bad.connected.is_set()
    finally:
        good.stop()
        bad.stop()
        b.stop()
