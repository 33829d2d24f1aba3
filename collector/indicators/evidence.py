"""networked(d, P): the evidence rule of 数字化设备联网率 (INDICATORS.md, defset v1).

Expected buckets of a device in P = the buckets in which the collector itself was running (uptime buckets),
∩ the shift calendar when one is configured, ∩ the time since the device was commissioned, counting complete
buckets only. Its good buckets = the buckets holding a good, fresh sample that the sink acknowledged no later
than P closes, counted only inside the expected buckets (so coverage never exceeds 100 %).

networked(d, P) ⇔ d is bound to a configured device, its identity does not say simulator (unless
`allow_simulated`), expected > 0, good ≥ coverage × expected and good days ≥ day_share × expected days —
compared as exact fractions.

Everything is grouped per local day once, so the month figure, the daily chart and the per-device coverage
come from the same counts.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from collector.config import WEEKDAYS, CalendarConfig, IndicatorConfig
from collector.indicators.periods import Period
from collector.indicators.register import Asset
from collector.status import StatusStore


def exact(x: float) -> Fraction:
    """0.8 as 4/5, not as the binary float nearest to it: thresholds are compared exactly."""
    return Fraction(str(x))


def meets(part: int, whole: int, share: float) -> bool:
    """part ≥ share × whole, exactly (e.g. 8 of 10 meets 0.80)."""
    return Fraction(part) >= exact(share) * whole


class ShiftCalendar:
    """Whether a moment is planned production time: a working day (or 调休 workday) and inside a shift."""

    def __init__(self, cfg: CalendarConfig, tz: str) -> None:
        self.cfg = cfg
        self.tz = zoneinfo.ZoneInfo(tz)
        self.shifts = cfg.shift_minutes()
        self.holidays = set(cfg.holidays)
        self.workdays = set(cfg.workdays)
        self.weekdays = {WEEKDAYS.index(d) for d in cfg.working_days}

    def working_day(self, d: dt.date) -> bool:
        if d in self.workdays:
            return True
        return d not in self.holidays and d.weekday() in self.weekdays

    def contains(self, ts: float) -> bool:
        """A shift that runs past midnight belongs to the day it starts on."""
        local = dt.datetime.fromtimestamp(ts, self.tz)
        minute = local.hour * 60 + local.minute + local.second / 60
        today = local.date()
        for a, b in self.shifts:
            if self.working_day(today) and a <= minute < b:
                return True
            if b > 1440 and self.working_day(today - dt.timedelta(days=1)) and minute + 1440 < b:
                return True
        return False


@dataclass
class DeviceEvidence:
    """Per-asset counts of one period, by local day: day -> [expected buckets, good buckets]."""

    by_day: dict[dt.date, list[int]] = field(default_factory=dict)
    first_good: float | None = None
    last_good: float | None = None  # end of the last good bucket
    late_buckets: int = 0  # good buckets acknowledged after the period closed (not counted)

    @property
    def expected(self) -> int:
        return sum(v[0] for v in self.by_day.values())

    @property
    def good(self) -> int:
        return sum(v[1] for v in self.by_day.values())

    @property
    def expected_days(self) -> int:
        return sum(1 for v in self.by_day.values() if v[0] > 0)

    @property
    def good_days(self) -> int:
        return sum(1 for v in self.by_day.values() if v[1] > 0)

    @property
    def coverage(self) -> float | None:
        return None if self.expected == 0 else self.good / self.expected


@dataclass
class Verdict:
    networked: bool
    reason: str | None  # why not, in English (the report translates the code)
    code: str  # networked, not_bound, simulated, not_digital, no_expected_time, coverage, day_share


def judge(asset: Asset, ev: DeviceEvidence, cfg: IndicatorConfig, simulated: str | None = None) -> Verdict:
    """networked(d, P) from the counts, with the reason when it fails; `simulated` is why the device's identity
    says simulator (collector/indicators/identity.py), if it does."""
    if asset.device is None:
        return Verdict(False, "not bound to a configured device", "not_bound")
    if simulated is not None and not cfg.allow_simulated:
        return Verdict(False, f"simulated device: its identity says {simulated} (counted only with "
                       "indicators.allow_simulated)", "simulated")
    if ev.expected == 0:
        return Verdict(False, "no expected time in the period (collector not running / outside shifts)",
                       "no_expected_time")
    if not meets(ev.good, ev.expected, cfg.coverage):
        return Verdict(False, f"{ev.good} of {ev.expected} expected buckets good, below {cfg.coverage:.0%}",
                       "coverage")
    if not meets(ev.good_days, ev.expected_days, cfg.day_share):
        return Verdict(False, f"{ev.good_days} of {ev.expected_days} expected days with data, below "
                       f"{cfg.day_share:.0%}", "day_share")
    return Verdict(True, None, "networked")


@dataclass
class EvidenceData:
    """Raw evidence of a window: the collector's uptime buckets and each device's (bucket, acked_at)."""

    uptime: list[int]
    good: dict[str, list[tuple[int, float | None]]]
    first_run: float | None = None  # the collector's first start: no good data is shown from before it

    @classmethod
    def load(cls, store: StatusStore, start: float, end: float) -> EvidenceData:
        good: dict[str, list[tuple[int, float | None]]] = defaultdict(list)
        for device, bucket, acked in store.good_bucket_rows(start, end):
            good[device].append((bucket, acked))
        return cls(store.uptime_buckets(start, end), dict(good), store.first_run())


def expected_mask(uptime: Iterable[int], period: Period, cfg: IndicatorConfig, now: float,
                  calendar: ShiftCalendar | None) -> dict[int, dt.date]:
    """Expected buckets (before the per-device commissioning cut) with their local day.

    Only complete buckets count: a bucket whose end is after `now` is still filling."""
    tz = zoneinfo.ZoneInfo(period.tz)
    out: dict[int, dt.date] = {}
    for b in uptime:
        if b < period.start or b >= period.end or b + cfg.bucket > now:
            continue
        if calendar is not None and not calendar.contains(b):
            continue
        out[b] = dt.datetime.fromtimestamp(b, tz).date()
    return out


def collect(assets: Iterable[Asset], data: EvidenceData, period: Period, cfg: IndicatorConfig,
            now: float) -> dict[str, DeviceEvidence]:
    """Per asset id, its evidence in the period (acks after the period's close are left out)."""
    calendar = ShiftCalendar(cfg.calendar, period.tz) if cfg.calendar is not None else None
    mask = expected_mask(data.uptime, period, cfg, now, calendar)
    days = period.days()
    out: dict[str, DeviceEvidence] = {}
    for a in assets:
        ev = DeviceEvidence(by_day={d: [0, 0] for d in days})
        since = a.commissioned
        for d in mask.values():
            if since is None or d >= since:
                ev.by_day.setdefault(d, [0, 0])[0] += 1
        if a.device is not None:
            for b, acked in data.good.get(a.device, []):
                if acked is not None and acked > period.closes:
                    ev.late_buckets += 1
                    continue
                d_ = mask.get(b)
                if d_ is None or (since is not None and d_ < since):
                    continue
                ev.by_day[d_][1] += 1
                shown = b if data.first_run is None else max(b, data.first_run)  # a bucket may start before it
                ev.first_good = shown if ev.first_good is None else min(ev.first_good, shown)
                ev.last_good = b + cfg.bucket if ev.last_good is None else max(ev.last_good, b + cfg.bucket)
        out[a.id] = ev
    return out


def day_evidence(ev: DeviceEvidence, d: dt.date) -> DeviceEvidence:
    """The same counts restricted to one day (for the daily chart)."""
    return DeviceEvidence(by_day={d: list(ev.by_day.get(d, [0, 0]))})


def rule_params(cfg: IndicatorConfig, period: Period) -> dict[str, Any]:
    """Every parameter of the evidence rule, as stored with each figure."""
    return {
        "period": period.label, **{k: v for k, v in period.to_dict().items() if k != "label"},
        "bucket_s": cfg.bucket, "coverage": cfg.coverage, "day_share": cfg.day_share,
        "stale_after_s": cfg.stale_after,
        "expected_time": "shift calendar ∩ collector uptime" if cfg.calendar else "collector uptime",
        "calendar": cfg.calendar.model_dump(mode="json") if cfg.calendar else None,
    }
