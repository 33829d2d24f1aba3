"""The evidence sink: signed chain heads (anchors) from the outbox to the evidence topic, over the MQTT sink's
connection, acknowledged by PUBACK like data. An anchor queued while the broker is away waits in the outbox.

Topic and payload: docs/mqtt.md (`evidence.topic`, default `{root}/evidence/head`, retained, QoS 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from collector.model import Row


class Connection(Protocol):
    """What the evidence sink needs of the MQTT sink it rides on."""

    @property
    def connected(self) -> bool: ...

    @property
    def generation(self) -> int: ...

    async def wait_connected(self) -> None: ...

    def publish_tracked(self, topic: str, payload: bytes, on_ack: Callable[[], None],
                        retain: bool = False) -> bool: ...

    def resync(self) -> None: ...


class EvidenceSink:
    """The outbox sender's transport for the `evidence` queue (collector/delivery.py)."""

    WINDOW = 8  # anchors in flight at once: a few a day, so a small window is plenty

    def __init__(self, conn: Connection, topic: str, on_ack: Callable[[Row], None]) -> None:
        self.conn = conn
        self.topic = topic
        self.on_ack = on_ack
        self._pending: dict[int, Row] = {}  # row id -> row, until its PUBACK

    @property
    def connected(self) -> bool:
        return self.conn.connected

    @property
    def generation(self) -> int:
        return self.conn.generation

    async def wait_connected(self) -> None:
        await self.conn.wait_connected()

    def capacity(self) -> int:
        return max(0, self.WINDOW - len(self._pending))

    def in_flight(self) -> set[int]:
        return set(self._pending)

    async def send(self, rows: list[Row], historical: list[bool]) -> None:
        for row in rows:
            self._pending[row.id] = row
            if not self.conn.publish_tracked(self.topic, row.payload, self._acked_cb(row), retain=True):
                self._pending.pop(row.id, None)
                self.conn.resync()
                return

    def _acked_cb(self, row: Row) -> Callable[[], None]:
        def acked() -> None:
            self._pending.pop(row.id, None)
            self.on_ack(row)
        return acked
