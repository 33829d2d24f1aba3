"""The hub evidence sink: the chain's signed records and heads from the outbox to the city/county hub's broker,
on a connection of its own (MQTT 5, the enterprise's credentials, TLS by default), and the hub's receipts back.

Everything it sends waits in its outbox queue (`q_hub`) until the hub's broker acknowledges it, so a dead hub
or a cut Internet link only fills the outbox. With MQTT 5 the broker says when its ACL refuses a message
(PUBACK 0x87 Not authorized: the topic is not this user's; mosquitto 2.0 then also drops the connection): the
row is not acknowledged and stays in the outbox, but this process does not send it again (it would be refused
again, and each refusal costs a reconnect): it waits for a restart with a fixed config. The first refusal is
logged, every one counted (`stats()`). The receipts topic is
subscribed at every connect, on a persistent session, so receipts sent while the collector was away wait for
it at the broker; what a receipt means is not the sink's business: it hands the payload to `on_receipt`
(collector/evidence/hub_anchors.py checks and keeps it).

Topics (docs/hub.md): `{prefix}/{code}/evidence/{workshop}/record` (a full signed record: key record, register
import, monthly summary) and `{prefix}/{code}/evidence/{workshop}/head` (a head anchor), QoS 1, not retained;
receipts on `{prefix}/{code}/receipt`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from collector.model import Batch, Row
from collector.sinks.base import AckCallback, Feeds
from collector.sinks.mqtt import MqttConnection, RowPublisher

log = logging.getLogger(__name__)

RECORD_DEVICE = "evidence-record"  # the outbox rows' `device` of full records; anchors are `evidence`


class HubEvidenceSink(RowPublisher):
    """The outbox sender's transport for the hub queue: full records and heads, one QoS 1 message each."""

    WINDOW = 16
    feeds: Feeds = "chain"
    proves_delivery = False
    live_share: float | None = 0.5

    def __init__(self, conn: MqttConnection, prefix: str, enterprise: str, workshop: str, name: str = "hub",
                 on_ack: AckCallback | None = None) -> None:
        super().__init__(conn, name, on_ack)
        self.base = f"{prefix}/{enterprise}/evidence/{workshop}"
        self.receipt_topic = f"{prefix}/{enterprise}/receipt"
        self.on_receipt: Callable[[bytes], object] | None = None
        self.refused_count = 0
        self.live_sent = 0
        self.last_refusal: str | None = None
        self._parked: set[int] = set()  # rows the broker refused: held back until the next start
        conn.subscriptions.append((self.receipt_topic, 1))
        conn.on_message_hooks.append(self._message)

    def row_topic(self, row: Row) -> str:
        return f"{self.base}/{'record' if row.device == RECORD_DEVICE else 'head'}"

    def encode(self, batch: Batch) -> bytes:
        raise TypeError("the hub sink takes signed records and heads (collector/evidence/), not data")

    def receipt(self, row: Row) -> str | None:
        """None: the broker's PUBACK is not an anchor; the hub's signed receipt is (`on_receipt`)."""
        return None

    def in_flight(self) -> set[int]:
        return set(self._pending) | self._parked

    def refused(self, mid: int, reason: str) -> None:
        """The hub's broker refused the message: the row stays in the outbox, held back until the next start;
        the first refusal is logged, every one counted."""
        row = self._mids.pop(mid, None)
        if row is None:
            return
        self._pending.pop(row.id, None)
        self._parked.add(row.id)
        self.refused_count += 1
        self.last_refusal = reason
        if self.refused_count == 1:
            log.error("sink=%s event=hub_refused topic=%s reason=%r: the hub's broker does not let this user "
                      "publish there; evidence.hub.username (or site.credit_code) must be this enterprise's "
                      "统一社会信用代码 with its own password; the records wait in the outbox until a restart (this is "
                      "logged once; `refused` in the status counts them)", self.name,
                      self.row_topic(row), reason)

    def publish_live(self, message: dict[str, Any]) -> bool:
        """A signed live snapshot (collector/evidence/live.py), QoS 0 and past the outbox: a lost one is replaced
        by the next. False when the link is down (nothing is kept for later)."""
        if not self.connected:
            return False
        payload = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        if self.conn.publish(f"{self.base}/live", payload, qos=0) is None:
            return False
        self.live_sent += 1
        return True

    def _message(self, topic: str, payload: bytes) -> None:
        if topic == self.receipt_topic and self.on_receipt is not None:
            self.on_receipt(payload)

    async def start(self, wait: float = 0.5) -> None:
        await self.conn.start(wait=wait)

    async def close(self) -> None:
        """The connection is the sink's own: stopped here, after what is in flight was acknowledged (3 s at most)."""
        await self.conn.stop()

    def stats(self) -> dict[str, Any]:
        return {"connected": self.connected, "in_flight": len(self._pending), "refused": self.refused_count,
                "held_back": len(self._parked), "last_refusal": self.last_refusal,
                "live_sent": self.live_sent}
