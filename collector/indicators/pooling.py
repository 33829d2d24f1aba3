"""County and city figures from the enterprises' monthly summaries (INDICATORS.md, "Periods, roll-ups").

The county (区/县/市) or city collects each enterprise's evidence chain (`evidence-chain.jsonl`; `collector
verify` checks it) or its report JSON (`collector report --format json`) and pools them: the sum of numerators
over the sum of denominators, never an average of rates, plus how many enterprises pass. An enterprise with
several collectors (one chain per collector workshop) is pooled first, so it counts once.

A chain that does not verify is refused as a whole: a county figure must not rest on edited evidence.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.indicators import chain
from collector.indicators.rates import Figure, pool


class PoolInputError(ValueError):
    """An input that cannot be pooled (broken chain, unreadable file); names the file."""


@dataclass
class Submission:
    """One collector's closed month, as found in an enterprise's file."""

    enterprise: str
    enterprise_name: str | None
    county: str | None
    city: str | None
    workshop: str | None
    figures: dict[str, Figure]
    source: str
    verified: bool  # from a chain that verified (a report JSON alone cannot be checked)
    simulated: bool = False  # its figures count simulated devices (allow_simulated): 不可用于评价


@dataclass
class Enterprise:
    id: str
    name: str | None
    county: str | None
    submissions: list[Submission]
    figures: dict[str, Figure] = field(default_factory=dict)


@dataclass
class PoolResult:
    period: str
    enterprises: list[Enterprise]
    figures: dict[str, Figure]
    passing: dict[str, int]  # figure id -> enterprises that pass it
    # enterprises whose month counts simulated devices (含模拟设备): listed, never pooled nor counted as passing
    simulated: list[Enterprise] = field(default_factory=list)

    def figures_dict(self) -> dict[str, dict[str, Any]]:
        """The pooled figures with the number and share of enterprises passing (the hub's bulletin uses this)."""
        n = len(self.enterprises)
        return {fid: {**_fig(f), "enterprises_passing": self.passing[fid] if f.target is not None else None,
                      "passing_share": self.passing[fid] / n if n and f.target is not None else None}
                for fid, f in self.figures.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "pooled_indicators", "period": self.period, "enterprises": len(self.enterprises),
            "figures": self.figures_dict(),
            "by_enterprise": [{"enterprise": e.id, "name": e.name, "county": e.county,
                               "collectors": [s.workshop for s in e.submissions],
                               "sources": sorted({s.source for s in e.submissions}),
                               "verified": all(s.verified for s in e.submissions),
                               "figures": {fid: _fig(f) for fid, f in e.figures.items()}}
                              for e in self.enterprises],
            "simulated_not_pooled": [{"enterprise": e.id, "name": e.name, "county": e.county,
                                      "collectors": [s.workshop for s in e.submissions if s.simulated]}
                                     for e in self.simulated],
        }


def _fig(f: Figure) -> dict[str, Any]:
    d = f.to_dict()
    d.pop("params", None)
    return d


def _figures(body: dict[str, Any]) -> dict[str, Figure]:
    return {fid: Figure(fid, f["numerator"], f["denominator"], f.get("target"))
            for fid, f in (body.get("figures") or {}).items()}


def _submission(body: dict[str, Any], source: str, verified: bool) -> Submission:
    return Submission(enterprise=str(body.get("enterprise")), enterprise_name=body.get("enterprise_name"),
                      county=body.get("county"), city=body.get("city"), workshop=body.get("collector_workshop"),
                      figures=_figures(body), source=source, verified=verified,
                      simulated=bool(body.get("banner")))


def _is_chain(path: Path, raw: bytes) -> bool:
    """A chain is JSON lines of records with a body and a hash; a report JSON is one (indented) object."""
    if path.suffix == ".jsonl":
        return True
    try:
        first = json.loads(raw.lstrip().split(b"\n", 1)[0])
    except ValueError:
        return False
    return isinstance(first, dict) and "hash" in first and "body" in first


def read_submissions(path: Path, period: str) -> list[Submission]:
    """The closed months labelled `period` in one file: an evidence chain (.jsonl) or a report JSON."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PoolInputError(f"{path}: {exc.strerror or exc}") from None
    if _is_chain(path, raw):
        result = chain.verify(path)
        if not result.ok:
            raise PoolInputError(f"{path}: the evidence chain is BROKEN at record {result.broken_line}: "
                                 f"{result.reason}; `collector verify {path}` says the same. Not pooled.")
        return [_submission(r["body"], str(path), True) for r in chain.read(path)
                if r.get("body", {}).get("period", {}).get("label") == period]
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise PoolInputError(f"{path}: neither an evidence chain nor a report JSON ({exc})") from None
    if not isinstance(data, dict) or "figures" not in data:
        raise PoolInputError(f"{path}: a JSON file without figures (expected `collector report --format json`)")
    if data.get("period", {}).get("label") != period:
        return []
    if data.get("status") != "closed":
        raise PoolInputError(f"{path}: the {period} figures are {data.get('status')!r}, not closed: only a "
                             "closed month can be pooled (it closes on the 4th of the next month)")
    return [_submission(data, str(path), False)]


def pool_submissions(period: str, subs: Iterable[Submission], county: str | None = None,
                     count_simulated: bool = False) -> PoolResult:
    """Pool per enterprise (its collectors), then over enterprises; the same collector's month twice (a chain
    and its report) counts once, the verified copy kept. An enterprise whose month counts simulated devices
    (any of its collectors' summaries carries the 含模拟设备 banner) is set aside in `simulated`: its figures are
    not valid for assessment, so they are neither pooled nor counted as passing — unless `count_simulated`
    (a demo hub), which pools them and still lists them, so every output can carry the banner."""
    unique: dict[tuple[str, str | None], Submission] = {}
    for s in subs:
        if county is not None and s.county != county:
            continue
        key = (s.enterprise, s.workshop)
        if key not in unique or (s.verified and not unique[key].verified):
            unique[key] = s
    by_ent: dict[str, Enterprise] = {}
    for s in unique.values():
        e = by_ent.setdefault(s.enterprise, Enterprise(s.enterprise, s.enterprise_name, s.county, []))
        e.submissions.append(s)
    for e in by_ent.values():
        e.figures = _sum(f for s in e.submissions for f in s.figures.values())
    ordered = sorted(by_ent.values(), key=lambda e: e.id)
    simulated = [e for e in ordered if any(s.simulated for s in e.submissions)]
    set_aside = set() if count_simulated else {e.id for e in simulated}
    enterprises = [e for e in ordered if e.id not in set_aside]
    figures = _sum(f for e in enterprises for f in e.figures.values())
    passing = {fid: sum(1 for e in enterprises if fid in e.figures and e.figures[fid].passed) for fid in figures}
    return PoolResult(period, enterprises, figures, passing, simulated)


def _sum(figs: Iterable[Figure]) -> dict[str, Figure]:
    """`rates.pool` per figure id."""
    by_id: dict[str, list[Figure]] = {}
    for f in figs:
        by_id.setdefault(f.id, []).append(f)
    return {fid: pool(group) for fid, group in by_id.items()}
