"""Sparkplug B edge node (Sparkplug 3.0): `mqtt.format: sparkplug`. Topics, rules and examples: docs/sparkplug.md.

It rides the MQTT connection (collector/sinks/mqtt.py) as its session: it gives the will (NDEATH) and says
when the link is up (after the births, and with a primary host only once it is online). The JSON statuses and
the indicator snapshot are still the control publisher's (collector/sinks/control.py).

Its own outbox queue (`sparkplug`) holds each batch encoded by `encode` from the batch itself: a Sparkplug
payload naming every metric with its datatype, value, timestamp, unit and quality. The DDATA is built from it
in `send`, because `seq` counts the messages actually published on the current session and "only what changed"
depends on what this session already sent. A backlog of the JSON format stays in its own queue (`mqtt`) and is
delivered when that format is configured again.

Session rules (loop thread only):
- bdSeq: the will of every connection is an NDEATH carrying only bdSeq; the next value (0..255, wrapping) is
  persisted at each connect so it rises across restarts; NBIRTH repeats the bdSeq of its connection's will.
- seq: 0 on NBIRTH, then +1 (mod 256) on every DBIRTH, DDATA and DDEATH.
- births name every metric with alias and datatype; DDATA carries aliases only, and live rows only the metrics
  whose value or quality changed since the last message of this session; backlog rows carry all their metrics
  with `is_historical`.
- DBIRTH when a device is online or degraded, DDEATH when it goes offline; a backlog row of an offline device
  is sent between a DBIRTH and a DDEATH so the host never sees data of a dead device.
- NCMD `Node Control/Rebirth` = true republishes NBIRTH and the DBIRTHs with the same bdSeq.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from collector.model import Batch, DeviceState, Reading, Row
from collector.sinks import sparkplug_b_pb2 as pb
from collector.sinks.base import AckCallback, DeviceStatus, Feeds
from collector.sinks.mqtt import MqttConnection, OnConnection, Will

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
BDSEQ_ALIAS = 0
REBIRTH_ALIAS = 1
FIRST_DEVICE_ALIAS = 2

# Sparkplug datatypes used here (specification, "Datatypes"; the numbers are listed in sparkplug_b.proto)
INT64, UINT64, DOUBLE, BOOLEAN, STRING = 4, 8, 10, 11, 12
ONLINE_STATES = (DeviceState.ONLINE, DeviceState.DEGRADED)


@dataclass
class SparkplugSettings:
    group_id: str
    edge_node_id: str
    state_file: Path  # where the next bdSeq is kept across restarts
    primary_host_id: str | None = None  # wait for its STATE online before NBIRTH (Sparkplug 3.0)


@dataclass
class _Value:
    value: Any
    unit: str | None
    quality: str
    ts: int | None  # ms


def now_ms() -> int:
    return int(time.time() * 1000)


def datatype_of(value: Any) -> int:
    """The Sparkplug datatype a Python value is declared with in a birth."""
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INT64 if -(2**63) <= value < 2**63 else UINT64
    if isinstance(value, float) or value is None:
        return DOUBLE  # None: nothing known yet; a later value of another kind triggers a new DBIRTH
    return STRING


def fits(datatype: int, value: Any) -> bool:
    """Can `value` travel as `datatype` without changing its meaning?"""
    if value is None:
        return True
    natural = datatype_of(value)
    return natural == datatype or (datatype == DOUBLE and natural in (INT64, UINT64))


def set_value(metric: Any, datatype: int, value: Any) -> None:
    """Fill the value oneof for `datatype` (Int64 goes two's complement into the uint64 `long_value`)."""
    if value is None:
        metric.is_null = True
        return
    try:
        if datatype == BOOLEAN:
            metric.boolean_value = bool(value)
        elif datatype == INT64:
            metric.long_value = int(value) & 0xFFFF_FFFF_FFFF_FFFF
        elif datatype == UINT64:
            metric.long_value = int(value)
        elif datatype == DOUBLE:
            metric.double_value = float(value)
        else:
            metric.string_value = value if isinstance(value, str) else orjson.dumps(value).decode()
    except (TypeError, ValueError, OverflowError):
        metric.is_null = True


_SIGNED = frozenset({1, 2, 3, 4})  # Int8..Int64: two's complement in the uint32 int_value / uint64 long_value


def metric_value(metric: Any) -> Any:
    """The value a DCMD metric carries (the inverse of `set_value`; signed ints from two's complement)."""
    kind = metric.WhichOneof("value")
    if kind is None or metric.is_null:
        return None
    value = getattr(metric, kind)
    if metric.datatype in _SIGNED and kind in ("int_value", "long_value"):
        width = 32 if kind == "int_value" else 64
        if value >= 1 << (width - 1):
            value -= 1 << width
    return value


def _property(metric: Any, key: str, value: str) -> None:
    metric.properties.keys.append(key)
    metric.properties.values.add(type=STRING, string_value=value)


class BdSeqStore:
    """The next bdSeq, in a small JSON file in the state directory (written atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int:
        try:
            return int(json.loads(self.path.read_text())["next_bdseq"]) % 256
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def save(self, value: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"next_bdseq": value}))
        os.replace(tmp, self.path)


def stored_value(value: Any) -> Any:
    """What the stored payload carries for a reading's value: not finite is null, and a value of another kind
    travels as its compact JSON text (as the JSON format would have carried it)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple | dict):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def encode_batch(batch: Batch) -> bytes:
    """The stored row: one metric per reading, by name, with its datatype, value, timestamp, unit and quality."""
    p = pb.Payload(timestamp=int(batch.ts * 1000))
    add = p.metrics.add
    for r in batch.readings:
        value = stored_value(r.value)
        dtype = datatype_of(value)
        m = add(name=r.tag, datatype=dtype, timestamp=int(r.source_ts * 1000))
        set_value(m, dtype, value)
        if r.unit:
            _property(m, "engUnit", r.unit)
        if r.quality != "good":
            _property(m, "Quality", r.quality)
    return p.SerializeToString()


def stored_values(payload: bytes) -> tuple[int | None, dict[str, _Value]]:
    """A stored row: its timestamp (ms) and each metric's value, unit, quality and timestamp."""
    p = pb.Payload.FromString(payload)
    values: dict[str, _Value] = {}
    for m in p.metrics:
        unit, quality = None, "good"
        props = m.properties
        for key, pv in zip(props.keys, props.values, strict=False):
            if key == "engUnit":
                unit = pv.string_value
            elif key == "Quality":
                quality = pv.string_value
        values[m.name] = _Value(metric_value(m), unit, quality, m.timestamp if m.HasField("timestamp") else None)
    return (p.timestamp if p.HasField("timestamp") else None), values


class SparkplugSink(OnConnection):
    """A Sparkplug B edge node: the outbox rows as DDATA, births and deaths from the device states, and the
    session rules of its MQTT connection."""

    feeds: Feeds = "data"
    proves_delivery = True  # QoS 0: a row handed to a live session counts as delivered (docs/sparkplug.md)
    live_share: float | None = None

    def __init__(self, conn: MqttConnection, sp: SparkplugSettings, name: str = "sparkplug",
                 on_ack: AckCallback | None = None) -> None:
        self.conn = conn
        self.client = conn.client
        self.name = name
        self.on_ack = on_ack
        self.sp = sp
        self.bdseq_store = BdSeqStore(sp.state_file)
        self.will_bdseq = self.bdseq_store.load()  # the bdSeq in the will paho connects with next
        self.session_bdseq = self.will_bdseq
        self.seq = 0  # the next seq to publish
        self.latest: Callable[[str], Mapping[str, Reading]] = lambda device: {}
        self.online: dict[str, bool] = {}
        self.born: dict[str, dict[str, int]] = {}  # device -> metric -> datatype, for this session's births
        self.sent: dict[str, dict[str, tuple[Any, str]]] = {}  # device -> metric -> (value, quality) last sent
        self.aliases: dict[tuple[str, str], int] = {}  # stable for the process: aliases are node-wide
        self.datatypes: dict[tuple[str, str], int] = {}
        self._dangling: set[str] = set()  # offline devices born only to carry backlog: DDEATH after the send
        self.counts: Counter[str] = Counter()
        self.published = 0
        self.acked_count = 0
        # Primary Host Application awareness: its retained STATE decides when this node may be born
        self.state_topic = f"{NAMESPACE}/STATE/{sp.primary_host_id}" if sp.primary_host_id else None
        self.host_online = False
        self.host_ts = -1  # the newest STATE timestamp seen: an older STATE is stale and ignored
        self.awaiting_host = False
        self._session_tasks: set[asyncio.Task[None]] = set()
        conn.session = self
        conn.set_will(self.will())
        conn.subscriptions += [(self.topic("NCMD"), 1), (self.topic("DCMD", "+"), 1)]
        if self.state_topic:
            conn.subscriptions.append((self.state_topic, 1))
        conn.on_message_hooks.append(self._command)
        conn.closing_hooks.append(self._end_session)
        # DCMD metric -> (device, tag, value): the collector hands it to write-back (docs/writes.md)
        self.on_device_command: Callable[[str, str, Any], None] | None = None

    encode = staticmethod(encode_batch)

    def receipt(self, row: Row) -> str | None:
        return None


    # -- topics and payloads

    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.sp.group_id}/{kind}/{self.sp.edge_node_id}"
        return base if device is None else f"{base}/{device}"

    def _ndeath(self, bdseq: int) -> bytes:
        p = pb.Payload(timestamp=now_ms())
        p.metrics.add(name=BDSEQ, datatype=INT64, long_value=bdseq)
        return p.SerializeToString()

    def will(self) -> Will:
        return self.topic("NDEATH"), self._ndeath(self.will_bdseq), 1, False
    def _publish(self, kind: str, payload: Any, device: str | None = None) -> None:
        """Publish a birth or death with the next seq (QoS 0, not retained)."""
        payload.seq = self._next_seq()
        payload.timestamp = now_ms()
        self.client.publish(self.topic(kind, device), payload.SerializeToString(), qos=0)
        self.counts[kind] += 1

    def _next_seq(self) -> int:
        seq, self.seq = self.seq, (self.seq + 1) % 256
        return seq

    def _alias(self, device: str, metric: str) -> int:
        key = (device, metric)
        if key not in self.aliases:
            self.aliases[key] = FIRST_DEVICE_ALIAS + len(self.aliases)
        return self.aliases[key]

    # -- session

    def session_started(self) -> bool:
        """A new session: its bdSeq is the one in the will it connected with; the next connection's is saved.
        The link is up after the births; with a primary host, only once its STATE says online."""
        self.session_bdseq = self.will_bdseq
        self.will_bdseq = (self.session_bdseq + 1) % 256
        try:
            self.bdseq_store.save(self.will_bdseq)
        except OSError:
            log.exception("sink=sparkplug event=bdseq_not_saved path=%s", self.bdseq_store.path)
        self.conn.set_will(self.will())
        if self.state_topic:
            # Sparkplug 3.0: no NBIRTH before the primary host's STATE says online, on every new session
            self.host_online = False
            self.awaiting_host = True
            self.client.subscribe(self.state_topic, qos=1)  # the rest once the link is up (ready())
            log.info("sink=sparkplug event=awaiting_primary_host host=%s", self.sp.primary_host_id)
            return False
        self.awaiting_host = False
        self.births()
        return True

    def _born_session(self) -> None:
        """NBIRTH and DBIRTHs, then the link is up: the outbox sender starts (backlog as historical)."""
        self.awaiting_host = False
        self.births()
        self.conn.ready()

    def _host_state(self, payload: bytes) -> None:
        """The primary host's STATE: `{"online": bool, "timestamp": ms}`; a STATE older than one seen is stale."""
        try:
            state = json.loads(payload)
            online, ts = bool(state["online"]), int(state.get("timestamp", 0))
        except (ValueError, KeyError, TypeError):
            log.warning("sink=sparkplug event=bad_state topic=%s payload=%r", self.state_topic, payload[:200])
            return
        if ts < self.host_ts:
            self.counts["STATE stale"] += 1
            log.info("sink=sparkplug event=stale_state_ignored online=%s timestamp=%d newest=%d", online, ts,
                     self.host_ts)
            return
        self.host_ts = ts
        was_online, self.host_online = self.host_online, online
        self.counts["STATE"] += 1
        if online and self.awaiting_host and self.client.is_connected():
            log.info("sink=sparkplug event=primary_host_online host=%s", self.sp.primary_host_id)
            self._born_session()
        elif not online and was_online and not self.awaiting_host:
            self._host_offline()

    def _host_offline(self) -> None:
        """The primary host went offline: NDEATH, end the session, connect again and wait for it (3.0: the
        node must not stay born without its host). Data waits in the outbox meanwhile."""
        log.warning("sink=sparkplug event=primary_host_offline host=%s (session ended; data waits in the outbox)",
                    self.sp.primary_host_id)
        ndeath = self._end_session()
        self.awaiting_host = True
        self.conn.link_lost()
        self.born.clear()
        self.sent.clear()
        if self.conn.loop is not None and not self.conn.stopping:
            task = self.conn.loop.create_task(self.conn.new_session(ndeath), name="sparkplug-new-session")
            self._session_tasks.add(task)
            task.add_done_callback(self._session_tasks.discard)

    def births(self) -> None:
        """NBIRTH (seq 0, this session's bdSeq, Rebirth) and a DBIRTH for every online device."""
        self.seq = 0
        self.born.clear()
        self.sent.clear()
        self._dangling.clear()
        p = pb.Payload()
        p.metrics.add(name=BDSEQ, alias=BDSEQ_ALIAS, datatype=INT64, long_value=self.session_bdseq)
        p.metrics.add(name=REBIRTH, alias=REBIRTH_ALIAS, datatype=BOOLEAN, boolean_value=False)
        self._publish("NBIRTH", p)
        for device, online in self.online.items():
            if online and self.latest(device):
                self._dbirth(device)
        log.info("sink=sparkplug event=births bdseq=%d devices=%d", self.session_bdseq, len(self.born))

    def _dbirth(self, device: str, extra: Mapping[str, _Value] | None = None) -> None:
        """Every metric of the device with name, alias, datatype and its current value (`extra` fills gaps)."""
        values = {tag: _Value(r.value, r.unit, r.quality, int(r.source_ts * 1000))
                  for tag, r in self.latest(device).items()}
        for tag, v in (extra or {}).items():
            values.setdefault(tag, v)
        p = pb.Payload()
        types: dict[str, int] = {}
        sent: dict[str, tuple[Any, str]] = {}
        for tag, v in values.items():
            key = (device, tag)
            dtype = self.datatypes.get(key)
            if dtype is None or not fits(dtype, v.value):
                dtype = self.datatypes[key] = datatype_of(v.value)
            m = p.metrics.add(name=tag, alias=self._alias(device, tag), datatype=dtype)
            if v.ts is not None:
                m.timestamp = v.ts
            set_value(m, dtype, v.value)
            if v.unit:
                _property(m, "engUnit", v.unit)
            if v.quality != "good":
                _property(m, "Quality", v.quality)
            types[tag] = dtype
            sent[tag] = (v.value, v.quality)
        self._publish("DBIRTH", p, device)
        self.born[device], self.sent[device] = types, sent

    def _ddeath(self, device: str) -> None:
        if self.born.pop(device, None) is not None:
            self.sent.pop(device, None)
            self._publish("DDEATH", pb.Payload(), device)

    def status_changed(self, st: DeviceStatus) -> None:
        """A status listener: the host sees the same device states as the indicators."""
        online = st.state in ONLINE_STATES
        self.online[st.device] = online
        if not self.connected:
            return  # the births at the next connect tell it
        if online and st.device not in self.born and self.latest(st.device):
            self._dbirth(st.device)
        elif not online:
            self._ddeath(st.device)

    def rebirth(self) -> None:
        """NBIRTH and DBIRTHs again, same bdSeq (a host asked with Node Control/Rebirth)."""
        if self.connected:
            self.births()

    def _command(self, topic: str, payload: bytes) -> None:
        if topic == self.state_topic:
            self._host_state(payload)
        elif topic == self.topic("NCMD"):
            p = pb.Payload.FromString(payload)
            for m in p.metrics:
                is_rebirth = m.name == REBIRTH or (not m.name and m.HasField("alias") and m.alias == REBIRTH_ALIAS)
                if is_rebirth and m.WhichOneof("value") == "boolean_value" and m.boolean_value:
                    log.info("sink=sparkplug event=rebirth_requested")
                    self.counts["NCMD"] += 1
                    self.rebirth()
        elif topic.startswith(self.topic("DCMD") + "/"):
            self.counts["DCMD"] += 1
            device = topic.rsplit("/", 1)[1]
            names = {alias: metric for (dev, metric), alias in self.aliases.items() if dev == device}
            try:
                metrics = pb.Payload.FromString(payload).metrics
            except Exception:
                log.warning("sink=sparkplug event=dcmd_undecodable topic=%s", topic)
                return
            for m in metrics:
                name = m.name or names.get(m.alias)
                if name and self.on_device_command is not None:  # write-back: collector/writes/
                    self.on_device_command(device, name, metric_value(m))
                elif self.on_device_command is None:
                    log.warning("sink=sparkplug event=dcmd_ignored topic=%s (no write handler)", topic)

    # -- the outbox sender's transport

    def row_message(self, row: Row, historical: bool) -> tuple[str, bytes] | None:
        """DDATA for one stored batch; None when nothing changed (the row is acknowledged as delivered)."""
        ts, values = stored_values(row.payload)
        device = row.device
        types = self.born.get(device)
        if types is None or any(tag not in types or not fits(types[tag], v.value) for tag, v in values.items()):
            # not born in this session, a new metric, or a value the birth's datatype cannot carry
            self._dbirth(device, values)
            if not self.online.get(device, False):
                self._dangling.add(device)
            types = self.born[device]
        sent = self.sent.setdefault(device, {})
        p = pb.Payload()
        for tag, v in values.items():
            if not historical:
                if sent.get(tag) == (v.value, v.quality):
                    continue
                sent[tag] = (v.value, v.quality)
            m = p.metrics.add(alias=self._alias(device, tag))
            if v.ts is not None:
                m.timestamp = v.ts
            set_value(m, types.get(tag, DOUBLE), v.value)
            if v.quality != "good":
                _property(m, "Quality", v.quality)
            if historical:
                m.is_historical = True
        if not p.metrics:
            return None
        p.seq = self._next_seq()
        p.timestamp = ts or now_ms()
        self.counts["DDATA"] += 1
        return self.topic("DDATA", device), p.SerializeToString()


    def capacity(self) -> int:
        return max(0, 2 * self.conn.s.max_inflight)

    def in_flight(self) -> set[int]:
        return set()  # QoS 0: nothing is held once handed over

    async def send(self, rows: list[Row], historical: list[bool]) -> None:
        """QoS 0, not retained (the specification): a row handed to a live session is delivered."""
        try:
            for row, hist in zip(rows, historical, strict=True):
                msg = self.row_message(row, hist)
                if msg is not None:
                    mid = self.conn.publish(msg[0], msg[1], qos=0)
                    self.published += 1
                    if mid is None:  # paho refused it: again from the oldest row not acknowledged
                        self.conn.resync()
                        return
                self.acked_count += 1
                if self.on_ack is not None:
                    self.on_ack(row)  # also when nothing changed: nothing to publish
        finally:
            for device in list(self._dangling):
                if not self.online.get(device, False):
                    self._ddeath(device)
            self._dangling.clear()

    async def close(self) -> None:
        """NDEATH is a closing hook of the connection, which the collector stops."""

    def _end_session(self) -> mqtt.MQTTMessageInfo | None:
        """NDEATH with this session's bdSeq, when the node is born (a DISCONNECT will follow: no will then)."""
        if not self.connected:
            return None
        self.counts["NDEATH"] += 1
        return self.client.publish(self.topic("NDEATH"), self._ndeath(self.session_bdseq), qos=1)

    def stats(self) -> dict[str, Any]:
        return {"connected": self.connected, "published": self.published, "acked": self.acked_count,
                "in_flight": 0, "errors": self.conn.errors,
                "sparkplug": {"bdseq": self.session_bdseq, "seq": self.seq, "born": len(self.born),
                              "messages": dict(self.counts)}}
