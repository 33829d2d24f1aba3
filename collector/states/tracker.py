"""Machine states as readings arrive: one compiled rule set per device, evaluated only when a tag it reads
changes (or a `changed within` window runs out), and the time in each state as segments in status.db.

Segments are cut at every shift boundary and local midnight (collector/states/shifts.py), so each holds the part
counts of one shift exactly. The open segment is rewritten at each flush (every second): after a crash or a
stop, the time until the next start has no segment, which the figures count as `unknown` (the collector's own
downtime), never as `offline` (the machine gave no good data while the collector ran).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collector.config import CollectorConfig
from collector.model import Batch, DeviceState
from collector.states.expr import Compiled, compile_condition
from collector.states.presets import resolve
from collector.states.shifts import Shifts
from collector.status import StatusStore

log = logging.getLogger(__name__)
COUNTERS = ("parts", "good", "scrap")
StateListener = Callable[[str, str, float, str], None]  # device, state, since, previous state


@dataclass
class Segment:
    state: str
    start: float
    end: float
    counts: dict[str, float] = field(default_factory=dict)  # role -> parts counted in the segment

    def row(self, device: str) -> tuple[str, float, float, str, float | None, float | None, float | None]:
        c = self.counts
        return (device, self.start, self.end, self.state, c.get("parts"), c.get("good"), c.get("scrap"))


def counter_delta(prev: float, value: float, wrap: float | None) -> tuple[float, str | None]:
    """Parts counted between two readings of a counter, and what happened: a drop is a wrap when the counter
    wraps (`counter_wrap`) and the drop is more than half its range, else a reset to zero (the parts since are
    the new value)."""
    if value >= prev:
        return value - prev, None
    if wrap is not None and prev - value > wrap / 2:
        return value + wrap - prev, "wrap"
    return value, "reset"


class DeviceMachine:
    """One device's rules and what they last saw."""

    def __init__(self, device: str, source: str, rules: dict[str, str], counters: dict[str, str],
                 wrap: float | None, now: float) -> None:
        self.device = device
        self.source = source
        self.rules: list[tuple[str, Compiled]] = [(s, compile_condition(t)) for s, t in rules.items()]
        self.rule_tags: set[str] = set().union(*(c.tags for _, c in self.rules)) if self.rules else set()
        self.windows: dict[str, set[float]] = {}
        for _, c in self.rules:
            for tag, ws in c.windows.items():
                self.windows.setdefault(tag, set()).update(ws)
        self.counters = {tag: role for role, tag in counters.items()}  # tag -> role
        self.watch = self.rule_tags | set(self.counters)
        self.wrap = wrap
        self.values: dict[str, Any] = {}
        self.changed: dict[str, float] = {}
        self.last_count: dict[str, float] = {}
        self.next_eval = math.inf
        self.segment = Segment("offline", now, now)
        self.since = now  # when the current state began (a cut at a shift boundary starts no new state)
        self.closed: list[Segment] = []
        # since the start of this process, for /metrics counters: seconds per closed state, parts per role
        self.totals: dict[str, float] = {}
        self.parts_total: dict[str, float] = {}

    def close(self, end: float) -> Segment:
        """End the open segment at `end` and keep it for the next flush."""
        seg = self.segment
        seg.end = max(seg.start, end)
        self.closed.append(seg)
        self.totals[seg.state] = self.totals.get(seg.state, 0.0) + seg.end - seg.start
        return seg

    def evaluate(self, now: float) -> str:
        if not any(t in self.values for t in self.rule_tags) and self.rule_tags:
            return "offline"
        values, changed = self.values, self.changed
        state = "idle"
        for name, rule in self.rules:
            if rule.evaluate(values, changed, now):
                state = name
                break
        if self.windows:
            self.next_eval = min((c + w for t, ws in self.windows.items() if (c := changed.get(t)) is not None
                                  for w in ws if c + w > now), default=math.inf)
        return state


class StateTracker:
    """Every device's machine state; `on_batch` is a pipeline sink, `status_changed` a status listener."""

    def __init__(self, cfg: CollectorConfig, store: StatusStore, now: float) -> None:
        self.store = store
        self.shifts = Shifts(cfg.indicators.calendar, cfg.site.timezone)
        self.listeners: list[StateListener] = []
        self.machines: dict[str, DeviceMachine] = {}
        self.next_cut = self.shifts.next_cut(now)
        if cfg.states.enabled:
            for dev in cfg.devices:
                self._add(dev, now)

    def _add(self, dev: Any, now: float) -> None:
        found = resolve(dev.states, {t.name for t in dev.tags})
        if found is None:
            return
        source, rules, parts = found
        st = dev.states
        counters = {k: v for k, v in (("parts", parts), ("good", st.good if st else None),
                                      ("scrap", st.scrap if st else None)) if v is not None}
        self.machines[dev.id] = DeviceMachine(dev.id, source, rules, counters, st.counter_wrap if st else None, now)

    def reconfigure(self, cfg: CollectorConfig, devices: list[str], now: float | None = None) -> None:
        """A reload added, changed or removed these devices: their open segments end now (written at the next
        flush) and the added or changed ones start again, `offline` until their first answer, with the new
        rules."""
        now = _now() if now is None else now
        after = {d.id: d for d in cfg.devices} if cfg.states.enabled else {}
        for dev_id in devices:
            old = self.machines.pop(dev_id, None)
            if old is not None:
                old.close(now)
                self.store.write_machine_states([s.row(dev_id) for s in old.closed])
            if dev_id in after:
                self._add(after[dev_id], now)

    # -- fed by the pipeline and the status tracker

    def on_batch(self, batch: Batch) -> None:
        m = self.machines.get(batch.device)
        if m is None:
            return
        now = batch.ts
        if now >= self.next_cut:
            self._cut_all(now)
        watch = m.watch
        dirty = False
        for r in batch.readings:
            tag = r.tag
            if tag not in watch:
                continue
            values = m.values
            if r.quality != "good":
                if tag in values:
                    del values[tag]
                    dirty = True
                continue
            v = r.value
            role = m.counters.get(tag)
            if role is not None and isinstance(v, int | float):
                self._count(m, tag, role, float(v))
            if tag in m.rule_tags and (tag not in values or values[tag] != v):
                values[tag] = v
                m.changed[tag] = now
                dirty = True
        if dirty or now >= m.next_eval:
            self._set(m, m.evaluate(now), now)

    def _count(self, m: DeviceMachine, tag: str, role: str, v: float) -> None:
        prev = m.last_count.get(tag)
        m.last_count[tag] = v
        counts = m.segment.counts
        if prev is None:
            counts.setdefault(role, 0.0)  # the counter is seen: the figure can be given from here on
            return
        delta, event = counter_delta(prev, v, m.wrap)
        if event is not None:
            log.info("device=%s event=counter_%s tag=%s before=%s after=%s", m.device, event, tag, prev, v)
        counts[role] = counts.get(role, 0.0) + delta
        m.parts_total[role] = m.parts_total.get(role, 0.0) + delta

    def status_changed(self, st: Any) -> None:
        """The device lost its session: no good data, so `offline` (and its values are forgotten)."""
        m = self.machines.get(st.device)
        if m is not None and st.state in (DeviceState.OFFLINE, DeviceState.NEVER_SEEN):
            m.values.clear()
            m.last_count.clear()
            self._set(m, "offline", max(m.segment.start, _now()))

    def _set(self, m: DeviceMachine, state: str, now: float) -> None:
        if state == m.segment.state:
            return
        seg = m.close(now)
        m.segment = Segment(state, seg.end, seg.end, {k: 0.0 for k in seg.counts})
        m.since = seg.end
        for listener in self.listeners:
            try:
                listener(m.device, state, seg.end, seg.state)
            except Exception:
                log.exception("event=state_listener_failed device=%s", m.device)

    def _cut_all(self, now: float) -> None:
        """Cut every open segment at the boundaries passed (same state on both sides)."""
        while now >= self.next_cut:
            cut = self.next_cut
            for m in self.machines.values():
                if m.segment.start < cut:
                    seg = m.close(cut)
                    m.segment = Segment(seg.state, cut, cut, {k: 0.0 for k in seg.counts})
            self.next_cut = self.shifts.next_cut(cut)

    # -- persistence

    def flush(self, now: float | None = None) -> None:
        """Write the closed segments and the open ones up to `now` (every second, and at stop)."""
        now = _now() if now is None else now
        if now >= self.next_cut:
            self._cut_all(now)
        rows: list[tuple[str, float, float, str, float | None, float | None, float | None]] = []
        for m in self.machines.values():
            rows.extend(s.row(m.device) for s in m.closed)
            m.closed = []
            m.segment.end = max(m.segment.start, now)
            rows.append(m.segment.row(m.device))
        if rows:
            self.store.write_machine_states(rows)

    def current(self) -> dict[str, dict[str, Any]]:
        """Per device: state, since and where its rules come from (the status page, MQTT, /metrics)."""
        return {d: {"state": m.segment.state, "since": m.since, "rules": m.source}
                for d, m in self.machines.items()}


def _now() -> float:
    return time.time()
