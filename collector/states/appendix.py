"""The monthly report's appendix 设备稼动率与OEE: per device the month's time in state and figures, read from the
collector's status.db (the same figures `collector oee --period YYYY-MM` prints). Not part of the signed
indicator record: machine states are the factory's own figures, not evidence for the 联网率.
"""

from __future__ import annotations

import html
from pathlib import Path

from collector.config import CollectorConfig, effective_state_dir
from collector.indicators.periods import Period
from collector.states.summary import STATE_NAMES, figure_name, hours, pct, period_figures
from collector.status import StatusStore

RATIOS = ("utilization", "availability", "performance", "quality", "oee")
TITLE = {"zh": "附录：设备稼动率与OEE", "en": "Appendix: machine utilization and OEE"}
NOTE = {"zh": "计划时间取自班次日历 (indicators.calendar)；采集器停机时间记为“未知”，不计入分母；缺少计数器的指标不估算。"
              "公式：稼动率 = 运行 / (计划运行时间 − 未知)；可用率 = 实际生产时间 / (计划负荷时间 − 未知)；"
              "性能 = 理想节拍 × 产量 / 实际生产时间；合格品率 = 合格数 / 产量；OEE = 可用率 × 性能 × 合格品率 (ISO 22400-2)。",
        "en": "Planned time from the shift calendar (indicators.calendar); the collector's downtime is 'unknown' and "
              "left out of every denominator; a figure without its counter is absent, never estimated. "
              "utilization = running / (POT − unknown); availability = APT / (PBT − unknown); performance = ideal "
              "cycle time × produced / APT; quality = good / produced; OEE = A × P × Q (ISO 22400-2)."}


def machine_appendix(cfg: CollectorConfig, period: Period, now: float, lang: str) -> str:
    """The appendix as HTML, or "" when no device has machine states or the collector never ran here."""
    db = Path(effective_state_dir(cfg)) / "status.db"
    if not cfg.states.enabled or not db.exists():
        return ""
    store = StatusStore(db, cfg.indicators.bucket)
    try:
        result = period_figures(cfg, store, period, now, per_shift=False)
    finally:
        store.close()
    if not result["devices"]:
        return ""
    lang = "zh" if lang == "zh" else "en"
    i = 0 if lang == "zh" else 1
    head = ("设备" if lang == "zh" else "device", *(figure_name(k, lang) for k in RATIOS),
            figure_name("planned_operation_time_s", lang), *(STATE_NAMES[s][i] for s in
                                                            ("running", "idle", "setup", "fault", "offline",
                                                             "unknown")), "报警次数" if lang == "zh" else "alarms")
    rows = []
    reasons = []
    for dev, f in result["devices"].items():
        cells = [dev, *(pct(f[k]["value"]) for k in RATIOS), hours(f["planned_operation_time_s"]),
                 *(hours(f["seconds"].get(s, 0.0)) for s in ("running", "idle", "setup", "fault", "offline",
                                                             "unknown")), str(f["alarms"]["count"])]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        reasons += [f"{dev} {figure_name(k, lang)}: {f[k]['reason']}" for k in RATIOS[:-1]
                    if f[k]["value"] is None and f[k]["reason"]]
    out = [f'<h2 id="machine-states">{TITLE[lang]}</h2>', f"<p class='small'>{html.escape(NOTE[lang])}</p>",
           "<table id='machine-states-table'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>",
           *rows, "</table>"]
    if reasons:
        out.append("<ul class='small'>" + "".join(f"<li>{html.escape(r)}</li>" for r in reasons) + "</ul>")
    return "".join(out)
