"""The monthly bulletin (月度通报): per county and for the city, from the monthly summaries the hub holds.

Figures are pooled exactly as `collector pool` pools the same chains (`collector.indicators.pooling`: Σ
numerators / Σ denominators per enterprise over its collectors, then over enterprises; never an average of rates),
so the two agree by construction. Next to them: enrolled enterprises, how many reported, how many and which share
pass D1 ≥ 70 % and D2 ≥ 55 %, who has not reported, who has 数据异常, and the last 12 months of pooled D1 and D2.

数据异常: an enterprise is listed on the bulletin of month P when one of its incidents
- concerns a record of P: the record it sent is a monthly summary of P (`body.period.label`), or another record
  or a head dated in P (its `ts`, site time UTC+8); or the record the hub held at that seq when the incident
  came (the one it contradicts) is a summary of P or dated in P. A head (no body) is placed by that held record
  when there is one, by its own `ts` otherwise (the head of a summary is dated in the month after the summary's);
  or
- was received in P or in the month after (P's bulletin is published then: what the hub learnt up to then about
  the enterprise's chain is on it, whichever month the record is of).
So a rewritten October summary received in March is on October's bulletin and on February's and March's.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import psycopg

from collector.indicators.figures import SIMULATED_BANNER, SIMULATED_BANNER_EN
from collector.indicators.pooling import PoolResult, Submission, pool_submissions
from collector.indicators.rates import Figure

JIAXING = ["南湖区", "秀洲区", "嘉善县", "平湖市", "海盐县", "海宁市", "桐乡市", "嘉兴经济技术开发区", "嘉兴港区"]
SHOWN = ("D1", "D2")  # the two the city grades on; the JSON carries every pooled figure
SITE_TZ = dt.timezone(dt.timedelta(hours=8))  # the enterprises' months are Asia/Shanghai's (no summer time)
MONTH = re.compile(r"\d{4}-\d{2}")


@dataclass
class EnrolledEnterprise:
    id: str
    name: str
    county: str
    industry: str
    backbone: bool


def month_label(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def shift(period: str, months: int) -> str:
    y, m = int(period[:4]), int(period[5:7])
    i = y * 12 + (m - 1) + months
    return month_label(i // 12, i % 12 + 1)


def parse_period(text: str) -> str:
    try:
        d = dt.date.fromisoformat(text.strip() + "-01")
    except ValueError:
        raise ValueError(f"--period '{text}' is not a month (YYYY-MM, e.g. 2026-11)") from None
    return month_label(d.year, d.month)


def _enrolled(conn: psycopg.Connection[Any]) -> list[EnrolledEnterprise]:
    rows = conn.execute("SELECT id, name, county, industry, backbone FROM enterprises ORDER BY id").fetchall()
    return [EnrolledEnterprise(r["id"], r["name"], r["county"], r["industry"], r["backbone"]) for r in rows]


def _submissions(conn: psycopg.Connection[Any], periods: list[str],
                 ents: dict[str, EnrolledEnterprise]) -> dict[str, list[Submission]]:
    """Per period, the latest monthly summary of each collector (enterprise, workshop), figures only."""
    rows = conn.execute(
        "SELECT DISTINCT ON (period, enterprise_id, workshop) period, enterprise_id, workshop, "
        "body->'figures' AS figures, body->>'banner' AS banner FROM records WHERE period = ANY(%s) AND body_kind = 'monthly_summary' "
        "ORDER BY period, enterprise_id, workshop, seq DESC", (periods,)).fetchall()
    out: dict[str, list[Submission]] = {p: [] for p in periods}
    for r in rows:
        e = ents.get(r["enterprise_id"])
        if e is None:
            continue
        figs = {fid: Figure(fid, f["numerator"], f["denominator"], f.get("target"))
                for fid, f in (r["figures"] or {}).items()
                if isinstance(f, dict) and "numerator" in f and "denominator" in f}
        out[r["period"]].append(Submission(e.id, e.name, e.county, None, r["workshop"], figs, "hub", True,
                                           simulated=bool(r["banner"])))
    return out


def month_start(period: str) -> dt.datetime:
    """The first instant of a month in site time."""
    return dt.datetime.fromisoformat(period + "-01T00:00:00").replace(tzinfo=SITE_TZ)


def _site_month(t: dt.datetime | None) -> str | None:
    if t is None:
        return None
    local = t.astimezone(SITE_TZ)
    return month_label(local.year, local.month)


def _parse_ts(value: Any) -> dt.datetime | None:
    """A record's ts as the hub's check read it (`datetime.fromisoformat`, a zone required)."""
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def _record_month(kind: Any, label: Any, ts: dt.datetime | None) -> str | None:
    """The month a record is of: a monthly summary's period, any other record's (or head's) date in site time."""
    if kind == "monthly_summary" and isinstance(label, str) and MONTH.fullmatch(label):
        return label
    return _site_month(ts)


def _concerns(r: dict[str, Any]) -> list[str]:
    """The months of the records an incident concerns: the held record at its seq, and the one sent (a head only
    when the hub holds no record at that seq)."""
    held = _record_month("monthly_summary" if r["held_period"] else None, r["held_period"], r["held_ts"])
    sent = None
    if r["has_body"] or r["held_ts"] is None:
        sent = _record_month(r["kind"], r["label"], _parse_ts(r["ts"]))
    return sorted({m for m in (held, sent) if m is not None})


def _anomalies(conn: psycopg.Connection[Any], period: str) -> dict[str, list[dict[str, Any]]]:
    """Per enterprise, the incidents on the bulletin of `period` (the rule is in this module's docstring)."""
    start, end = month_start(period), month_start(shift(period, 2))
    # the WHERE is a superset, cheap and safe on any text (a ts is only parsed here, in Python, as ingest parsed
    # it): a ts written in its own zone may fall in the month before or after in site time, and a ts in another
    # form than YYYY-MM-DDT… / YYYYMMDDT… is always looked at
    near = [shift(period, d).replace("-", "") for d in (-1, 0, 1)]
    rows = conn.execute(
        "SELECT i.enterprise_id, i.workshop, i.seq, i.reason, i.received_at, i.message->>'ts' AS ts, "
        "jsonb_typeof(i.message->'body') = 'object' AS has_body, i.message->'body'->>'kind' AS kind, "
        "i.message->'body'->'period'->>'label' AS label, r.period AS held_period, r.ts AS held_ts "
        "FROM incidents i LEFT JOIN records r ON r.enterprise_id = i.enterprise_id AND r.workshop = i.workshop "
        "AND r.seq = i.seq AND r.received_at <= i.received_at "  # held then: not one accepted at that seq later
        "WHERE (i.received_at >= %(start)s AND i.received_at < %(end)s) "
        "OR i.message->'body'->'period'->>'label' = %(period)s OR r.period = %(period)s "
        "OR (r.ts >= %(start)s AND r.ts < %(next)s) "
        "OR left(translate(i.message->>'ts', '-', ''), 6) = ANY(%(near)s) "
        "OR coalesce(i.message->>'ts', '') !~ '^[0-9]{4}-?[0-9]{2}-?[0-9]{2}T' "
        "ORDER BY i.received_at, i.id",
        {"start": start, "end": end, "next": month_start(shift(period, 1)), "period": period,
         "near": near}).fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        concerns = _concerns(r)
        received = start <= r["received_at"] < end
        if not received and period not in concerns:
            continue
        out.setdefault(r["enterprise_id"], []).append(
            {"workshop": r["workshop"], "seq": r["seq"], "reason": r["reason"],
             "received_at": r["received_at"].astimezone(dt.UTC).isoformat(timespec="seconds"),
             "concerns": concerns})
    return out


def _figures(result: PoolResult) -> dict[str, Any]:
    return result.figures_dict()


def _last_seen(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Each enterprise's newest live snapshot (any of its collectors), as ISO UTC: whether a collector that has
    not reported is alive at all (collector/evidence/live.py)."""
    rows = conn.execute("SELECT enterprise_id, max(received_at) AS seen FROM live GROUP BY enterprise_id").fetchall()
    return {r["enterprise_id"]: r["seen"].astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            for r in rows}


def _block(name: str, ents: list[EnrolledEnterprise], subs: list[Submission], period: str,
           anomalies: dict[str, list[dict[str, Any]]], count_simulated: bool = False,
           last_seen: dict[str, str] | None = None) -> dict[str, Any]:
    ids = {e.id for e in ents}
    mine = [s for s in subs if s.enterprise in ids]
    result = pool_submissions(period, mine, count_simulated=count_simulated)
    reported = {e.id for e in result.enterprises} | {e.id for e in result.simulated}
    return {"name": name, "enrolled": len(ents), "backbone": sum(1 for e in ents if e.backbone),
            "reported": len(reported), "figures": _figures(result),
            "non_reporting": [{"id": e.id, "name": e.name, "last_seen": (last_seen or {}).get(e.id)} for e in ents
                              if e.id not in reported],
            # reported, but their figures count simulated devices: listed, never pooled (pooling.py)
            "simulated": [{"id": e.id, "name": e.name} for e in result.simulated],
            "anomalies": [{"id": e.id, "name": e.name, "incidents": anomalies[e.id]} for e in ents
                          if e.id in anomalies],
            "by_enterprise": [{"id": pe.id, "name": pe.name, "collectors": len(pe.submissions),
                               "figures": {fid: _fig_short(f) for fid, f in pe.figures.items()}}
                              for pe in result.enterprises]}


def _fig_short(f: Figure) -> dict[str, Any]:
    return {"numerator": f.numerator, "denominator": f.denominator, "value": f.value, "target": f.target,
            "passed": f.passed}


def _trend_point(subs: list[Submission], period: str, ents: list[EnrolledEnterprise],
                 count_simulated: bool = False) -> dict[str, Any]:
    ids = {e.id for e in ents}
    result = pool_submissions(period, [s for s in subs if s.enterprise in ids], count_simulated=count_simulated)
    figs = _figures(result)
    return {fid: {k: figs[fid][k] for k in ("numerator", "denominator", "value")} if fid in figs else None
            for fid in SHOWN} | {"reported": len(result.enterprises)}


def build(conn: psycopg.Connection[Any], period: str, counties: list[str], county: str | None = None,
          city: str = "嘉兴市", now: float | None = None, count_simulated: bool = False) -> dict[str, Any]:
    """The bulletin as a dict (what `--format json` prints; html and csv render it). `count_simulated` (a demo
    hub) pools enterprises that count simulated devices and sets the 含模拟设备 banner when any is pooled."""
    sim = count_simulated
    enrolled = _enrolled(conn)
    by_id = {e.id: e for e in enrolled}
    trend_periods = [shift(period, -i) for i in range(11, -1, -1)]
    subs = _submissions(conn, trend_periods, by_id)
    anomalies = _anomalies(conn, period)
    seen = _last_seen(conn)
    names = [county] if county is not None else counties
    extra = sorted({e.county for e in enrolled} - set(counties))  # enrolled before the list changed
    if county is None:
        names = names + extra
    blocks = [_block(c, [e for e in enrolled if e.county == c], subs[period], period, anomalies, sim, seen)
              for c in names]
    in_scope = enrolled if county is None else [e for e in enrolled if e.county == county]
    city_block = _block(city, in_scope, subs[period], period, anomalies, sim, seen) if county is None else None
    trend = []
    for p in trend_periods:
        point: dict[str, Any] = {"period": p, "counties": {c: _trend_point(subs[p], p, [e for e in enrolled
                                                                                         if e.county == c], sim)
                                                          for c in names}}
        if county is None:
            point["city"] = _trend_point(subs[p], p, enrolled, sim)
        trend.append(point)
    pooled_simulated = sim and any(b["simulated"] for b in blocks)
    generated = dt.datetime.fromtimestamp(now if now is not None else dt.datetime.now().timestamp(), dt.UTC)
    return {"kind": "hub_bulletin", "period": period, "city": city, "county": county,
            "generated_at": generated.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "targets": {"D1": 0.7, "D2": 0.55}, "method": "pooled: Σ numerators / Σ denominators (defset v1)",
            "counties": blocks, "total": city_block, "trend": trend,
            "banner": SIMULATED_BANNER if pooled_simulated else None,
            "banner_en": SIMULATED_BANNER_EN if pooled_simulated else None}
