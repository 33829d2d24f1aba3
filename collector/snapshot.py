"""One device's picture as HTTP (`/api/devices`, `/api/status`), the demo's terminal view and `collector status`
show it: config, state, task counters and the latest value of every configured tag. Built here only, from the
read-only queries of the parts that hold it (status tracker, `Pipeline.latest_for`, `Engine.task_stats`,
`Outbox.last_seq`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collector.app import Collector


def device_snapshot(c: Collector, dev_id: str) -> dict[str, Any] | None:
    """None for a device the running config does not have."""
    dev = next((d for d in c.cfg.devices if d.id == dev_id), None)
    st = c.status.devices.get(dev_id)
    if dev is None or st is None:
        return None
    latest = c.pipeline.latest_for(dev_id)
    task = c.engine.task_stats(dev_id)
    tags = []
    for tag in dev.tags:
        r = latest.get(tag.name)
        tags.append({"name": tag.name, "value": None if r is None else r.value,
                     "unit": tag.unit if r is None else r.unit, "quality": None if r is None else r.quality,
                     "ts": None if r is None else r.source_ts})
    return {
        "id": dev.id, "name": dev.name or dev.id, "protocol": dev.protocol, "endpoint": dev.endpoint,
        "enabled": dev.enabled, "interval": dev.interval, "state": str(st.state), "since": st.since,
        "reason": st.reason, "last_good": st.last_good, "last_delivered": st.last_delivered,
        "online": str(st.state) in ("online", "degraded"), "seq": c.outbox.last_seq(dev_id),
        # a subscribing device is never polled: it counts the publishes it delivered instead
        "mode": task.mode if task else None,
        "polls": (None if task.subscribing else task.polls) if task else 0,
        "publishes": (task.publishes if task.subscribing else None) if task else None,
        "reconnects": task.reconnects if task else 0, "errors": task.errors if task else 0,
        "last_poll_duration": task.last_poll_duration if task else None,
        # `values` in the shape collector/view.py renders: tag -> [value, unit, quality]
        "values": {t["name"]: [t["value"], t["unit"], t["quality"]] for t in tags if t["quality"] is not None},
        "tags": tags,
    }


def devices_snapshot(c: Collector) -> list[dict[str, Any]]:
    """Every configured device, in config order."""
    return [d for d in (device_snapshot(c, dev.id) for dev in c.cfg.devices) if d is not None]
