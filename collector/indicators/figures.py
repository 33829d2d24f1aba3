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
from typing import TYPE_CHECKING, Any

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
from collector.indicators.identity import PeriodIdentity, period_identity
from collector.indicators.live import live_figures
from collector.indicators.notices import Notice
from collector.indicators.periods import Period, iso_local
from collector.indicators.rates import DEFSET, Figure, cnc_figures, networking_figures
from collector.indicators.register import Asset
from collector.status import DeviceStatus, IdentityRecord, StatusStore, changed_keys

if TYPE_CHECKING:  # the root model loads every protocol plugin; these figures need none
    from collector.config import CollectorConfig

FIGURE_ORDER = ("D1", "D1v", "D1k", "D2", "D2a", "D3")
# Printed on every report page and beside the figures when a simulated device is counted (allow_simulated)
SIMULATED_BANNER = "含模拟设备，不可用于评价"
SIMULATED_BANNER_EN = "Includes simulated devices: not valid for assessment"
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
    simulated: bool = False  # its identity evidence says simulator (模拟设备)
    excluded: str | None = None  # why it is outside U (register.Asset.excluded), None when in U
    simulated_reason: str | None = None
    identity: IdentityRecord | None = None  # the device's last identity in force in the period

    def to_dict(self, tz: str) -> dict[str, Any]:
        a = self.asset
        ev = self.evidence
        ident = self.identity
        return {
            "id": a.id, "name": a.name, "workshop": a.workshop, "line": a.line, "category": a.category,
            "usage": a.usage, "status": a.status,
            "commissioned": a.commissioned.isoformat() if a.commissioned else None,
            "is_cnc": a.is_cnc, "is_digital": a.is_digital, "digital_basis": a.digital_basis,
            "is_key_process": a.is_key_process, "original_value": a.original_value, "device": a.device,
            "protocol": a.protocol, "endpoint": a.endpoint, "source": a.source, "in_universe": self.in_universe,
            "excluded": self.excluded,
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
            "simulated": self.simulated, "simulated_reason": self.simulated_reason,
            "identity": None if ident is None else {"first_seen": iso_local(ident.first_seen, tz),
                                                    "last_seen": iso_local(ident.last_seen, tz),
                                                    "values": ident.values},
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
    simulated: list[str] = field(default_factory=list)  # ids of the simulated devices (assets) in U
    identity_warnings: list[dict[str, Any]] = field(default_factory=list)  # device, time, before, after
    measured: bool = True  # False: the collector never ran in the period (无采集记录): nothing to chain

    @property
    def banner(self) -> str | None:
        """SIMULATED_BANNER when simulated devices are counted (`allow_simulated`): every output carries it."""
        return SIMULATED_BANNER if self.simulated and self.cfg.indicators.allow_simulated else None

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
            "simulated": self.simulated, "identity_warnings": self.identity_warnings,
            "banner": self.banner, "banner_en": SIMULATED_BANNER_EN if self.banner else None,
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
    """Register flags that live data or the other flags contradict: reported, never applied.

    Each is a Notice: English for logs and JSON, Chinese for the zh report."""
    out: list[str] = []
    devices = {d.id: d for d in cfg.devices}
    for a in assets:
        who = f"{a.id} {a.name}" if a.name != a.id else a.id
        if a.is_cnc and not a.is_digital:
            out.append(Notice(f"{who}: is_cnc but not is_digital (a stored-program controller is digital)",
                              f"{who}：台账标为数控设备，但未标为数字化设备（存储程序控制的设备属于数字化设备）"))
        if a.is_cnc and a.digital_basis == "retrofit_sensing":
            out.append(Notice(f"{who}: is_cnc with digital_basis retrofit_sensing (a monitoring retrofit is not CNC)",
                              f"{who}：台账标为数控设备，但数字化方式为加装传感（仅加装监测不属于数控）"))
        dev = devices.get(a.device or "")
        if dev is None:
            continue
        if not a.is_digital:
            out.append(Notice(f"{who}: bound to device {dev.id} (it speaks {dev.protocol}) but is_digital is false",
                              f"{who}：已接入采集设备 {dev.id}（{dev.protocol} 协议），但台账标为非数字化设备"))
        hints = [t.name for t in dev.tags if PROGRAM_HINT.search(t.name + " " + str(getattr(t, "node", "")))]
        if hints and not a.is_cnc:
            out.append(Notice(f"{who}: device {dev.id} exposes program/mode data ({', '.join(hints)}) but the register "
                              "says is_cnc: false; the register value is used",
                              f"{who}：采集设备 {dev.id} 提供程序/模式数据（{'、'.join(hints)}），但台账标为非数控设备；"
                              "按台账计"))
    return out


def _workshops(assets: list[Asset]) -> list[str]:
    return sorted({a.workshop for a in assets})


def _rates(cfg: CollectorConfig, assets: list[Asset], on: dt.date, networked: Callable[[Asset], bool],
           params: dict[str, Any]) -> list[Figure]:
    ind = cfg.indicators
    return [*cnc_figures(assets, on, ind.targets.cnc_rate, ind.scope),
            *networking_figures(assets, on, networked, ind.targets.networking_rate, params, ind.scope)]


def _identity_rows(result: PeriodResult, ident: PeriodIdentity) -> None:
    """Mark the simulated rows, attach each device's identity, and list the changes of identity."""
    tz = result.period.tz
    for row in result.devices:
        dev = row.asset.device
        if dev is None:
            continue
        row.identity = ident.current.get(dev)
        reason = ident.simulated.get(dev)
        if reason is not None:
            row.simulated, row.simulated_reason = True, reason
    result.simulated = sorted(r.asset.id for r in result.devices if r.simulated and r.in_universe)
    by_device = {r.asset.device: r.asset for r in result.devices if r.asset.device is not None}
    for before, after in ident.changes:
        asset = by_device.get(after.device)
        result.identity_warnings.append({
            "device": after.device, "asset": asset.id if asset else None, "name": asset.name if asset else None,
            "time": iso_local(after.first_seen, tz), "changed": changed_keys(before.values, after.values),
            "before": {"first_seen": iso_local(before.first_seen, tz), "last_seen": iso_local(before.last_seen, tz),
                       "values": before.values},
            "after": {"first_seen": iso_local(after.first_seen, tz), "values": after.values}})


def _now(cfg: CollectorConfig, assets: list[Asset], period: Period, now: float,
         statuses: Mapping[str, DeviceStatus], ident: PeriodIdentity) -> PeriodResult:
    ind, tz = cfg.indicators, period.tz
    window = ind.live_window_s
    figs = live_figures(assets, statuses, now, ind, tz, ident.simulated)
    wss = {ws: live_figures([a for a in assets if a.workshop == ws], statuses, now, ind, tz, ident.simulated)
           for ws in _workshops(assets)}
    rows = []
    on = period.snapshot(now)
    for a in assets:
        st = statuses.get(a.device or "")
        last = st.last_delivered if st else None
        net = a.device is not None and last is not None and now - last <= window
        sim = ident.simulated.get(a.device or "")
        if net and sim is not None and not ind.allow_simulated:
            verdict = judge(a, DeviceEvidence(), ind, sim)
        else:
            verdict = Verdict(net, None if net else "no good sample delivered within the live window",
                              "networked" if net else ("not_bound" if a.device is None else "live_window"))
        rows.append(DeviceRow(a, a.in_universe(on, ind.scope), None, verdict, last_delivered=last,
                              excluded=a.excluded(on, ind.scope)))
    result = PeriodResult(cfg, period, now, figs, wss, rows, {"period": "now", "window_s": window,
                                                              "scope": ind.scope})
    _identity_rows(result, ident)
    return result


def _window(cfg: CollectorConfig, assets: list[Asset], period: Period, now: float, store: StatusStore,
            daily: bool, identities: list[IdentityRecord] | None = None) -> PeriodResult:
    ind = cfg.indicators
    data = EvidenceData.load(store, period.start, period.end)
    evs = collect(assets, data, period, ind, now)
    ident = period_identity(store.identities(period.end) if identities is None else identities, period.start,
                            min(period.end, now))
    sims = {a.id: ident.simulated.get(a.device or "") for a in assets}
    verdicts = {a.id: judge(a, evs[a.id], ind, sims[a.id]) for a in assets}
    on = period.snapshot(now)
    params = rule_params(ind, period)

    def networked(a: Asset) -> bool:
        return verdicts[a.id].networked

    figs = _rates(cfg, assets, on, networked, params)
    wss = {ws: _rates(cfg, [a for a in assets if a.workshop == ws], on, networked, params)
           for ws in _workshops(assets)}
    rows = [DeviceRow(a, a.in_universe(on, ind.scope), evs[a.id], verdicts[a.id], excluded=a.excluded(on, ind.scope))
            for a in assets]
    result = PeriodResult(cfg, period, now, figs, wss, rows, params, measured=bool(data.uptime))
    _identity_rows(result, ident)
    if daily:
        today = periods.local_date(now, period.tz)
        for d in period.days():
            if d > today:
                break
            day_ev = {a.id: day_evidence(evs[a.id], d) for a in assets}
            if not any(e.expected for e in day_ev.values()):
                result.daily.append(DayFigure(d, None))
                continue
            day_net = {a.id for a in assets if judge(a, day_ev[a.id], ind, sims[a.id]).networked}
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
    identities = store.identities()
    if first is not None:  # months that ended before the collector first ran hold no evidence: left out
        months = [_window(cfg, assets, p, now, store, daily=False, identities=identities)
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
        sim = next((r for r in mine if r.simulated), None)
        rows.append(DeviceRow(a, a.in_universe(on, ind.scope), ev, None, (net, len(counted)),
                              simulated=sim is not None, simulated_reason=sim.simulated_reason if sim else None,
                              identity=next((r.identity for r in reversed(mine) if r.identity), None),
                              excluded=a.excluded(on, ind.scope)))
    result = PeriodResult(cfg, period, now, figs, wss, rows, params, months=labels, measured=bool(months))
    result.simulated = sorted(r.asset.id for r in rows if r.simulated and r.in_universe)
    result.identity_warnings = [w for m in months for w in m.identity_warnings]
    return result


def compute(cfg: CollectorConfig, assets: list[Asset], store: StatusStore, period: Period, now: float | None = None,
            statuses: Mapping[str, DeviceStatus] | None = None, warnings: list[str] | None = None) -> PeriodResult:
    """The figures of any period; `now` defaults to the clock (tests pass it)."""
    now = time.time() if now is None else now
    if period.kind == "now":
        result = _now(cfg, assets, period, now, statuses if statuses is not None else store.load_statuses(),
                      period_identity(store.identities(), now, now + 1))
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
         "networked": r.verdict.networked if r.verdict else None, "simulated": r.simulated}
        for r in result.devices]
    return body
