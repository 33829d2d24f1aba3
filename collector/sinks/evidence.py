"""The evidence sink: signed chain heads (anchors) from the outbox to the evidence topic, over the MQTT sink's
connection, acknowledged by PUBACK like data. An anchor queued while the broker is away waits in the outbox.

Topic and payload: docs/mqtt.md (`evidence.topic`, default `{root}/evidence/head`, retained, QoS 1).
"""

from __future__ import annotations

from typing import Any

from collector.model import Batch, Row
from collector.sinks.base import AckCallback, Feeds
from collector.sinks.mqtt import MqttConnection, RowPublisher


class EvidenceSink(RowPublisher):
    """The outbox sender's transport for the anchors' queue (collector/delivery.py): one retained QoS 1
    message per signed head, on the MQTT connection the data uses."""

    WINDOW = 8  # anchors in flight at once: a few a day, so a small window is plenty
    feeds: Feeds = "anchors"
    proves_delivery = False
    live_share: float | None = 0.5  # anchors are few: the config's data share does not apply
    retain = True

    def __init__(self, conn: MqttConnection, topic: str, name: str = "evidence",
                 on_ack: AckCallback | None = None) -> None:
        super().__init__(conn, name, on_ack)
        self.topic = topic

    def encode(self, batch: Batch) -> bytes:
        raise TypeError("the evidence sink takes signed heads (collector/evidence/anchors.py), not data")

    def receipt(self, row: Row) -> str | None:
        """The anchoring receipt's location: the broker holds a retained copy of the head there."""
        return f"mqtt://{self.conn.s.host}:{self.conn.s.port}/{self.topic}"

    def row_topic(self, row: Row) -> str:
        return self.topic

    async def close(self) -> None:
        """Nothing of its own: the connection is stopped by the collector."""

    def stats(self) -> dict[str, Any]:
        return {"connected": self.connected, "in_flight": len(self._pending)}
