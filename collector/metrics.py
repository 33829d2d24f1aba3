"""Prometheus metrics of a running collector (prometheus-client), served on `/metrics`.

Almost everything is read from the collector at scrape time (a custom registry collector), so the hot path
(polls, batches) pays nothing for metrics and the figures can never drift from what the status page shows.
The one thing that must be observed as it happens is the sink latency: a histogram fed by the status tracker
each time a good batch is acknowledged.

Each Collector gets its own registry (not the process-wide default), so tests can run several side by side.
Metric names and labels are listed in docs/operations.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector as RegistryCollector

from collector.model import DeviceState

if TYPE_CHECKING:
    from collector.app import Collector

PREFIX = "shopfloor"
STATES = [str(s) for s in DeviceState]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
# outbox stats keys (Outbox.stats, per sink) → (metric suffix, kind, help)
OUTBOX_KEYS: dict[str, tuple[str, str, str]] = {
    "depth_batches": ("depth_batches", "gauge", "batches waiting in the outbox"),
    "depth_readings": ("depth_readings", "gauge", "readings waiting in the outbox"),
    "bytes": ("bytes", "gauge", "payload bytes held by the outbox"),
    "memory_batches": ("memory_batches", "gauge", "batches waiting in memory while the outbox cannot write"),
    "memory_bytes": ("memory_bytes", "gauge", "bytes those batches cost in memory (payload and objects)"),
    "oldest_age_s": ("oldest_age_seconds", "gauge", "age of the oldest batch waiting"),
    "dropped_batches": ("dropped_batches", "counter", "batches dropped by the outbox bounds (bytes/age)"),
    "dropped_readings": ("dropped_readings", "counter", "readings dropped by the outbox bounds (bytes/age)"),
    "delivered_readings": ("delivered_readings", "counter", "readings delivered from the outbox"),
    "delivery_rate": ("delivery_rate", "gauge", "readings delivered per second over the last 10 s"),
}


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    return None


class _Snapshot(RegistryCollector):
    """Reads the collector when Prometheus scrapes."""

    def __init__(self, collector: Collector) -> None:
        self.c = collector

    def collect(self) -> Iterator[Metric]:
        yield from self._gateway()
        yield from self._devices()
        yield from self._sink()
        yield from self._hub()
        yield from self._outbox()
        yield from self._indicators()
        from collector.states.metrics import families  # machine states (docs/states.md)

        yield from families(self.c)

    def _gateway(self) -> Iterator[Metric]:
        c = self.c
        g = GaugeMetricFamily(f"{PREFIX}_collector_start_time_seconds", "when the collector started (POSIX s)")
        g.add_metric([], c.started)
        yield g
        g = GaugeMetricFamily(f"{PREFIX}_collector_devices", "devices in the running config", labels=["enabled"])
        g.add_metric(["true"], sum(1 for d in c.cfg.devices if d.enabled))
        g.add_metric(["false"], sum(1 for d in c.cfg.devices if not d.enabled))
        yield g
        counts: dict[str, int] = getattr(c, "reload_counts", {}) or {}
        r = CounterMetricFamily(f"{PREFIX}_config_reloads", "config reloads by result", labels=["result"])
        for result in ("applied", "rejected"):
            r.add_metric([result], counts.get(result, 0))
        yield r

    def _devices(self) -> Iterator[Metric]:
        c = self.c
        state = GaugeMetricFamily(f"{PREFIX}_device_state", "1 for the device's current state",
                                  labels=["device", "state"])
        up = GaugeMetricFamily(f"{PREFIX}_device_up", "1 when online or degraded", labels=["device"])
        since = GaugeMetricFamily(f"{PREFIX}_device_state_since_seconds", "when the state began (POSIX s)",
                                  labels=["device"])
        last_good = GaugeMetricFamily(f"{PREFIX}_device_last_good_seconds", "time of the last good sample",
                                      labels=["device"])
        seq = GaugeMetricFamily(f"{PREFIX}_device_sequence", "last sequence number given", labels=["device"])
        polls = SummaryMetricFamily(f"{PREFIX}_device_poll_duration_seconds", "time one poll of every tag took",
                                    labels=["device"])
        last_poll = GaugeMetricFamily(f"{PREFIX}_device_last_poll_duration_seconds", "duration of the last poll",
                                      labels=["device"])
        readings = CounterMetricFamily(f"{PREFIX}_device_readings", "tag values read", labels=["device"])
        bad = CounterMetricFamily(f"{PREFIX}_device_bad_readings", "tag values read with a quality other than "
                                  "good", labels=["device"])
        errors = CounterMetricFamily(f"{PREFIX}_device_errors", "connection/session failures (each one backs off)",
                                     labels=["device"])
        reconnects = CounterMetricFamily(f"{PREFIX}_device_reconnects", "sessions opened again after the first "
                                         "one ended", labels=["device"])
        publishes = CounterMetricFamily(f"{PREFIX}_device_publishes", "subscription notifications delivered "
                                        "(subscribing devices)", labels=["device"])
        for dev in c.cfg.devices:
            st = c.status.devices.get(dev.id)
            if st is None:
                continue
            for s in STATES:
                state.add_metric([dev.id, s], 1.0 if str(st.state) == s else 0.0)
            up.add_metric([dev.id], 1.0 if st.state in (DeviceState.ONLINE, DeviceState.DEGRADED) else 0.0)
            since.add_metric([dev.id], st.since)
            if st.last_good is not None:
                last_good.add_metric([dev.id], st.last_good)
            seq.add_metric([dev.id], c.outbox.last_seq(dev.id))
            task = c.engine.task_stats(dev.id)
            if task is None:
                continue
            polls.add_metric([dev.id], count_value=task.polls, sum_value=task.poll_seconds)
            last_poll.add_metric([dev.id], task.last_poll_duration)
            readings.add_metric([dev.id], task.readings)
            bad.add_metric([dev.id], task.bad_readings)
            errors.add_metric([dev.id], task.errors)
            reconnects.add_metric([dev.id], task.reconnects)
            if task.subscribing:
                publishes.add_metric([dev.id], task.publishes)
        yield from (state, up, since, last_good, seq, polls, last_poll, readings, bad, errors, reconnects, publishes)

    def _sink(self) -> Iterator[Metric]:
        stats = [(sink.name, sink.stats()) for sink in self.c.sinks]
        g = GaugeMetricFamily(f"{PREFIX}_sink_connected", "1 when the sink is connected", labels=["sink"])
        for name, s in stats:
            g.add_metric([name], 1.0 if s.get("connected") else 0.0)
        yield g
        g = GaugeMetricFamily(f"{PREFIX}_sink_pending", "messages sent and not yet acknowledged", labels=["sink"])
        for name, s in stats:
            g.add_metric([name], float(s.get("in_flight", 0)))
        yield g
        for key, doc in (("published", "messages handed to the sink"), ("acked", "messages acknowledged"),
                         ("errors", "publish errors"),
                         ("refused", "messages the broker refused (MQTT 5 PUBACK >= 0x80; the hub sink)")):
            m = CounterMetricFamily(f"{PREFIX}_sink_{key}", doc, labels=["sink"])
            for name, s in stats:
                if key in s:
                    m.add_metric([name], s[key])
            yield m

    def _hub(self) -> Iterator[Metric]:
        """The hub's receipts by outcome (`evidence.hub`): accepted, duplicate, incident, refused, bad_signature,
        not_ours (another collector's), unknown_record."""
        book = self.c.hub_receipts
        if book is None:
            return
        m = CounterMetricFamily(f"{PREFIX}_hub_receipts", "receipts from the hub, by outcome", labels=["outcome"])
        for outcome, n in sorted(book.counts.items()):
            m.add_metric([outcome], n)
        yield m

    def _outbox(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for sink, stats in self.c.outbox_stats().items():
            for key, value in stats.items():
                v = _num(value)
                if v is None:
                    continue
                suffix, kind, doc = OUTBOX_KEYS.get(key, (key, "gauge", f"outbox {key}"))
                name = f"{PREFIX}_outbox_{suffix}"
                fam = families.get(name)
                if fam is None:
                    fam = (CounterMetricFamily(name, doc, labels=["sink"]) if kind == "counter"
                           else GaugeMetricFamily(name, doc, labels=["sink"]))
                    families[name] = fam
                fam.add_metric([sink], v)
        yield from families.values()

    def _indicators(self) -> Iterator[Metric]:
        snap = self.c.indicators()
        fams = {k: GaugeMetricFamily(f"{PREFIX}_indicator_{k}", doc, labels=["indicator", "scope"])
                for k, doc in (("value", "live indicator value (0..1)"), ("numerator", "numerator"),
                               ("denominator", "denominator"), ("target", "target (0..1)"),
                               ("passed", "1 when at or above target"))}
        scopes = [("enterprise", snap["figures"])] + [(f"workshop:{ws}", figs)
                                                      for ws, figs in snap.get("workshops", {}).items()]
        for scope, figures in scopes:
            for fid, f in figures.items():
                for key, fam in fams.items():
                    v = _num(f.get(key))
                    if v is not None:
                        fam.add_metric([fid, scope], v)
        yield from fams.values()


class Metrics:
    """The registry of one collector, and the sink-latency histogram fed by acknowledgements."""

    def __init__(self, collector: Collector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Snapshot(collector))
        self.sink_latency = Histogram(
            f"{PREFIX}_sink_latency_seconds",
            "time from a good batch leaving the pipeline to its acknowledgement by the sink (includes outbox time)",
            ["sink"], registry=self.registry, buckets=LATENCY_BUCKETS)
        self._latency = self.sink_latency.labels(collector.sink.name)  # the sink whose acks prove delivery
        collector.status.delivery_listeners.append(self._delivered)

    def _delivered(self, device: str, good_ts: float) -> None:
        self._latency.observe(max(0.0, time.time() - good_ts))

    def render(self) -> bytes:
        return generate_latest(self.registry)
