"""Prometheus families of the machine states, read at scrape time like the rest of collector/metrics.py (the
hot path pays nothing). Names are listed in docs/operations.md and docs/states.md."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collector.states.config import STATES

if TYPE_CHECKING:
    from collector.app import Collector

PREFIX = "shopfloor_machine"
SHIFT_FIGURES = ("availability", "utilization", "performance", "quality", "oee")


def families(c: Collector) -> Iterator[Metric]:
    tracker = c.states.tracker
    if not tracker.machines:
        return
    now = time.time()
    state = GaugeMetricFamily(f"{PREFIX}_state", "1 for the machine's current state (running, idle, setup, fault, "
                              "planned_stop, offline)", labels=["device", "state"])
    since = GaugeMetricFamily(f"{PREFIX}_state_since_seconds", "when the machine state began (POSIX s)",
                              labels=["device"])
    seconds = CounterMetricFamily(f"{PREFIX}_state_seconds", "seconds in each machine state since the collector "
                                  "started", labels=["device", "state"])
    parts = CounterMetricFamily(f"{PREFIX}_parts", "parts counted by the counter tags since the collector "
                                "started (wraps and resets handled)", labels=["device", "counter"])
    for dev, m in tracker.machines.items():
        for s in STATES[:-1]:
            state.add_metric([dev, s], 1.0 if m.segment.state == s else 0.0)
        since.add_metric([dev], m.since)
        for s in STATES[:-1]:
            open_part = max(0.0, now - m.segment.start) if m.segment.state == s else 0.0
            seconds.add_metric([dev, s], m.totals.get(s, 0.0) + open_part)
        for role, v in m.parts_total.items():
            parts.add_metric([dev, role], v)
    yield from (state, since, seconds, parts)
    shift = c.states.shift
    if shift is None:
        return
    ratio = GaugeMetricFamily(f"{PREFIX}_shift_ratio", "the current shift's figure (0..1; absent when its input "
                              "is missing)", labels=["device", "figure"])
    for dev, f in shift["devices"].items():
        for key in SHIFT_FIGURES:
            v = f[key]["value"]
            if v is not None:
                ratio.add_metric([dev, key], float(v))
    yield ratio
