"""The monthly evidence package: one self-contained HTML file (inline CSS and SVG charts), CSV and JSON.

Chinese is the default language. Rates are shown truncated to 0.1 % (54.96 % shows as 54.9 %), so a shown
value never looks like it meets a target that the exact fraction misses; pass marks come from the exact
fraction (rates.Figure.passed).
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

from collector.indicators.figures import FIGURE_ORDER, PeriodResult
from collector.indicators.rates import NAMES, Figure

Lang = str  # "zh" | "en"

T: dict[str, dict[str, str]] = {
    "title": {"zh": "数字化设备联网率与装备数控化率 · 证据报告", "en": "Networking rate and CNC rate · evidence report"},
    "enterprise": {"zh": "企业", "en": "Enterprise"},
    "region": {"zh": "所在地区", "en": "Region"},
    "period": {"zh": "统计期", "en": "Period"},
    "window": {"zh": "起止时间", "en": "From / to"},
    "closes": {"zh": "关账时间", "en": "Closes at"},
    "state": {"zh": "状态", "en": "State"},
    "closed": {"zh": "已关账（终版）", "en": "closed (final)"},
    "provisional": {"zh": "未关账（临时数据）", "en": "open (provisional)"},
    "not_measured": {"zh": "无采集记录", "en": "no collection record"},
    "live": {"zh": "实时", "en": "live"},
    "generated": {"zh": "生成时间", "en": "Generated"},
    "snapshot": {"zh": "存量口径日期", "en": "Stock figures taken on"},
    "chain": {"zh": "证据链记录", "en": "Evidence chain record"},
    "not_chained": {"zh": "尚未写入（关账后写入）", "en": "not yet (written when the month closes)"},
    "summary": {"zh": "指标汇总", "en": "Summary"},
    "scope": {"zh": "范围", "en": "Scope"},
    "whole": {"zh": "全企业", "en": "Enterprise"},
    "workshop": {"zh": "车间", "en": "Workshop"},
    "figure": {"zh": "指标", "en": "Figure"},
    "name": {"zh": "名称", "en": "Name"},
    "numerator": {"zh": "分子", "en": "Numerator"},
    "denominator": {"zh": "分母", "en": "Denominator"},
    "value": {"zh": "数值", "en": "Value"},
    "target": {"zh": "目标", "en": "Target"},
    "pass": {"zh": "是否达标", "en": "Pass"},
    "yes_pass": {"zh": "✔ 达标", "en": "✔ pass"},
    "no_pass": {"zh": "✘ 未达标", "en": "✘ fail"},
    "params": {"zh": "计算参数", "en": "Parameters"},
    "daily_chart": {"zh": "每日数字化设备联网率（D2）与目标线", "en": "Daily networking rate (D2) against the target"},
    "coverage_chart": {"zh": "各数字化设备的有效数据覆盖率", "en": "Coverage of good data per digital device"},
    "devices": {"zh": "设备清单（台账信息）", "en": "Device list (register)"},
    "evidence": {"zh": "设备清单（联网证据）", "en": "Device list (networking evidence)"},
    "warnings": {"zh": "提示（台账与实时数据不一致等，未自动修正）",
                 "en": "Warnings (register vs live data; nothing was applied automatically)"},
    "no_data": {"zh": "无数据", "en": "no data"},
    "recompute": {"zh": "复核方法", "en": "How to check"},
    "recompute_text": {
        "zh": "每个指标均给出分子与分母；D2 分子为本表中“是否联网”为“是”的数字化设备数。"
              "设备联网判定：有效时段数 ≥ 覆盖率阈值 × 应有时段数，且有效天数 ≥ 天数阈值 × 应有天数。"
              "用 `collector verify 证据链文件` 校验月度汇总未被改动。口径定义见 docs/indicators.md（defset v1）。",
        "en": "Every figure gives its numerator and denominator; D2's numerator is the number of digital devices "
              "marked networked below. A device is networked when good buckets ≥ coverage × expected buckets and "
              "good days ≥ day share × expected days. `collector verify CHAIN_FILE` checks that no monthly summary "
              "was edited. Definitions: docs/indicators.md (defset v1)."},
}

# CSV/HTML device columns: key, zh header (the import accepts these), en header
DEVICE_COLUMNS: list[tuple[str, str, str]] = [
    ("id", "设备编号", "id"), ("name", "设备名称", "name"), ("workshop", "车间", "workshop"),
    ("line", "产线", "line"), ("category", "设备类别", "category"), ("usage", "用途", "usage"),
    ("status", "状态", "status"), ("commissioned", "投产日期", "commissioned"), ("is_cnc", "是否数控", "is_cnc"),
    ("is_digital", "是否数字化", "is_digital"), ("digital_basis", "数字化方式", "digital_basis"),
    ("is_key_process", "是否关键工序", "is_key_process"), ("original_value", "原值（元）", "original_value"),
    ("device", "绑定设备", "device"), ("protocol", "协议", "protocol"), ("endpoint", "接入地址", "endpoint"),
    ("source", "台账来源", "source"), ("in_universe", "计入统计范围", "in_universe"),
    ("expected_buckets", "应有时段数", "expected_buckets"), ("good_buckets", "有效时段数", "good_buckets"),
    ("coverage", "覆盖率", "coverage"), ("expected_days", "应有天数", "expected_days"),
    ("good_days", "有效天数", "good_days"), ("first_good", "首次有效数据", "first_good"),
    ("last_good", "最后有效数据", "last_good"), ("networked", "是否联网", "networked"),
    ("reason", "未联网原因", "reason"),
]
FIGURE_COLUMNS = ["scope", "figure", "name", "numerator", "denominator", "value", "target", "passed", "defset",
                  "period", "params"]
ZH_VALUES: dict[str, dict[str, str]] = {
    "usage": {"production": "生产", "auxiliary": "辅助", "non_production": "非生产"},
    "status": {"in_service": "在用", "idle": "闲置", "sealed": "封存", "scrapped": "报废"},
    "digital_basis": {"native": "原生", "retrofit_control": "改造控制", "retrofit_sensing": "加装传感"},
    "source": {"config": "配置文件", "assets_csv": "台账CSV", "import": "导入台账"},
    "reason": {"networked": "", "not_bound": "未接入采集", "no_expected_time": "无应有时段",
               "coverage": "覆盖率不足", "day_share": "有效天数不足", "live_window": "近期无有效数据"},
}


def pct(num: float, den: float) -> str:
    """A rate truncated to 0.1 % (never rounded up past a target)."""
    if den == 0:
        return "—"
    v = (Decimal(str(num)) * 100 / Decimal(str(den))).quantize(Decimal("0.1"), rounding=ROUND_DOWN)
    return f"{v} %"


def _num(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.2f}"


def _cell(key: str, value: Any, lang: Lang) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return ("是" if value else "否") if lang == "zh" else ("yes" if value else "no")
    if key == "coverage":
        return f"{float(value) * 100:.1f} %"
    if lang == "zh" and key in ZH_VALUES:
        return ZH_VALUES[key].get(str(value), str(value))
    return str(value)


# ------------------------------------------------------------------------------------------------ data


def report_data(result: PeriodResult, chain_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON package: the whole PeriodResult plus where it sits in the evidence chain."""
    data = result.to_dict()
    data["kind"] = "evidence_report"
    data["chain"] = ({"seq": chain_record["seq"], "hash": chain_record["hash"], "prev": chain_record["prev"]}
                     if chain_record else None)
    return data


def render_json(result: PeriodResult, chain_record: dict[str, Any] | None = None) -> str:
    return json.dumps(report_data(result, chain_record), ensure_ascii=False, indent=2)


def render_csv(result: PeriodResult, lang: Lang = "zh") -> str:
    """The device list, one row per register entry (UTF-8 with BOM so Excel opens Chinese right)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([zh if lang == "zh" else en for _, zh, en in DEVICE_COLUMNS])
    for row in result.to_dict()["devices"]:
        cells = []
        for key, _, _ in DEVICE_COLUMNS:
            v = row.get(key)
            if key == "coverage" and v is not None:
                cells.append(f"{v:.4f}")
            elif key == "original_value" and v is not None:
                cells.append(f"{v:.2f}")
            else:
                cells.append(_cell(key, v, lang))
        w.writerow(cells)
    return "\ufeff" + buf.getvalue()


def render_figures_csv(result: PeriodResult, lang: Lang = "zh") -> str:
    """Every figure of the enterprise and each workshop, with numerator, denominator and parameters."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(FIGURE_COLUMNS)
    scopes: list[tuple[str, list[Figure]]] = [("enterprise", result.figures), *result.workshops.items()]
    for scope, figs in scopes:
        for f in sorted(figs, key=lambda f: FIGURE_ORDER.index(f.id)):
            d = f.to_dict()
            w.writerow([scope, f.id, d["name_zh"] if lang == "zh" else d["name_en"], f.numerator, f.denominator,
                        "" if f.value is None else f"{f.value:.6f}", "" if f.target is None else f.target,
                        "" if f.passed is None else str(f.passed).lower(), d["defset"], result.period.label,
                        json.dumps(f.params, ensure_ascii=False, sort_keys=True)])
    return "\ufeff" + buf.getvalue()


# ------------------------------------------------------------------------------------------------ charts


def daily_chart(result: PeriodResult, lang: Lang) -> str:
    """Bars of the daily D2 against the target line (inline SVG)."""
    days = result.daily
    target = result.cfg.indicators.targets.networking_rate
    w, h, left, right, top, bottom = 1000, 300, 56, 16, 20, 44
    pw, ph = w - left - right, h - top - bottom
    n = max(len(days), 1)
    step = pw / n
    out = [f'<svg viewBox="0 0 {w} {h}" width="100%" role="img" '
           f'aria-label="{html.escape(T["daily_chart"][lang])}" font-size="12">']
    for pctv in (0, 25, 50, 75, 100):
        y = top + ph * (1 - pctv / 100)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{pctv}%</text>')
    for i, d in enumerate(days):
        x = left + i * step
        cx = x + step / 2
        if d.figure is None or d.figure.value is None:
            out.append(f'<text x="{cx:.1f}" y="{top + ph - 4:.1f}" text-anchor="middle" fill="#999">·</text>')
        else:
            v = d.figure.value
            bh = ph * v
            color = "#2e7d32" if d.figure.passed else "#e65100"
            out.append(f'<rect x="{x + step * 0.15:.1f}" y="{top + ph - bh:.1f}" width="{step * 0.7:.1f}" '
                       f'height="{bh:.1f}" fill="{color}"><title>{d.date.isoformat()}: '
                       f'{d.figure.numerator:g}/{d.figure.denominator:g} = {pct(d.figure.numerator, d.figure.denominator)}'
                       f'</title></rect>')
        out.append(f'<text x="{cx:.1f}" y="{top + ph + 16:.1f}" text-anchor="middle" fill="#333">{d.date.day}</text>')
    ty = top + ph * (1 - target)
    label = f'{"目标" if lang == "zh" else "target"} {target * 100:g}%'
    out.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{w - right}" y2="{ty:.1f}" stroke="#c62828" '
               f'stroke-width="2" stroke-dasharray="8 4"/>'
               f'<rect x="{left + 4}" y="{ty - 19:.1f}" width="{14 + 8 * len(label)}" height="17" fill="#fff" '
               f'stroke="#c62828" rx="3"/><text x="{left + 10}" y="{ty - 6:.1f}" fill="#c62828" '
               f'font-weight="bold">{label}</text>')
    out.append(f'<line x1="{left}" y1="{top + ph}" x2="{w - right}" y2="{top + ph}" stroke="#333"/>'
               f'<text x="{left + pw / 2}" y="{h - 6}" text-anchor="middle" fill="#333">'
               f'{"日期（" + result.period.label + "）" if lang == "zh" else "day of " + result.period.label}</text>')
    out.append("</svg>")
    return "".join(out)


def coverage_chart(result: PeriodResult, lang: Lang) -> str:
    """One bar per digital device in U: its share of expected buckets that were good, against the threshold."""
    rows = [r for r in result.devices if r.in_universe and r.asset.is_digital]
    threshold = result.cfg.indicators.coverage
    bar_h, left, right, top = 24, 260, 70, 24
    w = 1000
    h = top + bar_h * max(len(rows), 1) + 30
    pw = w - left - right
    out = [f'<svg viewBox="0 0 {w} {h}" width="100%" role="img" '
           f'aria-label="{html.escape(T["coverage_chart"][lang])}" font-size="12">']
    for pctv in (0, 50, 100):
        x = left + pw * pctv / 100
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{h - 24}" stroke="#ddd"/>'
                   f'<text x="{x:.1f}" y="{top - 10}" text-anchor="middle" fill="#555">{pctv}%</text>')
    for i, r in enumerate(rows):
        y = top + i * bar_h
        cov = r.evidence.coverage if r.evidence else None
        label = html.escape(f"{r.asset.id} {r.asset.name}"[:32])
        out.append(f'<text x="{left - 8}" y="{y + bar_h * 0.68:.1f}" text-anchor="end" fill="#222">{label}</text>')
        networked = bool(r.verdict and r.verdict.networked)
        if cov is None or r.asset.device is None:
            reason = "未接入" if r.asset.device is None else T["no_data"][lang]
            if lang == "en" and r.asset.device is None:
                reason = "not connected"
            out.append(f'<text x="{left + 4}" y="{y + bar_h * 0.68:.1f}" fill="#999">{reason}</text>')
            continue
        bw = pw * cov
        color = "#2e7d32" if networked else "#e65100"
        out.append(f'<rect x="{left}" y="{y + 4}" width="{bw:.1f}" height="{bar_h - 8}" fill="{color}">'
                   f'<title>{r.evidence.good if r.evidence else 0}/{r.evidence.expected if r.evidence else 0}</title>'
                   f'</rect><text x="{left + bw + 4:.1f}" y="{y + bar_h * 0.68:.1f}" fill="#222">'
                   f'{pct(r.evidence.good, r.evidence.expected) if r.evidence else ""}</text>')
    tx = left + pw * threshold
    out.append(f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{h - 24}" stroke="#c62828" stroke-width="2" '
               f'stroke-dasharray="6 4"/><text x="{tx:.1f}" y="{h - 8}" text-anchor="middle" fill="#c62828" '
               f'font-weight="bold">{"覆盖率阈值" if lang == "zh" else "coverage threshold"} {threshold * 100:g}%</text>')
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------------------------------------ html

CSS = """
body{font-family:"Noto Sans CJK SC","WenQuanYi Micro Hei","Microsoft YaHei","PingFang SC",sans-serif;margin:24px;
color:#222}
h1{font-size:22px;margin:0 0 12px}h2{font-size:17px;margin:28px 0 8px;border-bottom:2px solid #1565c0;padding-bottom:4px}
table{border-collapse:collapse;width:100%;font-size:12.5px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#e3f2fd;white-space:nowrap}td{white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums}.pass{color:#2e7d32;font-weight:bold}
.fail{color:#c62828;font-weight:bold}.meta td:first-child{width:180px;background:#fafafa}
.badge{display:inline-block;padding:2px 8px;border-radius:4px;color:#fff;font-size:12px}
.b-closed{background:#2e7d32}.b-provisional{background:#e65100}.b-live{background:#1565c0}
.warn li{color:#8d6e63}.small{font-size:11.5px;color:#555}code{background:#f3f3f3;padding:0 3px}
"""


def _figure_rows(figs: list[Figure], scope: str, lang: Lang) -> str:
    out = []
    for f in sorted(figs, key=lambda f: FIGURE_ORDER.index(f.id)):
        zh, en = NAMES[f.id]
        if f.passed is None:
            mark = "—"
        else:
            mark = f'<span class="{"pass" if f.passed else "fail"}">' \
                   f'{T["yes_pass" if f.passed else "no_pass"][lang]}</span>'
        target = "—" if f.target is None else f"≥ {f.target * 100:g} %"
        out.append(f"<tr><td>{html.escape(scope)}</td><td>{f.id}</td><td>{zh if lang == 'zh' else en}</td>"
                   f'<td class="n">{_num(f.numerator)}</td><td class="n">{_num(f.denominator)}</td>'
                   f'<td class="n">{pct(f.numerator, f.denominator)}</td><td>{target}</td><td>{mark}</td></tr>')
    return "".join(out)


REGISTER_KEYS = ("id", "name", "workshop", "line", "category", "usage", "status", "commissioned", "is_cnc",
                 "is_digital", "digital_basis", "is_key_process", "original_value", "source", "in_universe")
EVIDENCE_KEYS = ("id", "device", "protocol", "endpoint", "expected_buckets", "good_buckets", "coverage",
                 "expected_days", "good_days", "first_good", "last_good", "networked", "reason")


def _device_table(devices: list[dict[str, Any]], title: str, keys: tuple[str, ...], lang: Lang) -> str:
    """The device list in two tables (register fields; evidence), so each fits a printed page's width."""
    heads = {k: zh if lang == "zh" else en for k, zh, en in DEVICE_COLUMNS}
    cols = [(k, heads[k]) for k in keys]
    parts = [f"<h2>{html.escape(title)}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for _, h in cols)
             + "</tr>"]
    for row in devices:
        cells = []
        for k, _ in cols:
            v = row.get(k)
            if k == "coverage" and v is not None:
                text = pct(row["good_buckets"], row["expected_buckets"])
            elif k == "original_value" and v is not None:
                text = _num(v)
            elif k == "reason" and lang == "en":
                text = row.get("reason_text") or ""
            else:
                text = _cell(k, v, lang)
            cls = ' class="n"' if isinstance(v, int | float) and not isinstance(v, bool) else ""
            if k == "networked" and v is not None:
                cls = f' class="{"pass" if v else "fail"}"'
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def render_html(result: PeriodResult, lang: Lang = "zh", chain_record: dict[str, Any] | None = None) -> str:
    """One self-contained HTML file: no external style sheet, font, script or image."""
    L = lambda k: T[k][lang]  # noqa: E731
    d = result.to_dict()
    site = result.cfg.site
    p = result.period
    state = d["status"]
    region = " ".join(x for x in (site.city, site.county) if x) or "—"
    chain_txt = (f"#{chain_record['seq']} · sha256 <code>{chain_record['hash']}</code>" if chain_record
                 else L("not_chained"))
    meta = [
        (L("enterprise"), html.escape(f"{site.enterprise_name or ''} ({site.enterprise_id})")),
        (L("region"), html.escape(region)),
        (L("period"), html.escape(p.label) + " · defset v1"),
        (L("window"), html.escape(f"{d['period']['start']} — {d['period']['end']}")),
        (L("closes"), html.escape(d["period"]["closes"])),
        (L("state"), f'<span class="badge b-{state}">{L(state)}</span>'),
        (L("snapshot"), d["snapshot"]),
        (L("generated"), d["computed_at"]),
        (L("chain"), chain_txt),
    ]
    parts = [f'<!DOCTYPE html><html lang="{"zh-CN" if lang == "zh" else "en"}"><head><meta charset="utf-8">'
             f"<title>{html.escape(L('title'))} {html.escape(p.label)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(L('title'))} · {html.escape(p.label)}</h1>",
             '<table class="meta">' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in meta) + "</table>",
             f"<h2>{L('summary')}</h2><table><tr><th>{L('scope')}</th><th>{L('figure')}</th><th>{L('name')}</th>"
             f"<th>{L('numerator')}</th><th>{L('denominator')}</th><th>{L('value')}</th><th>{L('target')}</th>"
             f"<th>{L('pass')}</th></tr>",
             _figure_rows(result.figures, L("whole"), lang)]
    for ws, figs in result.workshops.items():
        parts.append(_figure_rows(figs, f"{L('workshop')} {ws}", lang))
    parts.append("</table>")
    params = {k: v for k, v in result.params.items() if v is not None}
    parts.append(f"<h2>{L('params')}</h2><table>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v, ensure_ascii=False))}</td></tr>"
        for k, v in params.items()) + "</table>")
    if result.daily:
        parts.append(f"<h2>{L('daily_chart')}</h2>{daily_chart(result, lang)}")
    parts.append(f"<h2>{L('coverage_chart')}</h2>{coverage_chart(result, lang)}")
    for title, keys in ((L("devices"), REGISTER_KEYS), (L("evidence"), EVIDENCE_KEYS)):
        parts.append(_device_table(d["devices"], title, keys, lang))
    if result.warnings:
        parts.append(f"<h2>{L('warnings')}</h2><ul class='warn'>"
                     + "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings) + "</ul>")
    parts.append(f"<h2>{L('recompute')}</h2><p class='small'>{html.escape(L('recompute_text'))}</p>")
    parts.append("</body></html>")
    return "".join(parts)


EVIDENCE_T: dict[str, dict[str, str]] = {
    "title": {"zh": "证据签名与存证", "en": "Signature and anchoring of the evidence"},
    "key": {"zh": "签名密钥指纹（Ed25519）", "en": "Signing key fingerprint (Ed25519)"},
    "no_key": {"zh": "尚无签名密钥", "en": "no signing key yet"},
    "record": {"zh": "本期证据链记录", "en": "This period's chain record"},
    "head": {"zh": "证据链最新记录", "en": "Chain head"},
    "anchors": {"zh": "存证发送（主题 · 入队时间 · 确认时间）", "en": "Anchors (topic · queued · acknowledged)"},
    "no_anchor": {"zh": "尚未发送", "en": "not sent yet"},
    "not_acked": {"zh": "未确认（在发件箱中等待）", "en": "not acknowledged (waiting in the outbox)"},
    "register": {"zh": "设备台账版本", "en": "Register version"},
    "config_register": {"zh": "配置文件中的设备（无导入台账）", "en": "the config's devices (no imported register)"},
    "rows": {"zh": "行", "en": "rows"},
    "check": {"zh": "复核：collector verify evidence-chain.jsonl --fingerprint 指纹",
              "en": "Check: collector verify evidence-chain.jsonl --fingerprint FINGERPRINT"},
}


def evidence_section(evidence: dict[str, Any] | None, lang: Lang = "zh") -> str:
    """The report's evidence footer: signing key fingerprint, chain record and head, anchoring receipts, the
    register version the figures were computed with (`commands.evidence_info` builds `evidence`)."""
    if evidence is None:
        return ""
    E = lambda k: html.escape(EVIDENCE_T[k][lang])  # noqa: E731

    def rec(r: dict[str, Any] | None) -> str:
        return "—" if r is None else f"#{r['seq']} · {html.escape(str(r['ts']))} · sha256 <code>{r['hash']}</code>"

    anchors = evidence.get("anchors") or []
    sent = "<br>".join(f"#{a['seq']} · {html.escape(str(a['topic']))} · {html.escape(str(a['queued_at']))} · "
                       + (html.escape(str(a['acked_at'])) if a.get("acked_at") else E("not_acked"))
                       for a in anchors) or E("no_anchor")
    reg = evidence.get("register")
    reg_txt = E("config_register") if not reg else (
        f"sha256 <code>{reg['sha256'][:16]}</code> · {reg['rows']} {E('rows')} · "
        + html.escape(dt.datetime.fromtimestamp(reg["imported_at"], dt.UTC).isoformat(timespec="seconds")))
    rows = [(E("key"), f"<code>{html.escape(evidence['fingerprint'])}</code>" if evidence.get("fingerprint")
             else E("no_key")),
            (E("record"), rec(evidence.get("record"))), (E("head"), rec(evidence.get("head"))),
            (E("anchors"), sent), (E("register"), reg_txt)]
    return (f'<h2>{E("title")}</h2><table class="meta evidence">'
            + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
            + f'</table><p class="small">{E("check")}</p>')


def write_package(result: PeriodResult, out_dir: Path, formats: list[str], lang: Lang = "zh",
                  chain_record: dict[str, Any] | None = None, evidence: dict[str, Any] | None = None) -> list[Path]:
    """Write report-<period>.<fmt> for each format (CSV also writes report-<period>-figures.csv)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"report-{result.period.label}"
    written = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        if fmt == "html":
            page = render_html(result, lang, chain_record)
            page = page.replace("</body></html>", evidence_section(evidence, lang) + "</body></html>")
            path.write_text(page, encoding="utf-8")
        elif fmt == "json":
            data = report_data(result, chain_record) | {"evidence": evidence}
            path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
        elif fmt == "csv":
            path.write_text(render_csv(result, lang), encoding="utf-8", newline="")
            fig = out_dir / f"{stem}-figures.csv"
            fig.write_text(render_figures_csv(result, lang), encoding="utf-8", newline="")
            written.append(path)
            written.append(fig)
            continue
        else:
            raise ValueError(f"unknown format '{fmt}': html, csv or json")
        written.append(path)
    return written
