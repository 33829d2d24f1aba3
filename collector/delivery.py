"""Moves one sink's rows from the outbox to the sink, in order, sharing the link between live and backlog.

The sharing rule (docs/outbox.md): at each (re)connection the rows already committed are the *backlog* and are
marked historical; rows committed afterwards are *live*. While both exist, every send takes up to `live_share`
(default 50 %) of the sink's free capacity from the live rows, oldest first, and the rest from the backlog,
oldest first; whichever side has less leaves its share to the other. So live data keeps flowing at its own rate
while an outage drains at the full remaining rate of the link, and each side stays in order per device.

A transport owns its in-flight window: rows it took but has not acknowledged yet are skipped when the sender
recomputes its cursors after a reconnect (paho re-sends its in-flight QoS 1 messages itself).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Protocol

from collector.model import Row
from collector.outbox import Outbox

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What a sink offers the sender."""

    @property
    def connected(self) -> bool: ...

    @property
    def generation(self) -> int:
        """Rises at every (re)connection: the sender then recomputes its cursors."""

    async def wait_connected(self) -> None: ...

    def capacity(self) -> int:
        """How many more rows it takes now."""

    def in_flight(self) -> set[int]:
        """Ids of rows taken and not yet acknowledged."""

    async def send(self, rows: list[Row], historical: list[bool]) -> None:
        """Take rows; acknowledge each through the ack callback it was built with."""


def share(free: int, live: int, backlog: int, live_share: float) -> tuple[int, int]:
    """How many live and backlog rows to send now (pure: unit-tested)."""
    if backlog == 0:
        return min(free, live), 0
    if live == 0:
        return 0, min(free, backlog)
    take_live = min(live, max(1, math.ceil(free * live_share)))
    take_backlog = min(backlog, free - take_live)
    take_live = min(live, free - take_backlog)
    return take_live, take_backlog


class Sender:
    def __init__(self, outbox: Outbox, sink: str, transport: Transport, live_share: float = 0.5,
                 idle_wait: float = 0.5) -> None:
        self.outbox = outbox
        self.sink = sink
        self.t = transport
        self.live_share = live_share
        self.idle_wait = idle_wait
        self.sent = 0
        self.backlog_left = 0

    async def run(self) -> None:
        while True:
            await self.t.wait_connected()
            try:
                await self._connected_session()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sink=%s event=sender_error", self.sink)
                await asyncio.sleep(1.0)

    async def _connected_session(self) -> None:
        gen = self.t.generation
        boundary = self.outbox.last_id(self.sink)
        backlog_after = self.outbox.first_id(self.sink) - 1
        live_after = boundary
        while self.t.connected and self.t.generation == gen:
            free = self.t.capacity()
            if free <= 0:
                await asyncio.sleep(0.005)
                continue
            self.outbox.mark_seen(self.sink)
            skip = self.t.in_flight()
            backlog: list[Row] = []
            if backlog_after < boundary:
                fetched = self.outbox.fetch(self.sink, backlog_after, free + len(skip), upto=boundary)
                backlog = [r for r in fetched if r.id not in skip]
                if not backlog:  # drained, or only rows the transport still holds: move past them
                    backlog_after = fetched[-1].id if fetched else boundary
                    continue
            live = [r for r in self.outbox.fetch(self.sink, live_after, free + len(skip)) if r.id not in skip]
            n_live, n_backlog = share(free, len(live), len(backlog), self.live_share)
            picked_backlog, picked_live = backlog[:n_backlog], live[:n_live]
            if not picked_backlog and not picked_live:
                self.backlog_left = 0
                await self.outbox.wait_new(self.sink, self.idle_wait)
                continue
            if picked_backlog:
                backlog_after = picked_backlog[-1].id
            if picked_live:
                live_after = picked_live[-1].id
            rows = picked_backlog + picked_live
            self.backlog_left = max(0, boundary - backlog_after)
            # historical = taken from the backlog side (stored before this connection), whatever its timestamp:
            # a batch read just before the reconnect but committed just after goes out live, in order
            await self.t.send(rows, [True] * len(picked_backlog) + [False] * len(picked_live))
            self.sent += len(rows)
            await asyncio.sleep(0)  # a drain must not starve the device tasks when the transport never waits


AckCallback = Callable[[Row], None]
