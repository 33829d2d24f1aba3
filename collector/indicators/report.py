"""The monthly evidence package: one self-contained HTML file (inline CSS and SVG charts), its PDF, CSV and JSON.

Written for the assessor who grades the enterprise: Chinese by default (English with lang "en"), parameters as
labelled values with units, dates as 2026年11月1日 00:00 – 11月30日 24:00, rows outside U greyed with the
reason they are not counted, the 统一社会信用代码 in the header and the 企业承诺, signing key, chain head and
anchors in the footer. Rates are shown truncated to 0.1 % (rates.pct: 54.96 % shows as 54.9 %), so a shown
value never looks like it meets a target that the exact fraction misses; pass marks come from the exact
fraction (rates.Figure.passed).
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import zoneinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.evidence import anchors, hub_anchors, keys
from collector.indicators import chain
from collector.indicators.figures import FIGURE_ORDER, SIMULATED_BANNER, SIMULATED_BANNER_EN, PeriodResult
from collector.indicators.notices import in_lang
from collector.indicators.pdf import html_to_pdf
from collector.indicators.periods import Period
from collector.indicators.rates import NAMES, Figure, pct, truncated
from collector.indicators.register import register_version

if TYPE_CHECKING:  # the root model loads every protocol plugin; these figures need none
    from collector.config import CollectorConfig

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
    "credit_code": {"zh": "统一社会信用代码", "en": "Unified social credit code"},
    "credit_missing": {"zh": "未填写（配置项 site.credit_code）", "en": "not set (config site.credit_code)"},
    "county": {"zh": "所在区县", "en": "County"},
    "param": {"zh": "参数", "en": "Parameter"},
    "setting": {"zh": "取值", "en": "Value"},
    "pledge": {"zh": "企业承诺", "en": "Enterprise pledge"},
    "pledge_text": {
        "zh": "本企业承诺：本报告所列设备台账真实、完整，联网数据由采集器自动采集与计算，未经人工修改；"
              "如有不实，愿承担相应责任。",
        "en": "The enterprise declares that the asset register in this report is true and complete and that the "
              "networking data were collected and computed automatically by the collector without manual "
              "changes; it accepts responsibility for any misstatement."},
    "signing_key": {"zh": "签名密钥指纹", "en": "Signing key fingerprint"},
    "unsigned": {"zh": "未签名 / unsigned", "en": "unsigned / 未签名"},
    "chain_head": {"zh": "证据链最新记录", "en": "Evidence chain head"},
    "no_chain": {"zh": "无（尚无证据链记录）", "en": "none (no chain record yet)"},
    "anchors": {"zh": "外部存证回执", "en": "Anchoring receipts"},
    "no_anchors": {"zh": "无（尚未向外部存证）", "en": "none (not anchored yet)"},
    "hub_anchors": {"zh": "市级平台回执（平台签名）", "en": "Hub receipts (signed by the hub)"},
    "hub_received": {"zh": "平台接收", "en": "received by the hub"},
    "hub_key": {"zh": "平台密钥", "en": "hub key"},
    "sent": {"zh": "发送", "en": "sent"},
    "acked": {"zh": "确认", "en": "acknowledged"},
    "not_acked": {"zh": "未确认（在发件箱中等待）", "en": "not acknowledged (waiting in the outbox)"},
    "register_version": {"zh": "台账版本", "en": "Register version"},
    "no_register_version": {"zh": "配置文件中的设备（无导入台账）", "en": "the config's devices (no imported register)"},
    "period_record": {"zh": "本期证据链记录", "en": "This period's chain record"},
    "how_to_verify": {"zh": "复核方法", "en": "How to verify"},
    "verify_hint": {"zh": "collector verify evidence-chain.jsonl --fingerprint 指纹",
                    "en": "collector verify evidence-chain.jsonl --fingerprint FINGERPRINT"},
    "rows": {"zh": "条", "en": "rows"},
    "imported": {"zh": "导入于", "en": "imported"},
    "stamp": {"zh": "企业盖章", "en": "Company seal"},
    "signer": {"zh": "负责人签字", "en": "Signed by"},
    "date": {"zh": "日期", "en": "Date"},
    "identity_change": {"zh": "设备身份变化", "en": "device identity changed"},
    "before": {"zh": "原身份", "en": "before"},
    "after": {"zh": "新身份", "en": "after"},
    "simulated_mark": {"zh": "模拟设备", "en": "simulated"},
    "simulated_banner": {"zh": SIMULATED_BANNER, "en": SIMULATED_BANNER_EN},
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
    ("excluded", "不计入原因", "excluded"), ("simulated", "模拟设备", "simulated"),
    ("expected_buckets", "应有时段数", "expected_buckets"), ("good_buckets", "有效时段数", "good_buckets"),
    ("coverage", "覆盖率", "coverage"), ("expected_days", "应有天数", "expected_days"),
    ("good_days", "有效天数", "good_days"), ("first_good", "首次有效数据", "first_good"),
    ("last_good", "最后有效数据", "last_good"), ("networked", "是否联网", "networked"),
    ("reason", "未联网原因", "reason"), ("simulated", "模拟设备", "simulated"),
]
FIGURE_COLUMNS = ["scope", "figure", "name", "numerator", "denominator", "value", "target", "passed", "defset",
                  "period", "params", "note"]
ZH_VALUES: dict[str, dict[str, str]] = {
    "usage": {"production": "生产", "auxiliary": "辅助", "non_production": "非生产"},
    "status": {"in_service": "在用", "idle": "闲置", "sealed": "封存", "scrapped": "报废"},
    "digital_basis": {"native": "原生", "retrofit_control": "改造控制", "retrofit_sensing": "加装传感"},
    "source": {"config": "配置文件", "assets_csv": "台账CSV", "import": "导入台账"},
    "reason": {"networked": "", "not_bound": "未接入采集", "no_expected_time": "无应有时段",
               "coverage": "覆盖率不足", "day_share": "有效天数不足", "live_window": "近期无有效数据",
               "simulated": "模拟设备"},
}


def _num(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.2f}"


EN_VALUES: dict[str, dict[str, str]] = {
    "usage": {"production": "production", "auxiliary": "auxiliary", "non_production": "non-production"},
    "status": {"in_service": "in service", "idle": "idle", "sealed": "sealed", "scrapped": "scrapped"},
    "digital_basis": {"native": "native", "retrofit_control": "retrofit (control)",
                      "retrofit_sensing": "retrofit (sensing)"},
    "source": {"config": "config", "assets_csv": "register CSV", "import": "imported register"},
}
# Why a register row is outside U (register.Asset.excluded): shown as 不计入（…） beside the row
EXCLUDED: dict[str, tuple[str, str]] = {
    "scrapped": ("报废", "scrapped"), "sealed": ("封存", "sealed"), "non_production": ("非生产", "non-production"),
    "not_commissioned": ("未投产", "not yet commissioned"), "not_key_process": ("非关键工序", "not a key process"),
}


def excluded_text(code: str, lang: Lang) -> str:
    zh, en = EXCLUDED.get(code, (code, code))
    return f"不计入（{zh}）" if lang == "zh" else f"not counted ({en})"


def _cell(key: str, value: Any, lang: Lang, machine: bool = False) -> str:
    """A register value as shown; `machine` (the English CSV) keeps the keys the import reads back."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return ("是" if value else "否") if lang == "zh" else ("yes" if value else "no")
    table = ZH_VALUES if lang == "zh" else ({} if machine else EN_VALUES)
    if key in table:
        return table[key].get(str(value), str(value))
    return str(value)


# ------------------------------------------------------------------------------------------------ dates

EN_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _local(ts: float, tz: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, zoneinfo.ZoneInfo(tz))


def fmt_time(ts: float, tz: str, lang: Lang, end: bool = False, year: bool = True) -> str:
    """2026年11月1日 00:00 / 1 Nov 2026 00:00; an end at midnight is 24:00 of the day before (月末 24:00)."""
    t = _local(ts, tz)
    hm = t.strftime("%H:%M")
    if end and (t.hour, t.minute, t.second) == (0, 0, 0):
        t, hm = t - dt.timedelta(days=1), "24:00"
    if lang == "zh":
        return f"{f'{t.year}年' if year else ''}{t.month}月{t.day}日 {hm}"
    return f"{t.day} {EN_MONTHS[t.month - 1]}{f' {t.year}' if year else ''} {hm}"


def fmt_date(d: dt.date, lang: Lang) -> str:
    return f"{d.year}年{d.month}月{d.day}日" if lang == "zh" else f"{d.day} {EN_MONTHS[d.month - 1]} {d.year}"


def fmt_window(start: float, end: float, tz: str, lang: Lang) -> str:
    """[start, end) as an assessor reads it: 2026年11月1日 00:00 – 11月30日 24:00 (the year once when it is one)."""
    same_year = _local(start, tz).year == _local(end - 1, tz).year
    return f"{fmt_time(start, tz, lang)} – {fmt_time(end, tz, lang, end=True, year=not same_year)}"


def fmt_duration(seconds: float, lang: Lang) -> str:
    """300 -> 5 分钟 / 5 min."""
    for size, zh, en in ((3600, "小时", "h"), (60, "分钟", "min"), (1, "秒", "s")):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g} {zh if lang == 'zh' else en}"
    return f"{seconds:g} {'秒' if lang == 'zh' else 's'}"


def fmt_share(x: float) -> str:
    return f"{x * 100:g} %"


# ------------------------------------------------------------------------------------------------ parameters

WEEKDAY_NAMES = {"mon": ("周一", "Mon"), "tue": ("周二", "Tue"), "wed": ("周三", "Wed"), "thu": ("周四", "Thu"),
                 "fri": ("周五", "Fri"), "sat": ("周六", "Sat"), "sun": ("周日", "Sun")}


def param_rows(result: PeriodResult, lang: Lang) -> list[tuple[str, str]]:
    """计算参数 as (label, value) in the report's language: units and plain values, no internal key names."""
    zh = lang == "zh"
    ind = result.cfg.indicators
    p = result.period
    sep = "、" if zh else ", "

    def row(zh_label: str, en_label: str, value: str) -> tuple[str, str]:
        return (zh_label if zh else en_label, value)

    rows = [row("口径版本", "Definition set", "defset v1"),
            row("统计范围", "Scope", ("仅关键工序设备" if zh else "key-process equipment only") if ind.scope ==
                "key_process" else ("全部生产及辅助设备" if zh else "all production and auxiliary equipment")),
            row("时区", "Time zone", p.tz)]
    if p.kind == "now":
        rows.append(row("实时联网判定窗口", "Live window", fmt_duration(ind.live_window_s, lang)))
    else:
        cal = ind.calendar
        rows += [
            row("时段长度", "Bucket length", fmt_duration(ind.bucket, lang)),
            row("覆盖率阈值", "Coverage threshold", fmt_share(ind.coverage)),
            row("有效天数阈值", "Day-share threshold", fmt_share(ind.day_share)),
            row("数据停滞判定", "Stale after", fmt_duration(ind.stale_after, lang)),
            row("应有时间口径", "Expected time",
                (("班次日历 ∩ 采集器运行时间" if zh else "shift calendar ∩ collector uptime") if cal else
                 ("采集器运行时间" if zh else "collector uptime"))),
        ]
        if cal is not None:
            days = sep.join(WEEKDAY_NAMES[d][0 if zh else 1] for d in cal.working_days)
            rows.append(row("工作日", "Working days", days))
            rows.append(row("班次", "Shifts", sep.join(cal.shifts)))
            if cal.holidays:
                rows.append(row("节假日", "Holidays", sep.join(fmt_date(d, lang) for d in cal.holidays)))
            if cal.workdays:
                rows.append(row("调休工作日", "Extra working days", sep.join(fmt_date(d, lang) for d in cal.workdays)))
        rows.append(row("关账规则", "Close rule",
                        "次月3日24:00前送达的数据计入，之后送达的不改变已关账月份" if zh else
                        "data delivered by 24:00 on the 3rd of the next month counts; later data never changes a "
                        "closed month"))
    t = ind.targets
    rows.append(row("目标值", "Targets", f"D1 ≥ {fmt_share(t.cnc_rate)}{sep}D2 ≥ {fmt_share(t.networking_rate)}"))
    if result.months:
        rows.append(row("年度汇总方式", "Year pooling",
                        ("按设备·月合计（Σ联网设备月 / Σ数字化设备月）" if zh else
                         "device-months pooled (Σ networked / Σ digital device-months)")))
        rows.append(row("计入月份", "Months", sep.join(result.months)))
    return rows


# ------------------------------------------------------------------------------------------------ data


def report_footer_data(cfg: CollectorConfig, state_dir: Path, period: Period | None,
                       record: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the footer proves the report with: the signing key's fingerprint, this period's chain record and the
    chain head, where and when they were anchored (sent through the outbox, acknowledged by the broker), and
    the register version in force at the period's end (`period` None: today's)."""
    try:
        signer = keys.load(state_dir)
    except keys.KeyFileError:
        signer = None
    try:
        head = chain.head(state_dir / chain.CHAIN_FILE) if (state_dir / chain.CHAIN_FILE).exists() else None
    except (OSError, ValueError):  # unreadable: no head to show (`collector verify` says what is wrong)
        head = None
    wanted = {r["hash"] for r in (record, head) if r is not None}
    found = [r for r in anchors.receipts(state_dir / anchors.ANCHOR_FILE) if r.get("hash") in wanted]
    return {
        "fingerprint": keys.show_fingerprint(signer.fingerprint) if signer else None,
        "head": {k: head.get(k) for k in ("seq", "hash", "ts")} if head else None,
        "record": {k: record.get(k) for k in ("seq", "hash", "ts")} if record else None,
        "anchors": [{k: r.get(k) for k in ("seq", "hash", "reason", "topic", "queued_at", "acked_at", "broker")}
                    for r in found[-3:]],
        "hub_anchors": [{k: e.get(k) for k in ("seq", "hash", "status", "hub", "hub_key", "received_at")}
                        for e in hub_anchors.anchors(state_dir / hub_anchors.HUB_FILE) if e.get("hash") in wanted][-3:],
        "topic": cfg.evidence_topic,
        "register": register_version(cfg, state_dir, period.end if period is not None else None),
    }


def report_data(result: PeriodResult, chain_record: dict[str, Any] | None = None,
                footer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON package: the whole PeriodResult plus where it sits in the evidence chain."""
    data = result.to_dict()
    data["kind"] = "evidence_report"
    data["chain"] = ({"seq": chain_record["seq"], "hash": chain_record["hash"], "prev": chain_record["prev"]}
                     if chain_record else None)
    data["credit_code"] = result.cfg.site.credit_code
    if footer is not None:
        data["evidence"] = footer
    return data


def render_json(result: PeriodResult, chain_record: dict[str, Any] | None = None,
                footer: dict[str, Any] | None = None) -> str:
    return json.dumps(report_data(result, chain_record, footer), ensure_ascii=False, indent=2)


def _exact(num: float | None, den: float | None, places: int) -> str:
    """A share for machine-readable files: truncated, never rounded (1/13 -> 0.0769)."""
    if num is None or den is None:
        return ""
    v = truncated(num, den, places)
    return "" if v is None else str(v)


def render_csv(result: PeriodResult, lang: Lang = "zh") -> str:
    """The device list, one row per register entry (UTF-8 with BOM so Excel opens Chinese right)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([zh if lang == "zh" else en for _, zh, en in DEVICE_COLUMNS])
    for row in result.to_dict()["devices"]:
        cells = []
        for key, _, _ in DEVICE_COLUMNS:
            v = row.get(key)
            if key == "coverage":
                cells.append(_exact(row["good_buckets"], row["expected_buckets"], 4))
            elif key == "original_value" and v is not None:
                cells.append(f"{v:.2f}")
            elif key == "excluded" and v is not None:
                cells.append(EXCLUDED.get(v, (v, v))[0] if lang == "zh" else v)
            else:
                cells.append(_cell(key, v, lang, machine=True))
        w.writerow(cells)
    return "\ufeff" + buf.getvalue()


def render_figures_csv(result: PeriodResult, lang: Lang = "zh") -> str:
    """Every figure of the enterprise and each workshop, with numerator, denominator and parameters; the value
    is the fraction truncated to 6 decimals (never rounded)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(FIGURE_COLUMNS)
    scopes: list[tuple[str, list[Figure]]] = [("enterprise", result.figures), *result.workshops.items()]
    note = _banner_text(result, lang)
    for scope, figs in scopes:
        for f in sorted(figs, key=lambda f: FIGURE_ORDER.index(f.id)):
            d = f.to_dict()
            w.writerow([scope, f.id, d["name_zh"] if lang == "zh" else d["name_en"], f.numerator, f.denominator,
                        _exact(f.numerator, f.denominator, 6), "" if f.target is None else f.target,
                        "" if f.passed is None else str(f.passed).lower(), d["defset"], result.period.label,
                        json.dumps(f.params, ensure_ascii=False, sort_keys=True), note])
    return "\ufeff" + buf.getvalue()


def _banner_text(result: PeriodResult, lang: Lang) -> str:
    """The simulated-devices banner in the report's language, or "" when no simulated device is counted."""
    if result.banner is None:
        return ""
    return SIMULATED_BANNER if lang == "zh" else f"{SIMULATED_BANNER_EN} ({SIMULATED_BANNER})"


def _svg_banner(result: PeriodResult, lang: Lang, x: float, y: float) -> str:
    text = _banner_text(result, lang)
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="end" fill="#c62828" font-weight="bold" font-size="16">'
            f"{html.escape(text)}</text>") if text else ""


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
    out.append(_svg_banner(result, lang, w - right, top + 16))
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
        mark = f" [{T['simulated_mark'][lang]}]" if r.simulated else ""
        label = html.escape(f"{r.asset.id} {r.asset.name}"[:32] + mark)
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
    out.append(_svg_banner(result, lang, w - right, h - 8))
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------------------------------------ html

CSS = """
body{font-family:"Noto Sans CJK SC","WenQuanYi Micro Hei","Microsoft YaHei","PingFang SC",sans-serif;margin:24px;
color:#222}
h1{font-size:22px;margin:0 0 12px}h2{font-size:17px;margin:28px 0 8px;border-bottom:2px solid #1565c0;padding-bottom:4px}
table{border-collapse:collapse;width:100%;font-size:12.5px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#e3f2fd;white-space:nowrap}td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}.pass{color:#2e7d32;font-weight:bold}
.fail{color:#c62828;font-weight:bold}.meta td:first-child,.params td:first-child{width:180px;background:#fafafa}
.badge{display:inline-block;padding:2px 8px;border-radius:4px;color:#fff;font-size:12px}
.b-closed{background:#2e7d32}.b-provisional{background:#e65100}.b-live{background:#1565c0}
.warn li{color:#6d4c41}.small{font-size:11.5px;color:#555}code{background:#f3f3f3;padding:0 3px}
td.t{white-space:nowrap}tr.out td{color:#9e9e9e;background:#f5f5f5}td.excl{color:#757575;font-style:italic}
.sim{display:inline-block;margin-left:4px;padding:0 4px;border-radius:3px;background:#c62828;color:#fff;font-size:11px}
.banner{background:#c62828;color:#fff;font-weight:bold;font-size:16px;text-align:center;padding:6px;margin:0 0 12px}
.unsigned{color:#c62828;font-weight:bold}footer{margin-top:28px;border-top:2px solid #1565c0;padding-top:8px}
.pledge{font-size:13.5px;line-height:1.7}.stamp td{height:56px;vertical-align:top}
@page{size:A4 landscape;margin:14mm 10mm 12mm 10mm}
@media print{body{margin:0;font-size:11px}table{font-size:10.5px}h2{break-after:avoid}tr{break-inside:avoid}
 .banner.screen{display:none}footer{break-inside:avoid}}
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
EVIDENCE_KEYS = ("id", "name", "device", "protocol", "endpoint", "expected_buckets", "good_buckets", "coverage",
                 "expected_days", "good_days", "first_good", "last_good", "networked", "reason")


def _device_table(devices: list[dict[str, Any]], title: str, keys: tuple[str, ...], lang: Lang, tz: str,
                  table_id: str) -> str:
    """The device list in two tables (register fields; evidence), so each fits a printed page's width.

    A row outside U is greyed and says why it is not counted (不计入（报废）…) where a yes/no would mislead."""
    heads = {k: zh if lang == "zh" else en for k, zh, en in DEVICE_COLUMNS}
    cols = [(k, heads[k]) for k in keys]
    parts = [f'<h2>{html.escape(title)}</h2><table id="{table_id}"><tr>'
             + "".join(f"<th>{html.escape(h)}</th>" for _, h in cols)
             + "</tr>"]
    for row in devices:
        excl = row.get("excluded")
        cells = []
        for k, _ in cols:
            v = row.get(k)
            cls = ' class="n"' if isinstance(v, int | float) and not isinstance(v, bool) else ""
            extra = ""
            if excl is not None and k in ("in_universe", "networked"):
                text, cls = excluded_text(excl, lang), ' class="excl"'
            elif k == "coverage" and v is not None:
                text = pct(row["good_buckets"], row["expected_buckets"])
            elif k in ("first_good", "last_good") and v is not None:  # last_good: the end of its bucket
                text = fmt_time(dt.datetime.fromisoformat(v).timestamp(), tz, lang, end=k == "last_good")
            elif k == "original_value" and v is not None:
                text = _num(v)
            elif k == "reason" and lang == "en":
                text = row.get("reason_text") or ""
            elif k == "reason" and v == "simulated":
                text = f"模拟设备（{row.get('simulated_reason')}）"
            else:
                text = _cell(k, v, lang)
            if k in ("id", "first_good", "last_good", "commissioned", "coverage"):
                cls = ' class="t"'
            if k == "networked" and v is not None and excl is None:
                cls = f' class="{"pass" if v else "fail"}"'
            if k == "name" and row.get("simulated"):
                extra = f'<span class="sim">{T["simulated_mark"][lang]}</span>'
            cells.append(f"<td{cls}>{html.escape(text)}{extra}</td>")
        attrs = f' data-id="{html.escape(row["id"])}"' + (' class="out"' if excl is not None else "")
        parts.append(f"<tr{attrs}>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def _identity(value: Any, keys: list[str] | None = None) -> str:
    """An identity as `key=value; …`: an identity record's `values` (only the changed `keys` when given)."""
    if isinstance(value, dict) and isinstance(value.get("values"), dict):
        value = value["values"]
    if isinstance(value, dict) and keys:
        value = {k: value.get(k) for k in keys}
    if isinstance(value, dict):
        return "; ".join(f"{k}={v}" for k, v in value.items() if v not in (None, ""))
    return "—" if value is None else str(value)


def _ts(value: Any) -> float:
    """POSIX seconds, or an ISO 8601 time as the JSON of a record holds it."""
    return dt.datetime.fromisoformat(value).timestamp() if isinstance(value, str) else float(value)


def warning_lines(result: PeriodResult, lang: Lang) -> list[str]:
    """提示 in the report's language: register/live mismatches, then identity changes with both identities."""
    names = {r.asset.id: r.asset.name for r in result.devices}
    names.update({r.asset.device: r.asset.name for r in result.devices if r.asset.device})
    out = [in_lang(w, lang) for w in result.warnings]
    for w in result.identity_warnings:
        dev = str(w.get("device", ""))
        who = f"{dev} {names[dev]}" if names.get(dev, dev) != dev else dev
        when = fmt_time(_ts(w["time"]), result.period.tz, lang) if w.get("time") is not None else "—"
        sep = "：" if lang == "zh" else ": "
        out.append(f"{who}{sep}{T['identity_change'][lang]}（{when}）{T['before'][lang]} {_identity(w.get('before'), w.get('changed'))}"
                   f" → {T['after'][lang]} {_identity(w.get('after'), w.get('changed'))}" if lang == "zh" else
                   f"{who}{sep}{T['identity_change'][lang]} at {when}; {T['before'][lang]}: "
                   f"{_identity(w.get('before'), w.get('changed'))} → {T['after'][lang]}: {_identity(w.get('after'), w.get('changed'))}")
    return out


def _footer(result: PeriodResult, footer: dict[str, Any] | None, lang: Lang) -> str:
    """企业承诺, the signing key, the chain head, anchoring receipts, register version, a place to stamp."""
    L = lambda k: T[k][lang]  # noqa: E731
    tz = result.period.tz
    f = footer or {}
    fp = f.get("fingerprint")
    key = f"<code>{html.escape(fp)}</code>" if fp else f'<span class="unsigned">{L("unsigned")}</span>'

    def rec(r: dict[str, Any] | None) -> str:
        return L("no_chain") if not r else (f"#{r['seq']} · {fmt_time(_ts(r['ts']), tz, lang)} · sha256 "
                                            f"<code>{html.escape(str(r['hash']))}</code>")

    anchor_txt = "<br>".join(
        f"#{a['seq']} · {html.escape(str(a['topic']))} · {L('sent')} {fmt_time(_ts(a['queued_at']), tz, lang)} · "
        + (f"{L('acked')} {fmt_time(_ts(a['acked_at']), tz, lang)}" if a.get("acked_at") else L("not_acked"))
        for a in f.get("anchors") or []) or L("no_anchors")
    hub_txt = "<br>".join(
        f"#{a['seq']} · {html.escape(str(a.get('hub')))} · {L('hub_received')} "
        f"{fmt_time(_ts(a['received_at']), tz, lang)} · {L('hub_key')} <code>"
        f"{html.escape(keys.show_fingerprint(str(a.get('hub_key'))))}</code>" for a in f.get("hub_anchors") or [])
    reg = f.get("register")
    reg_txt = (f"{L('imported')} {fmt_time(reg['imported_at'], tz, lang)} · {reg['rows']} {L('rows')} · sha256 "
               f"<code>{html.escape(reg['sha256'])}</code>" if reg else L("no_register_version"))
    pledge = result.cfg.indicators.pledge or L("pledge_text")
    rows = [(L("signing_key"), key), (L("period_record"), rec(f.get("record"))), (L("chain_head"), rec(f.get("head"))),
            (L("anchors"), anchor_txt), *([(L("hub_anchors"), hub_txt)] if hub_txt else []),
            (L("register_version"), reg_txt), (L("how_to_verify"), L("verify_hint"))]
    return (f"<footer><h2>{L('pledge')}</h2><p class='pledge'>{html.escape(pledge)}</p>"
            '<table class="meta">' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"
            f'<table class="stamp"><tr><td>{L("stamp")}</td><td>{L("signer")}</td><td>{L("date")}</td></tr></table>'
            "</footer>")


def _css_string(text: str) -> str:
    """A CSS string literal (for @page margin boxes) that cannot end the string or the <style> element."""
    return '"' + text.replace("\\", "\\5c ").replace('"', "\\22 ").replace("<", "\\3c ") + '"'


def render_html(result: PeriodResult, lang: Lang = "zh", chain_record: dict[str, Any] | None = None,
                footer: dict[str, Any] | None = None) -> str:
    """One self-contained HTML file: no external style sheet, font, script or image."""
    L = lambda k: T[k][lang]  # noqa: E731
    d = result.to_dict()
    site = result.cfg.site
    p = result.period
    tz = p.tz
    state = d["status"]
    chain_txt = (f"#{chain_record['seq']} · sha256 <code>{chain_record['hash']}</code>" if chain_record
                 else L("not_chained"))
    snapshot = result.period.snapshot(result.now)
    meta = [
        (L("enterprise"), html.escape(f"{site.enterprise_name or ''} ({site.enterprise_id})")),
        (L("credit_code"), html.escape(site.credit_code) if site.credit_code else L("credit_missing")),
        (L("county"), html.escape(" ".join(x for x in (site.city, site.county) if x) or "—")),
        (L("period"), html.escape(p.label) + " · defset v1"),
        (L("window"), html.escape(fmt_window(p.start, p.end, tz, lang))),
        (L("closes"), html.escape(fmt_time(p.closes, tz, lang, end=True))),
        (L("state"), f'<span class="badge b-{state}">{L(state)}</span>'),
        (L("snapshot"), fmt_date(snapshot, lang)),
        (L("generated"), fmt_time(result.now, tz, lang)),
        (L("chain"), chain_txt),
    ]
    page_banner = figures_banner = ""
    if result.banner:  # simulated devices are counted (allow_simulated): every page says so
        text = html.escape(f"{SIMULATED_BANNER}（{'、'.join(result.simulated)}）" if lang == "zh" else
                           f"{SIMULATED_BANNER_EN} ({', '.join(result.simulated)})")
        # the @page margin box repeats it at the top of every printed page; the div stands at the top on screen
        page_banner = (f'<style>@page{{@top-center{{content:{_css_string(L("simulated_banner"))};'
                       'color:#c62828;font-weight:bold;font-size:14px}}</style>'
                       f'<div class="banner screen" id="simulated-banner">{text}</div>')
        figures_banner = f'<div class="banner" id="simulated-banner-figures">{text}</div>'
    who = _css_string(f"{site.enterprise_name or site.enterprise_id} · {p.label}")
    pages = ('"第 " counter(page) " 页 / 共 " counter(pages) " 页"' if lang == "zh" else
             '"page " counter(page) " of " counter(pages)')
    page_css = (f'@page{{@bottom-left{{content:{who};font-size:10px;color:#555}}'
                f"@bottom-right{{content:{pages};font-size:10px;color:#555}}}}")
    parts = [f'<!DOCTYPE html><html lang="{"zh-CN" if lang == "zh" else "en"}"><head><meta charset="utf-8">'
             f"<title>{html.escape(L('title'))} {html.escape(p.label)}</title><style>{CSS}{page_css}</style>"
             "</head><body>",
             page_banner, f"<h1>{html.escape(L('title'))} · {html.escape(p.label)}</h1>",
             '<table class="meta">' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in meta) + "</table>",
             f"<h2>{L('summary')}</h2>",
             figures_banner,
             f"<table><tr><th>{L('scope')}</th><th>{L('figure')}</th><th>{L('name')}</th>"
             f"<th>{L('numerator')}</th><th>{L('denominator')}</th><th>{L('value')}</th><th>{L('target')}</th>"
             f"<th>{L('pass')}</th></tr>",
             _figure_rows(result.figures, L("whole"), lang)]
    for ws, figs in result.workshops.items():
        parts.append(_figure_rows(figs, f"{L('workshop')} {ws}", lang))
    parts.append("</table>")
    parts.append(f"<h2>{L('params')}</h2><table class='params'><tr><th>{L('param')}</th><th>{L('setting')}</th></tr>"
                 + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                           for k, v in param_rows(result, lang)) + "</table>")
    if result.daily:
        parts.append(f"<h2>{L('daily_chart')}</h2>{daily_chart(result, lang)}")
    parts.append(f"<h2>{L('coverage_chart')}</h2>{coverage_chart(result, lang)}")
    for title, columns, table_id in ((L("devices"), REGISTER_KEYS, "devices-register"),
                                  (L("evidence"), EVIDENCE_KEYS, "devices-evidence")):
        parts.append(_device_table(d["devices"], title, columns, lang, tz, table_id))
    warnings = warning_lines(result, lang)
    if warnings:
        parts.append(f"<h2>{L('warnings')}</h2><ul class='warn'>"
                     + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul>")
    parts.append(f"<h2>{L('recompute')}</h2><p class='small'>{html.escape(L('recompute_text'))}</p>")
    from collector.states.appendix import machine_appendix  # 设备稼动率与OEE (docs/states.md)

    parts.append(machine_appendix(result.cfg, p, result.now, lang))
    parts.append(_footer(result, footer, lang))
    parts.append("</body></html>")
    return "".join(parts)


def write_package(result: PeriodResult, out_dir: Path, formats: list[str], lang: Lang = "zh",
                  chain_record: dict[str, Any] | None = None, footer: dict[str, Any] | None = None) -> list[Path]:
    """Write report-<period>.<fmt> for each format (CSV also writes report-<period>-figures.csv; PDF is the
    HTML printed by headless Chromium, see pdf.py)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"report-{result.period.label}"
    written = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        if fmt == "html":
            path.write_text(render_html(result, lang, chain_record, footer), encoding="utf-8")
        elif fmt == "pdf":
            html_to_pdf(render_html(result, lang, chain_record, footer), path)
        elif fmt == "json":
            path.write_text(render_json(result, chain_record, footer), encoding="utf-8")
        elif fmt == "csv":
            path.write_text(render_csv(result, lang), encoding="utf-8", newline="")
            fig = out_dir / f"{stem}-figures.csv"
            fig.write_text(render_figures_csv(result, lang), encoding="utf-8", newline="")
            written.append(path)
            written.append(fig)
            continue
        else:
            raise ValueError(f"unknown format '{fmt}': html, pdf, csv or json")
        written.append(path)
    return written
