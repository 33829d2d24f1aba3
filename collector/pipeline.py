"""Between the adapters and the sinks: numbering, the good-sample rule, the latest values, fan-out.

A poll's readings become one `Batch` per device and cycle, numbered by the device's sequence. The batch is
marked as holding a good sample when at least one reading is good and its source timestamp is still
advancing (INDICATORS.md: a value whose source timestamp stopped for longer than `stale_after` is not good).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from collector.model import Batch, Reading
from collector.status import StatusTracker

BatchSink = Callable[[Batch], None]


class Pipeline:
    def __init__(self, status: StatusTracker, stale_after: float, next_seq: Callable[[str], int],
                 clock: Callable[[], float] = time.time) -> None:
        self.status = status
        self.next_seq = next_seq  # the outbox's: numbers are persisted with the data they number
        self.stale_after = stale_after
        self.clock = clock
        self.sinks: list[BatchSink] = []
        self.latest: dict[str, dict[str, Reading]] = {}
        # device -> tag -> (last source_ts, receive time when it last advanced)
        self._advance: dict[str, dict[str, tuple[float, float]]] = {}

    def add_sink(self, sink: BatchSink) -> None:
        self.sinks.append(sink)

    def forget(self, device: str) -> None:
        """A device removed by a reload: drop its latest values and staleness state."""
        self.latest.pop(device, None)
        self._advance.pop(device, None)

    def submit(self, device: str, readings: list[Reading]) -> Batch | None:
        """Take one cycle of a device; returns the batch handed to the sinks (None when empty)."""
        if not readings:
            return None
        now = self.clock()
        latest = self.latest.get(device)
        if latest is None:
            latest = self.latest[device] = {}
        advance = self._advance.get(device)
        if advance is None:
            advance = self._advance[device] = {}
        stale_after = self.stale_after
        fresh_good = 0
        for r in readings:
            tag = r.tag
            latest[tag] = r
            ts = r.source_ts
            prev = advance.get(tag)
            if prev is None or ts != prev[0]:
                advance[tag] = (ts, r.receive_ts)
                if r.quality == "good":
                    fresh_good += 1  # its source time just advanced
            elif r.quality == "good" and r.receive_ts - prev[1] <= stale_after:
                fresh_good += 1
        batch = Batch(device=device, seq=self.next_seq(device), ts=now, readings=readings,
                      good_ts=now if fresh_good else None)
        # The state counts the device's whole tag set (its latest reading of each): a subscription's publish
        # carries only what changed, and "n of m tags bad" must not follow the size of each publish.
        self.status.polled(device, sum(1 for r in latest.values() if r.quality == "good"), len(latest), now)
        for sink in self.sinks:
            sink(batch)
        return batch
