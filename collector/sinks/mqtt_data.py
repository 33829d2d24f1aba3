"""The JSON data sink: `{root}/devices/{device}/data`, one message per device per cycle (docs/mqtt.md).

Its encoder stores the message without its first member: `{"historical":…,` is written at send time, when the
sender knows whether the row is backlog, so the flag is never searched for and replaced in a payload. Rows an
older version stored (a whole message, `"historical":false` inside) are sent as they are, with the flag
rewritten for backlog: only a queue written before this layout holds them.
"""

from __future__ import annotations

from typing import Any

import orjson

from collector.model import Batch, Row
from collector.sinks.base import AckCallback, Feeds
from collector.sinks.mqtt import MqttConnection, OnConnection

LIVE_HEAD = b'{"historical":false,'
BACKLOG_HEAD = b'{"historical":true,'
_LEGACY_FALSE, _LEGACY_TRUE = b'"historical":false', b'"historical":true'


def ms(ts: float | None) -> int | None:
    return None if ts is None else int(ts * 1000)  # truncated, as databases store ns timestamps in ms


def encode_body(batch: Batch) -> bytes:
    """The stored row: the data message after its `{"historical":…,` head.

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
    return orjson.dumps({"device": batch.device, "seq": batch.seq, "ts": ms(batch.ts), "tags": tags},
                        default=str)[1:]


def encode_data(batch: Batch) -> bytes:
    """The whole data message of a batch, as a subscriber receives it."""
    return (BACKLOG_HEAD if batch.historical else LIVE_HEAD) + encode_body(batch)


def data_message(payload: bytes, historical: bool) -> bytes:
    """The message for a stored row: the head for its side of the link, then the row."""
    if payload[:1] == b"{":  # stored by an older version: the whole message
        return payload.replace(_LEGACY_FALSE, _LEGACY_TRUE, 1) if historical else payload
    return (BACKLOG_HEAD if historical else LIVE_HEAD) + payload


class MqttDataSink(OnConnection):
    """The outbox sender's transport for the JSON data: publishes only while connected, keeps its in-flight
    rows by message id across a reconnect (paho re-sends them), and calls `on_ack(row)` at each PUBACK."""

    feeds: Feeds = "data"
    proves_delivery = True  # a broker's PUBACK of a good batch is the 联网率 evidence
    live_share: float | None = None

    def __init__(self, conn: MqttConnection, name: str = "mqtt", on_ack: AckCallback | None = None) -> None:
        self.conn = conn
        self.name = name
        self.on_ack = on_ack
        self.qos = conn.s.qos
        self._pending: dict[int, Row] = {}  # mid -> row, until its PUBACK
        self.published = 0
        self.acked_count = 0

    encode = staticmethod(encode_body)

    def receipt(self, row: Row) -> str | None:
        return None

    def topic(self, device: str) -> str:
        return f"{self.conn.root}/devices/{device}/data"

    # -- transport



    def capacity(self) -> int:
        return max(0, 2 * self.conn.s.max_inflight - len(self._pending))

    def in_flight(self) -> set[int]:
        return {row.id for row in self._pending.values()}

    async def send(self, rows: list[Row], historical: list[bool]) -> None:
        conn, qos, root = self.conn, self.qos, self.conn.root
        for row, hist in zip(rows, historical, strict=True):
            mid = conn.publish(f"{root}/devices/{row.device}/data", data_message(row.payload, hist), qos=qos,
                               owner=self)
            self.published += 1
            if mid is None:  # paho refused it (e.g. its queue is full): again from the oldest row not in flight
                conn.resync()
                return
            if qos == 0:
                if self.on_ack is not None:
                    self.on_ack(row)  # QoS 0 has no acknowledgement: handed to a live link
                continue
            self._pending[mid] = row

    def acked(self, mid: int) -> None:
        row = self._pending.pop(mid, None)
        if row is None:
            return
        self.acked_count += 1
        if self.on_ack is not None:
            self.on_ack(row)

    async def close(self) -> None:
        """Nothing of its own: the connection is stopped by the collector."""

    def stats(self) -> dict[str, Any]:
        return {"connected": self.connected, "published": self.published, "acked": self.acked_count,
                "in_flight": len(self._pending), "errors": self.conn.errors}
