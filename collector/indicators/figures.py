"""Figures of a period (now, a day, a month, a year) for every workshop and the enterprise, with the per-device
evidence behind them: what `collector indicators`, the report, the live snapshot and the monthly record share.

Year: D1, D1v, D1k and D3 are stock figures on Dec 31 (or today while the year runs); D2 and D2a pool the
months (Σ networked device-months / Σ digital device-months) from the first month the collector ran in.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from collector.config import CollectorConfig
from collector.indicators import periods
from collector.indicators.evidence import (
    DeviceEvidence,
    EvidenceData,
    Verdict,
    collect,
    day_evidence,
    judge,
    rule_params,
)
from collector.indicators.live import live_figures
from collector.indicators.periods import Period, iso_local
from collector.indicators.rates import DEFSET, Figure, cnc_figures, networking_figures
from collector.indicators.register import Asset
from collector.status import DeviceStatus, StatusStore

FIGURE_ORDER = ("D1", "D1v", "D1k", "D2", "D2a", "D3")
# Tag names or OPC UA nodes that show a stored program at work (MachineTool / CNC companion specs, program tags)
PROGRAM_HINT = re.compile(r"program|nc_?mode|op(erating)?_?mode|machinetool|cnc", re.IGNORECASE)


@dataclass
class DeviceRow:
    """One register entry in a period: flags, membership of U and the evidence of networked(d, P)."""

    asset: Asset
    in_universe: bool
    evidence: DeviceEvidence | None = None
    verdict: Verdict | None = None
    networked_months: tuple[int, int] | None = None  # year: (networked, counted) months
    last_delivered: float | None = None

    def to_dict(self, tz: str) -> dict[str, Any]:
        a = self.asset
        ev = self.evidence
        return {
            "id": a.id, "name": a.name, "workshop": a.workshop, "line": a.line, "category": a.category,
            "usage": a.usage, "status": a.status,
            "commissioned": a.commissioned.isoformat() if a.commissioned else None,
            "is_cnc": a.is_cnc, "is_digital": a.is_digital, "digital_basis": a.digital_basis,
            "is_key_process": a.is_key_process, "original_value": a.original_value, "device": a.device,
            "protocol": a.protocol, "endpoint": a.endpoint, "source": a.source, "in_universe": self.in_universe,
            "expected_buckets": ev.expected if ev else None, "good_buckets": ev.good if ev else None,
            "coverage": ev.coverage if ev else None,
            "expected_days": ev.expected_days if ev else None, "good_days": ev.good_days if ev else None,
            "late_buckets": ev.late_buckets if ev else None,
            "first_good": iso_local(ev.first_good, tz) if ev and ev.first_good is not None else None,
            "last_good": iso_local(ev.last_good, tz) if ev and ev.last_good is not None else None,
            "networked": self.verdict.networked if self.verdict else None,
            "reason": self.verdict.code if self.verdict else None,
            "reason_text": self.verdict.reason if self.verdict else None,
            "networked_months": list(self.networked_months) if self.networked_months else None,
            "last_delivered": iso_local(self.last_delivered, tz) if self.last_delivered else None,
        }


@dataclass
class DayFigure:
    date: dt.date
    figure: Figure | None  # None: no expected time that day (collector down, or no shift)


@dataclass
class PeriodResult:
    """Everything of one period: enterprise and workshop figures, devices, the daily series."""

    cfg: CollectorConfig
    period: Period
    now: float
    figures: list[Figure]
    workshops: dict[str, list[Figure]]
    devices: list[DeviceRow]
    params: dict[str, Any]
    daily: list[DayFigure] = field(default_factory=list)
    months: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    measured: bool = True  # False: the collector never ran in the period (无采集记录): nothing to chain

    @property
    def status(self) -> str:
        """closed, not_measured (closed, but the collector never ran in it), provisional or live."""
        if self.period.kind == "now":
            return "live"
        if not self.closed:
            return "provisional"
        return "closed" if self.measured else "not_measured"

    @property
    def closed(self) -> bool:
        return self.period.kind != "now" and self.period.closed(self.now)

    def figure(self, id_: str, workshop: str | None = None) -> Figure:
        figs = self.figures if workshop is None else self.workshops[workshop]
        return next(f for f in figs if f.id == id_)

    def to_dict(self, devices: bool = True) -> dict[str, Any]:
        site = self.cfg.site
        tz = self.period.tz
        out: dict[str, Any] = {
            "defset": DEFSET, "kind": "indicators", "enterprise": site.enterprise_id,
            "enterprise_name": site.enterprise_name, "county": site.county, "city": site.city,
            "collector_workshop": site.workshop, "period": self.period.to_dict() | {"label": self.period.label},
            "status": self.status,
            "computed_at": iso_local(self.now, tz), "snapshot": self.period.snapshot(self.now).isoformat(),
            "targets": self.cfg.indicators.targets.model_dump(), "params": self.params,
            "figures": {f.id: f.to_dict() for f in self.figures},
            "workshops": {ws: {f.id: f.to_dict() for f in figs} for ws, figs in self.workshops.items()},
            "warnings": self.warnings,
        }
        if self.daily:
            out["daily"] = [{"date": d.date.isoformat(),
                             **({"numerator": d.figure.numerator, "denominator": d.figure.denominator,
                                 "value": d.figure.value, "passed": d.figure.passed} if d.figure else
                                {"numerator": None, "denominator": None, "value": None, "passed": None})}
                            for d in self.daily]
        if self.months:
            out["months"] = self.months
        if devices:
            out["devices"] = [r.to_dict(tz) for r in self.devices]
        return out


def register_warnings(cfg: CollectorConfig, assets: list[Asset]) -> list[str]:
    """Register flags that live data or the other flags contradict: reported, never applied."""
    out: list[str] = []
    devices = {d.id: d for d in cfg.devices}
    for a in assets:
        if a.is_cnc and not a.is_digital:
            out.append(f"{a.id}: is_cnc but not is_digital (a stored-program controller is digital)")
        if a.is_cnc and a.digital_basis == "retrofit_sensing":
            out.append(f"{a.id}: is_cnc with digital_basis retrofit_sensing (a monitoring retrofit is not CNC)")
        dev = devices.get(a.device or "")
        if dev is None:
            continue
        if not a.is_digital:
            out.append(f"{a.id}: bound to device {dev.id} (it speaks {dev.protocol}) but is_digital is false")
        hints = [t.name for t in dev.tags if PROGRAM_HINT.search(t.name + " " + str(getattr(t, "node", "")))]
        if hints and not a.is_cnc:
            out.append(f"{a.id}: device {dev.id} exposes program/mode data ({', '.join(hints)}) but the register "
                       "says is_cnc: false; the register value is used")
    return out


def _workshops(assets: list[Asset]) -> list[str]:
    return sorted({a.workshop for a in assets})


def _rates(cfg: CollectorConfig, assets: list[Asset], on: dt.date, networked: Callable[[Asset], bool],
           params: dict[str, Any]) -> list[Figure]:
    ind = cfg.indicators
    return [*cnc_figures(assets, on, ind.targets.cnc_rate),
            *networking_figures(assets, on, networked, ind.targets.networking_rate, params, ind.scope)]


def _now(cfg: CollectorConfig, assets: list[Asset], period: Period, now: float,
         statuses: Mapping[str, DeviceStatus]) -> PeriodResult:
    ind, tz = cfg.indicators, period.tz
    window = ind.live_window_s
    figs = live_figures(assets, statuses, now, ind, tz)
    wss = {ws: live_figures([a for a in assets if a.workshop == ws], statuses, now, ind, tz)
           for ws in _workshops(assets)}
    rows = []
    on = period.snapshot(now)
    for a in assets:
        st = statuses.get(a.device or "")
        last = st.last_delivered if st else None
        net = a.device is not None and last is not None and now - last <= window
        rows.append(DeviceRow(a, a.in_universe(on, ind.scope), None,
                              Verdict(net, None if net else "no good sample delivered within the live window",
                                      "networked" if net else ("not_bound" if a.device is None else "live_window")),
                              last_delivered=last))
    return PeriodResult(cfg, period, now, figs, wss, rows, {"period": "now", "window_s": window, "scope": ind.scope})


def _window(cfg: CollectorConfig, assets: list[Asset], period: Period, now: float, store: StatusStore,
            daily: bool) -> PeriodResult:
    ind = cfg.indicators
    data = EvidenceData.load(store, period.start, period.end)
    evs = collect(assets, data, period, ind, now)
    verdicts = {a.id: judge(a, evs[a.id], ind) for a in assets}
    on = period.snapshot(now)
    params = rule_params(ind, period)

    def networked(a: Asset) -> bool:
        return verdicts[a.id].networked

    figs = _rates(cfg, assets, on, networked, params)
    wss = {ws: _rates(cfg, [a for a in assets if a.workshop == ws], on, networked, params)
           for ws in _workshops(assets)}
    rows = [DeviceRow(a, a.in_universe(on, ind.scope), evs[a.id], verdicts[a.id]) for a in assets]
    result = PeriodResult(cfg, period, now, figs, wss, rows, params, measured=bool(data.uptime))
    if daily:
        today = periods.local_date(now, period.tz)
        for d in period.days():
            if d > today:
                break
            day_ev = {a.id: day_evidence(evs[a.id], d) for a in assets}
            if not any(e.expected for e in day_ev.values()):
                result.daily.append(DayFigure(d, None))
                continue
            day_net = {a.id for a in assets if judge(a, day_ev[a.id], ind).networked}
            d2 = networking_figures(assets, d, _member(day_net),
                                    ind.targets.networking_rate, {"period": d.isoformat()}, ind.scope)[0]
            result.daily.append(DayFigure(d, d2))
    return result


def _workshop_of(ws: str) -> Callable[[PeriodResult], list[Figure]]:
    return lambda m: m.workshops[ws]


def _member(ids: set[str]) -> Callable[[Asset], bool]:
    return lambda a: a.id in ids


def _year(cfg: CollectorConfig, assets: list[Asset], period: Period, now: float, store: StatusStore) -> PeriodResult:
    ind = cfg.indicators
    first = store.first_uptime()
    months: list[PeriodResult] = []
    if first is not None:  # months that ended before the collector first ran hold no evidence: left out
        months = [_window(cfg, assets, p, now, store, daily=False)
                  for p in periods.months_of_year(int(period.label), now, period.tz) if p.end > first]
    on = period.snapshot(now)
    labels = [m.period.label for m in months]
    params = {**rule_params(ind, period), "pooled": "device-months", "months": labels}

    def pooled(figs_of: Callable[[PeriodResult], list[Figure]], stock: list[Figure]) -> list[Figure]:
        out = []
        for f in stock:
            if f.id in ("D2", "D2a"):
                parts = [next(x for x in figs_of(m) if x.id == f.id) for m in months]
                out.append(Figure(f.id, sum(x.numerator for x in parts), sum(x.denominator for x in parts),
                                  f.target, {**params, "scope": ind.scope}))
            else:
                out.append(f)
        return out

    figs = pooled(lambda m: m.figures, _rates(cfg, assets, on, lambda a: False, params))
    wss = {ws: pooled(_workshop_of(ws),
                      _rates(cfg, [a for a in assets if a.workshop == ws], on, lambda a: False, params))
           for ws in _workshops(assets)}
    rows = []
    for i, a in enumerate(assets):
        mine = [m.devices[i] for m in months]  # every month lists the same assets in the same order
        counted = [r for r in mine if r.in_universe and a.is_digital]
        net = sum(1 for r in counted if r.verdict is not None and r.verdict.networked)
        ev = DeviceEvidence()
        for r in mine:
            if r.evidence:
                for d, v in r.evidence.by_day.items():
                    ev.by_day[d] = v
                for attr, fn in (("first_good", min), ("last_good", max)):
                    x, y = getattr(ev, attr), getattr(r.evidence, attr)
                    setattr(ev, attr, y if x is None else (x if y is None else fn(x, y)))
        rows.append(DeviceRow(a, a.in_universe(on, ind.scope), ev, None, (net, len(counted))))
    return PeriodResult(cfg, period, now, figs, wss, rows, params, months=labels, measured=bool(months))


def compute(cfg: CollectorConfig, assets: list[Asset], store: StatusStore, period: Period, now: float | None = None,
            statuses: Mapping[str, DeviceStatus] | None = None, warnings: list[str] | None = None) -> PeriodResult:
    """The figures of any period; `now` defaults to the clock (tests pass it)."""
    now = time.time() if now is None else now
    if period.kind == "now":
        result = _now(cfg, assets, period, now, statuses if statuses is not None else store.load_statuses())
    elif period.kind == "year":
        result = _year(cfg, assets, period, now, store)
    else:
        result = _window(cfg, assets, period, now, store, daily=period.kind == "month")
    result.warnings = [*(warnings or []), *register_warnings(cfg, assets)]
    return result


def chain_body(result: PeriodResult) -> dict[str, Any]:
    """The monthly summary appended to the evidence chain: every figure and, per device, the counts behind
    networked(d, P), so the month can be recomputed and checked."""
    body = result.to_dict(devices=False)
    body["kind"] = "monthly_summary"
    body["devices"] = [
        {"id": r.asset.id, "device": r.asset.device, "workshop": r.asset.workshop, "in_universe": r.in_universe,
         "is_cnc": r.asset.is_cnc, "is_digital": r.asset.is_digital, "is_key_process": r.asset.is_key_process,
         "original_value": r.asset.original_value,
         "expected_buckets": r.evidence.expected if r.evidence else None,
         "good_buckets": r.evidence.good if r.evidence else None,
         "expected_days": r.evidence.expected_days if r.evidence else None,
         "good_days": r.evidence.good_days if r.evidence else None,
         "networked": r.verdict.networked if r.verdict else None}
        for r in result.devices]
    return body
