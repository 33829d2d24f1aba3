"""Figures of a period (a day, a month, today's shifts) per device, read from status.db's machine_states.

The one place the CLI (`collector oee`), the status page, the MQTT shift summary and the monthly report's
appendix get their figures from, so they always agree.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

from collector.indicators.periods import Period, iso_local
from collector.states.figures import Tally, figures, tally
from collector.states.presets import resolve
from collector.states.shifts import Shift, Shifts
from collector.status import StatusStore

if TYPE_CHECKING:
    from collector.config import CollectorConfig

NAMES = {  # figure key -> (中文, English): what managers read
    "availability": ("时间开动率 (可用率)", "availability"),
    "utilization": ("稼动率", "utilization"),
    "performance": ("性能开动率", "performance"),
    "quality": ("合格品率", "quality"),
    "oee": ("设备综合效率 OEE", "OEE"),
    "planned_operation_time_s": ("计划运行时间", "planned operation time"),
    "planned_busy_time_s": ("计划负荷时间", "planned busy time"),
    "actual_production_time_s": ("实际生产时间", "actual production time"),
    "unknown_s": ("未采集时间 (采集器停机)", "unknown (collector down)"),
}
STATE_NAMES = {"running": ("运行", "running"), "idle": ("空闲", "idle"), "setup": ("调试/换型", "setup"),
               "fault": ("故障", "fault"), "planned_stop": ("计划停机", "planned stop"),
               "offline": ("离线", "offline"), "unknown": ("未知", "unknown")}


def configured(cfg: CollectorConfig) -> dict[str, tuple[float | None, set[str]]]:
    """Devices with machine states: id -> (ideal cycle time, counter roles it has)."""
    out: dict[str, tuple[float | None, set[str]]] = {}
    if not cfg.states.enabled:
        return out
    for dev in cfg.devices:
        found = resolve(dev.states, {t.name for t in dev.tags})
        if found is None:
            continue
        st = dev.states
        roles = {r for r, tag in (("parts", found[2]), ("good", st and st.good), ("scrap", st and st.scrap)) if tag}
        out[dev.id] = (st.ideal_cycle_time if st else None, roles)
    return out


def _shift_dict(s: Shift, tz: str) -> dict[str, Any]:
    return {"key": s.key, "day": s.day.isoformat(), "index": s.index, "label": s.label,
            "start": iso_local(s.start, tz), "end": iso_local(s.end, tz)}


def period_figures(cfg: CollectorConfig, store: StatusStore, period: Period, now: float,
                   devices: list[str] | None = None, per_shift: bool = True) -> dict[str, Any]:
    """Per device: figures of the whole period, per day and (optionally) per shift; plus all devices together."""
    tz = cfg.site.timezone
    shifts = Shifts(cfg.indicators.calendar, tz).of_days(period.days())
    conf = configured(cfg)
    ids = [d for d in conf if devices is None or d in devices]
    out: dict[str, Any] = {"period": period.to_dict() | {"label": period.label}, "timezone": tz,
                           "calendar": "indicators.calendar" if cfg.indicators.calendar else "whole days (no calendar)",
                           "devices": {}}
    rows = store.machine_states(shifts[0].start, shifts[-1].end) if shifts else []
    by_dev: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows:
        by_dev.setdefault(r[0], []).append(r)
    total = Tally()
    for dev in ids:
        ict, roles = conf[dev]
        segs = by_dev.get(dev, [])
        whole = Tally()
        days: dict[str, Tally] = {}
        shift_out = []
        ends = [x[2] for x in segs]  # segments do not overlap: sorted by start, their ends are sorted too
        starts = [x[1] for x in segs]
        for s in shifts:
            # from the segment before the shift on: a fault going on from the last shift is no new alarm
            first = max(0, bisect.bisect_right(ends, s.start) - 1)
            t = tally(segs[first:bisect.bisect_left(starts, s.end)], s, now, roles)
            whole.add(t)
            days.setdefault(s.day.isoformat(), Tally()).add(t)
            if per_shift and s.start < now:
                shift_out.append({**_shift_dict(s, tz), **figures(t, ict, roles)})
        total.add(whole)
        out["devices"][dev] = {"ideal_cycle_time_s": ict, "counters": sorted(roles), **figures(whole, ict, roles),
                               "days": {d: figures(t, ict, roles) for d, t in days.items()},
                               **({"shifts": shift_out} if per_shift else {})}
    # across devices: time ratios only (performance needs each machine's own cycle time)
    out["total"] = {k: v for k, v in figures(total, None, set()).items()
                    if k not in ("performance", "quality", "oee", "produced_quantity", "good_quantity")}
    return out


def shift_figures(cfg: CollectorConfig, store: StatusStore, now: float) -> dict[str, Any] | None:
    """The running (or last) shift's figures per device: the status page and the MQTT summary."""
    tz = cfg.site.timezone
    shift = Shifts(cfg.indicators.calendar, tz).latest(now)
    if shift is None:
        return None
    rows = store.machine_states(shift.start - 1.0, shift.end)  # with the segment just before (alarm count)
    out: dict[str, Any] = {**_shift_dict(shift, tz), "final": now >= shift.end, "ts": iso_local(now, tz),
                           "devices": {}}
    for dev, (ict, roles) in configured(cfg).items():
        t = tally([r for r in rows if r[0] == dev], shift, now, roles)
        out["devices"][dev] = figures(t, ict, roles)
    return out


def timeline(cfg: CollectorConfig, store: StatusStore, now: float) -> dict[str, Any]:
    """Today's segments per device (merged across shift cuts), for the status page's strip."""
    tz = cfg.site.timezone
    from collector.indicators.periods import day, local_date

    p = day(local_date(now, tz), tz)
    out: dict[str, list[list[Any]]] = {d: [] for d in configured(cfg)}
    for dev, s, e, state, *_ in store.machine_states(p.start, p.end):
        if dev not in out:
            continue
        s, e = max(s, p.start), min(e, p.end, now)
        segs = out[dev]
        if segs and segs[-1][2] == state and abs(segs[-1][1] - s) < 1e-6:
            segs[-1][1] = e
        elif e > s:
            segs.append([s, e, state])
    return {"start": p.start, "end": p.end, "now": now, "day": p.label, "devices": out}


def pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f} %"


def hours(s: float) -> str:
    return f"{s / 3600:.2f} h"


def figure_name(key: str, lang: str) -> str:
    zh, en = NAMES[key]
    return zh if lang == "zh" else en

