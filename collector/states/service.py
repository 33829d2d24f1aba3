"""Machine states in a running collector: the tracker on the pipeline, its flushes, the retained MQTT state per
device and the per-shift summary. `Collector` holds one `StatesService` and calls it at three places (build,
start, stop), so the feature stays in this package.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from collector.sinks.mqtt import iso
from collector.states.summary import shift_figures, timeline
from collector.states.tracker import StateTracker
from collector.status import StatusStore

if TYPE_CHECKING:
    from collector.app import Collector

log = logging.getLogger(__name__)


class StatesService:
    def __init__(self, c: Collector) -> None:
        self.c = c
        self.tracker = StateTracker(c.cfg, c.store, time.time())
        self.shift: dict[str, Any] | None = None  # the running shift's figures (refreshed off the loop)
        self._reader: StatusStore | None = None
        self._wired = False
        self._wire()

    def _wire(self) -> None:
        """Hook the tracker in once some device has machine states (at start, or after a reload adds one)."""
        if self._wired or not self.tracker.machines:
            return
        c = self.c
        c.pipeline.add_sink(self.tracker.on_batch)
        c.status.listeners.append(self.tracker.status_changed)
        self.tracker.listeners.append(self._changed)
        c.mqtt.on_connect_hooks.append(self._republish)
        self._wired = True

    def reconfigure(self, devices: list[str]) -> None:
        """`Collector.reload` added, changed or removed these devices: their rules follow the new config. (The
        periodic tasks run from the start whenever states are enabled.)"""
        self.tracker.reconfigure(self.c.cfg, devices)
        self._wire()

    @property
    def root(self) -> str:
        return str(self.c.control.root)

    def payload(self, device: str) -> dict[str, Any]:
        cur = self.tracker.current()[device]
        return {"device": device, "state": cur["state"], "since": iso(cur["since"]), "rules": cur["rules"],
                "ts": iso(time.time())}

    def _changed(self, device: str, state: str, since: float, before: str) -> None:
        log.info("device=%s event=machine_state state=%s from=%s", device, state, before)
        self.c.control.publish_json(f"{self.root}/devices/{device}/state", self.payload(device), retain=True)

    def _republish(self) -> None:
        for device in self.tracker.machines:
            self.c.control.publish_json(f"{self.root}/devices/{device}/state", self.payload(device), retain=True)
        if self.shift is not None:
            self.c.control.publish_json(self.summary_topic, self.shift, retain=True)

    @property
    def summary_topic(self) -> str:
        cfg = self.c.cfg
        return cfg.states.summary_topic.format(root=self.root, enterprise=cfg.site.enterprise_id,
                                               workshop=cfg.site.workshop)

    def _reader_store(self) -> StatusStore:
        if self._reader is None:
            self._reader = StatusStore(self.c.state_dir / "status.db", self.c.cfg.indicators.bucket)
        return self._reader

    async def refresh(self) -> None:
        """The shift's figures, computed in a worker thread on a second connection, published retained; the
        summary of a shift that just ended is published once more with `final: true`."""
        if not self.tracker.machines:
            return
        before = self.shift
        self.shift = await self.c.threads.run(shift_figures, self.c.cfg, self._reader_store(), time.time())
        if before is not None and self.shift is not None and before["key"] != self.shift["key"]:
            ended = await self.c.threads.run(_final, self.c, self._reader_store(), before)
            if ended is not None:
                self.c.control.publish_json(self.summary_topic, ended, retain=True)
        if self.shift is not None:
            self.c.control.publish_json(self.summary_topic, self.shift, retain=True)

    def page(self) -> dict[str, Any] | None:
        """What the status page shows: today's strip per device (what the last flush, at most a second ago,
        wrote), the current states and the shift's figures (refreshed every `indicators.publish_interval`)."""
        if not self.tracker.machines:
            return None
        return {"timeline": timeline(self.c.cfg, self.c.store, time.time()), "current": self.tracker.current(),
                "shift": self.shift}

    def tasks(self) -> list[asyncio.Task[None]]:
        if not self.c.cfg.states.enabled:
            return []
        c = self.c
        return [asyncio.create_task(c._every(1.0, self.tracker.flush), name="machine-states-flush"),
                asyncio.create_task(c._every_async(c.cfg.indicators.publish_interval, self.refresh),
                                    name="machine-states-shift")]

    def stop(self) -> None:
        """The last flush and the reader closed: `Collector.stop` has waited for `c.threads` (a refresh's query)."""
        self.tracker.flush()
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _final(c: Collector, store: StatusStore, before: dict[str, Any]) -> dict[str, Any] | None:
    """The figures of the shift `before` named, at its end."""
    import datetime as dt

    end = dt.datetime.fromisoformat(before["end"]).timestamp()
    out = shift_figures(c.cfg, store, end - 1e-3)
    if out is not None:
        out["final"] = True
    return out
