"""Closing months: the monthly summary appended to the evidence chain and published retained.

A month is summarised once, after it closes (00:00 on the 4th of the next month, site time), and only if the
collector ran in or before it (its first uptime bucket); the chain itself records which months are done, so
a restart or a second writer (`collector report`) never adds a month twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.evidence.keys import Signer
from collector.indicators import chain, periods
from collector.indicators.figures import PeriodResult, chain_body, compute
from collector.indicators.register import Asset, load_register, register_version
from collector.status import StatusStore

if TYPE_CHECKING:  # the root model loads every protocol plugin; these figures need none
    from collector.config import CollectorConfig

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


def ensure_chained(result: PeriodResult, state_dir: Path, signer: Signer) -> dict[str, Any] | None:
    """Append a closed month's summary unless the chain already holds it; returns its record.

    An open month is never chained (its figures may still change), nor a month in which the collector never
    ran (无采集记录: there is nothing to seal, and a sealed zero could never be undone)."""
    if result.period.kind != "month" or not result.closed or not result.measured:
        return None
    path = chain_path(state_dir)
    existing = find_record(path, result.cfg, result.period.label)
    if existing is not None:
        return existing
    body = chain_body(result)
    body["register"] = register_version(result.cfg, state_dir, result.period.end)
    site = result.cfg.site
    return chain.append(path, body, signer, enterprise=site.enterprise_id, workshop=site.workshop,
                        unique_key=UNIQUE, now=result.now) or find_record(path, result.cfg, result.period.label)


def month_register(cfg: CollectorConfig, state_dir: Path, period: periods.Period,
                   warnings: list[str] | None = None) -> list[Asset]:
    """The register a month is computed with: the one in force at its end (a later import changes nothing)."""
    return load_register(cfg, state_dir, warnings, at=period.end)


def due_months(cfg: CollectorConfig, store: StatusStore, state_dir: Path, now: float) -> list[periods.Period]:
    """Closed months since the collector first ran, in which it ran, that the chain does not hold yet."""
    first = store.first_uptime()
    if first is None:
        return []
    tz = cfg.site.timezone
    start = periods.local_date(first, tz)
    last = periods.last_closed_month(now, tz)
    path = chain_path(state_dir)
    return [p for y, m in periods.months_from((start.year, start.month), last)
            if find_record(path, cfg, (p := periods.month(y, m, tz)).label) is None
            and store.uptime_buckets(p.start, p.end)]


def close_due_months(cfg: CollectorConfig, store: StatusStore, state_dir: Path, now: float, signer: Signer,
                     warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """Summarise and chain every month that closed and is not chained yet, each with the register in force at
    its end; returns the new records."""
    out = []
    for p in due_months(cfg, store, state_dir, now):
        month_warnings = list(warnings or [])
        assets = month_register(cfg, state_dir, p, month_warnings)
        result = compute(cfg, assets, store, p, now, warnings=month_warnings)
        rec = ensure_chained(result, state_dir, signer)
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
