"""The bulletin as HTML (page and file), CSV and JSON; Chinese first, English with `lang="en"`.

Rates are shown by the one display rule of the project (truncated to 0.1 %, `collector.indicators.report.pct`);
CSV and JSON carry numerator and denominator, never only a rounded rate."""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Any

from collector.indicators.report import pct

T: dict[str, dict[str, str]] = {
    "title": {"zh": "{city}智能制造设备指标月度通报 · {period}", "en": "{city} equipment indicators, monthly "
              "bulletin · {period}"},
    "scope": {"zh": "统计口径：合并计算（Σ分子 / Σ分母），各企业先合并其全部采集器", "en": "Pooled: Σ numerators / "
              "Σ denominators; each enterprise's collectors are pooled first"},
    "county": {"zh": "县（市、区）", "en": "County"},
    "enrolled": {"zh": "登记企业数", "en": "Enrolled"},
    "reported": {"zh": "已报送", "en": "Reported"},
    "D1": {"zh": "装备数控化率", "en": "CNC rate (D1)"},
    "D2": {"zh": "数字化设备联网率", "en": "Networking rate (D2)"},
    "pass": {"zh": "达标企业（占比）", "en": "Passing (share)"},
    "nonrep": {"zh": "未报送企业", "en": "Not reported"},
    "anom": {"zh": "数据异常", "en": "数据异常 (data anomaly)"},
    "sim": {"zh": "含模拟设备", "en": "含模拟设备 (simulated devices)"},
    "sim_out": {"zh": "不计入汇总和达标家数", "en": "neither pooled nor counted as passing"},
    "sim_in": {"zh": "已计入（演示），不可用于评价", "en": "pooled (a demo hub): not valid for assessment"},
    "city_total": {"zh": "全市合计", "en": "City total"},
    "trend": {"zh": "近12个月趋势", "en": "Last 12 months"},
    "month": {"zh": "月份", "en": "Month"},
    "none": {"zh": "无", "en": "none"},
    "plot": {"zh": "各县（市、区）联网率（目标 55 %）与数控化率（目标 70 %）", "en": "Each county's D2 against "
             "55 % and D1 against 70 %"},
    "generated": {"zh": "生成时间", "en": "Generated"},
    "enterprise": {"zh": "企业", "en": "Enterprise"},
    "reason": {"zh": "原因", "en": "Reason"},
    "concerns": {"zh": "涉及 {months} 的记录", "en": "concerns records of {months}"},
    "banner": {"zh": "通报提示", "en": "banner"},
    "last_seen": {"zh": "采集器最近上报 {when}", "en": "its collector was last seen {when}"},
    "never_seen": {"zh": "采集器从未上报", "en": "no collector of it has ever been seen"},
}


KINDS = (("rewritten", "历史记录被改写", "rewritten history"), ("back-dated", "记录时间倒签", "back-dated"),
         ("rotated away", "使用已轮换的密钥签名", "signed by a rotated key"),
         ("replaces", "密钥轮换记录不符", "key rotation mismatch"))


def incident_kind(reason: str, lang: str) -> str:
    """The incident's kind in the reader's language (the reason itself, from the hub's check, is English)."""
    for needle, zh, en in KINDS:
        if needle in reason:
            return en if lang == "en" else zh
    return "contradicts the held record" if lang == "en" else "与已存记录矛盾"


def t(key: str, lang: str, **kw: str) -> str:
    return T[key]["en" if lang == "en" else "zh"].format(**kw)


def _rate(fig: dict[str, Any] | None) -> str:
    if not fig:
        return "—"
    return f"{pct(fig['numerator'], fig['denominator'])} ({fig['numerator']:g}/{fig['denominator']:g})"


def _passing(fig: dict[str, Any] | None) -> str:
    if not fig or fig.get("enterprises_passing") is None:
        return "—"
    share = fig.get("passing_share")
    return f"{fig['enterprises_passing']} ({'—' if share is None else pct(share, 1)})"


def _rows(b: dict[str, Any]) -> list[str]:
    f = b["figures"]
    return [b["name"], str(b["enrolled"]), str(b["reported"]), _rate(f.get("D1")), _passing(f.get("D1")),
            _rate(f.get("D2")), _passing(f.get("D2")), str(len(b["non_reporting"])), str(len(b["anomalies"])),
            str(len(b.get("simulated", [])))]


def _blocks(bulletin: dict[str, Any]) -> list[dict[str, Any]]:
    return bulletin["counties"] + ([bulletin["total"]] if bulletin.get("total") else [])


def to_json(bulletin: dict[str, Any]) -> str:
    return json.dumps(bulletin, ensure_ascii=False, indent=2)


def banner_text(bulletin: dict[str, Any], lang: str = "zh") -> str:
    """The bulletin's banner in the reader's language (Chinese first), "" when it has none."""
    if not bulletin.get("banner"):
        return ""
    return bulletin["banner"] if lang != "en" else f'{bulletin["banner"]} · {bulletin["banner_en"]}'


def to_csv(bulletin: dict[str, Any], lang: str = "zh") -> str:
    """One row per county and the city: exact numerators and denominators, pass counts, the lists' sizes.

    UTF-8 with a BOM, so a spreadsheet opens the Chinese right (as the enterprise report's CSV). The last column
    (通报提示) carries the banner the HTML shows in red (含模拟设备，不可用于评价, a demo hub pooling simulated
    devices) on every row: a row copied or filtered out of the sheet keeps it, and the header stays the first
    line for the programs that read the file."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["period", t("county", lang), t("enrolled", lang), t("reported", lang),
                "D1_numerator", "D1_denominator", "D1_value", "D1_enterprises_passing",
                "D2_numerator", "D2_denominator", "D2_value", "D2_enterprises_passing",
                t("nonrep", lang), t("anom", lang), t("sim", lang), t("banner", lang)])
    banner = banner_text(bulletin, lang)
    for b in _blocks(bulletin):
        row: list[Any] = [bulletin["period"], b["name"], b["enrolled"], b["reported"]]
        for fid in ("D1", "D2"):
            f = b["figures"].get(fid)
            row += [f["numerator"], f["denominator"], "" if f["value"] is None else repr(f["value"]),
                    f.get("enterprises_passing")] if f else ["", "", "", ""]
        row += [";".join(e["id"] for e in b["non_reporting"]), ";".join(e["id"] for e in b["anomalies"]),
                ";".join(e["id"] for e in b.get("simulated", [])), banner]
        w.writerow(row)
    return "\ufeff" + out.getvalue()


def _svg(bulletin: dict[str, Any], lang: str) -> str:
    """Two bars per county (D2, D1) with the 55 % and 70 % lines: no script, prints as is."""
    blocks = _blocks(bulletin)
    bar_h, gap, left, width = 14, 10, 170, 420
    height = len(blocks) * (2 * bar_h + gap) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
             f'role="img" aria-label="{html.escape(t("plot", lang))}">']
    for target, colour in ((0.55, "#1565c0"), (0.70, "#2e7d32")):
        x = left + width * target
        parts.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{height - 20}" stroke="{colour}" stroke-dasharray="4 3"/>'
                     f'<text x="{x - 14}" y="{height - 6}" font-size="11" fill="{colour}">{target * 100:g} %</text>')
    for i, b in enumerate(blocks):
        y = i * (2 * bar_h + gap) + 4
        parts.append(f'<text x="{left - 6}" y="{y + bar_h + 4}" font-size="12" text-anchor="end">'
                     f'{html.escape(b["name"])}</text>')
        for j, (fid, colour) in enumerate((("D2", "#64b5f6"), ("D1", "#81c784"))):
            f = b["figures"].get(fid)
            v = f["value"] if f and f["value"] is not None else 0.0
            parts.append(f'<rect class="bar-{fid}" x="{left}" y="{y + j * bar_h}" width="{width * min(v, 1):.1f}" '
                         f'height="{bar_h - 2}" fill="{colour}"/><text x="{left + width * min(v, 1) + 4:.1f}" '
                         f'y="{y + j * bar_h + bar_h - 4}" font-size="10">{fid} {pct(f["numerator"], f["denominator"]) if f else "—"}</text>')
    parts.append("</svg>")
    return "".join(parts)


def to_html(bulletin: dict[str, Any], lang: str = "zh") -> str:
    e = html.escape
    head = [t("county", lang), t("enrolled", lang), t("reported", lang), t("D1", lang), t("pass", lang),
            t("D2", lang), t("pass", lang), t("nonrep", lang), t("anom", lang), t("sim", lang)]
    rows = []
    for b in _blocks(bulletin):
        cls = ' class="total"' if b is bulletin.get("total") else ""
        cells = "".join(f"<td>{e(c)}</td>" for c in _rows(b))
        rows.append(f'<tr{cls} data-county="{e(b["name"])}">{cells}</tr>')
    lists = []
    for b in bulletin["counties"]:
        for ent in b["non_reporting"]:
            seen = (t("last_seen", lang, when=ent["last_seen"]) if ent.get("last_seen") else
                    t("never_seen", lang))
            lists.append(f'<tr class="nonrep"><td>{e(b["name"])}</td><td>{e(ent["name"])}<br><small>{e(ent["id"])}'
                         f'</small></td><td>{e(t("nonrep", lang))}（{e(seen)}）</td></tr>')
        for ent in b["anomalies"]:
            why = "；".join(f"{incident_kind(i['reason'], lang)}（{i['workshop']} #{i['seq']}"
                           f"{_concerned(i, lang)}: {i['reason']}）" for i in ent["incidents"])
            lists.append(f'<tr class="anomaly"><td>{e(b["name"])}</td><td>{e(ent["name"])}<br><small>{e(ent["id"])}'
                         f'</small></td><td><b>{e(t("anom", lang))}</b>：{e(why)}</td></tr>')
        for ent in b.get("simulated", []):
            lists.append(f'<tr class="simulated"><td>{e(b["name"])}</td><td>{e(ent["name"])}<br><small>'
                         f'{e(ent["id"])}</small></td><td><b>{e(t("sim", lang))}</b>：'
                         f'{e(t("sim_in" if bulletin.get("banner") else "sim_out", lang))}</td></tr>')
    trend_head = "".join(f"<th>{e(p['period'])}</th>" for p in bulletin["trend"])
    trend_rows = []
    scopes = ([("city", bulletin["total"]["name"])] if bulletin.get("total") else []) + \
        [(c["name"], c["name"]) for c in bulletin["counties"]]
    for key, label in scopes:
        for fid in ("D1", "D2"):
            tcells: list[str] = []
            for p in bulletin["trend"]:
                point = p["city"] if key == "city" else p["counties"].get(key, {})
                f = point.get(fid) if point else None
                tcells.append(f"<td>{pct(f['numerator'], f['denominator']) if f else '—'}</td>")
            trend_rows.append(f"<tr><td>{e(label)}</td><td>{fid}</td>{''.join(tcells)}</tr>")
    title = t("title", lang, city=bulletin["city"] + (f" · {bulletin['county']}" if bulletin.get("county") else ""),
              period=bulletin["period"])
    return f"""<!doctype html>
<html lang="{'en' if lang == 'en' else 'zh-CN'}"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: "Noto Sans CJK SC", "Noto Sans", sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0 20px; }}
th, td {{ border: 1px solid #bbb; padding: 4px 8px; font-size: 13px; text-align: right; }}
th {{ background: #eef2f6; }} td:first-child {{ text-align: left; }}
tr.total td {{ font-weight: bold; background: #f7f7f0; }} tr.anomaly td {{ color: #b71c1c; }} tr.simulated td {{ color: #e65100; }}
small {{ color: #666; }} #lists td {{ text-align: left; }}
</style></head><body>
<h1 id="title">{e(title)}</h1>
{_banner(bulletin, lang)}
<p>{e(t("scope", lang))} · {e(t("generated", lang))} {e(bulletin["generated_at"])}</p>
<table id="counties"><thead><tr>{''.join(f'<th>{e(h)}</th>' for h in head)}</tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<h2>{e(t("plot", lang))}</h2>
<div id="plot">{_svg(bulletin, lang)}</div>
<h2>{e(t("nonrep", lang))} · {e(t("anom", lang))}</h2>
<table id="lists"><thead><tr><th>{e(t("county", lang))}</th><th>{e(t("enterprise", lang))}</th>
<th>{e(t("reason", lang))}</th></tr></thead><tbody>{''.join(lists) or f'<tr><td colspan="3">{e(t("none", lang))}</td></tr>'}</tbody></table>
<h2>{e(t("trend", lang))}</h2>
<table id="trend"><thead><tr><th>{e(t("county", lang))}</th><th></th>{trend_head}</tr></thead>
<tbody>{''.join(trend_rows)}</tbody></table>
</body></html>
"""


def _concerned(incident: dict[str, Any], lang: str) -> str:
    months = incident.get("concerns") or []
    if not months:
        return ""
    sep, join = (", ", ", ") if lang == "en" else ("，", "、")
    return sep + t("concerns", lang, months=join.join(months))


def _banner(bulletin: dict[str, Any], lang: str) -> str:
    """The red line of a demo hub that pools simulated devices (count_simulated): not valid for assessment."""
    text = banner_text(bulletin, lang)
    if not text:
        return ""
    return f'<p id="banner" style="color:#fff;background:#b71c1c;padding:6px 10px;font-weight:bold">' \
           f'{html.escape(text)}</p>'


def render(bulletin: dict[str, Any], fmt: str, lang: str = "zh") -> str:
    if fmt == "json":
        return to_json(bulletin)
    if fmt == "csv":
        return to_csv(bulletin, lang)
    return to_html(bulletin, lang)
