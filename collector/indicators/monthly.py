"""Closing months: the monthly summary appended to the evidence chain and published retained.

A month is summarised once, after it closes (00:00 on the 4th of the next month, site time), and only if the
collector ran in or before it (its first uptime bucket); the chain itself records which months are done, so
a restart or a second writer (`collector report`) never adds a month twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from collector.config import CollectorConfig
from collector.indicators import chain, periods
from collector.indicators.figures import PeriodResult, chain_body, compute
from collector.indicators.register import Asset
from collector.status import StatusStore

log = logging.getLogger(__name__)

UNIQUE = ("period.label", "enterprise", "collector_workshop")


def chain_path(state_dir: Path) -> Path:
    return state_dir / chain.CHAIN_FILE


def find_record(path: Path, cfg: CollectorConfig, label: str) -> dict[str, Any] | None:
    """The chain record of a month of this enterprise and collector workshop, if there is one."""
    for rec in chain.read(path):
        b = rec.get("body", {})
        if (b.get("period", {}).get("label"), b.get("enterprise"), b.get("collector_workshop")) == \
                (label, cfg.site.enterprise_id, cfg.site.workshop):
            return rec
    return None


def ensure_chained(result: PeriodResult, state_dir: Path) -> dict[str, Any] | None:
    """Append a closed month's summary unless the chain already holds it; returns its record.

    An open month is never chained (its figures may still change)."""
    if result.period.kind != "month" or not result.closed:
        return None
    path = chain_path(state_dir)
    existing = find_record(path, result.cfg, result.period.label)
    if existing is not None:
        return existing
    return chain.append(path, chain_body(result), UNIQUE) or find_record(path, result.cfg, result.period.label)


def due_months(cfg: CollectorConfig, store: StatusStore, state_dir: Path, now: float) -> list[periods.Period]:
    """Closed months since the collector first ran that the chain does not hold yet."""
    first = store.first_uptime()
    if first is None:
        return []
    tz = cfg.site.timezone
    start = periods.local_date(first, tz)
    last = periods.last_closed_month(now, tz)
    path = chain_path(state_dir)
    return [p for y, m in periods.months_from((start.year, start.month), last)
            if find_record(path, cfg, (p := periods.month(y, m, tz)).label) is None]


def close_due_months(cfg: CollectorConfig, assets: list[Asset], store: StatusStore, state_dir: Path, now: float,
                     warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """Summarise and chain every month that closed and is not chained yet; returns the new records."""
    out = []
    for p in due_months(cfg, store, state_dir, now):
        result = compute(cfg, assets, store, p, now, warnings=warnings)
        rec = ensure_chained(result, state_dir)
        if rec is not None:
            log.info("event=month_closed period=%s D1=%s/%s D2=%s/%s hash=%s", p.label,
                     result.figure("D1").numerator, result.figure("D1").denominator,
                     result.figure("D2").numerator, result.figure("D2").denominator, rec["hash"][:12])
            out.append(rec)
    return out


def period_summaries(cfg: CollectorConfig, assets: list[Asset], store: StatusStore, now: float) -> dict[str, Any]:
    """Today's and this month's figures (enterprise and workshops) for the live snapshot."""
    tz = cfg.site.timezone
    out: dict[str, Any] = {}
    for name in ("today", "month"):
        d = compute(cfg, assets, store, periods.parse(name, now, tz), now).to_dict(devices=False)
        out[name] = {k: d[k] for k in ("period", "status", "figures", "workshops", "params")}
    return out
