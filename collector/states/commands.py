"""`collector oee`: time in state, 稼动率 and OEE of a period per device, from the state store (docs/states.md).

The figures (collector.states.summary, with the states config models: pydantic) are imported by the command, so
building the `collector` parser costs nothing here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from collector.indicators import periods

RATIOS = ("availability", "utilization", "performance", "quality", "oee")


def format_table(result: dict[str, Any], lang: str) -> str:
    from collector.states.summary import figure_name, hours, pct

    zh = lang == "zh"
    p = result["period"]
    lines = [("设备稼动率与OEE" if zh else "Machine utilization and OEE") + f"  {p['label']}  ({p['start']} – "
             f"{p['end']}, {result['timezone']}; {'计划时间' if zh else 'planned time'}: {result['calendar']})"]
    head = ["device", *(figure_name(k, lang) for k in RATIOS), figure_name("planned_operation_time_s", lang),
            figure_name("unknown_s", lang)]
    lines.append(" | ".join(head))
    reasons: list[str] = []
    for dev, f in result["devices"].items():
        cells = [dev]
        for k in RATIOS:
            cells.append(pct(f[k]["value"]))
            if f[k]["value"] is None and f[k]["reason"] and k != "oee":
                reasons.append(f"  {dev} {figure_name(k, lang)}: {f[k]['reason']}")
        cells += [hours(f["planned_operation_time_s"]), hours(f["unknown_s"])]
        lines.append(" | ".join(cells))
    lines.append("")
    lines.append(("分母" if zh else "denominators") + ": " + "; ".join(
        f"{figure_name(k, lang)} = {result['devices'][next(iter(result['devices']))][k]['formula']}"
        for k in RATIOS) if result["devices"] else ("无设备状态 (states)" if zh else "no device has machine states"))
    if reasons:
        lines.append(("缺少的数据 (不估算)" if zh else "absent figures (never estimated)") + ":")
        lines += reasons
    return "\n".join(lines)


def format_devices(result: dict[str, Any], lang: str) -> str:
    """Per device the time in each state, and per shift its figures."""
    from collector.states.summary import STATE_NAMES, figure_name, hours, pct

    zh = lang == "zh"
    lines = []
    for dev, f in result["devices"].items():
        secs = ", ".join(f"{STATE_NAMES[s][0 if zh else 1]} {hours(v)}" for s, v in f["seconds"].items() if v)
        lines.append(f"{dev}: {secs or '—'}; {'报警' if zh else 'alarms'} {f['alarms']['count']} "
                     f"({hours(f['alarms']['duration_s'])})")
        for s in f.get("shifts", []):
            lines.append(f"  {s['day']} {('班次' if zh else 'shift')} {s['index']} {s['label']}: "
                         + ", ".join(f"{figure_name(k, lang)} {pct(s[k]['value'])}" for k in RATIOS))
    return "\n".join(lines)


def cmd_oee(args: argparse.Namespace) -> int:
    from collector.config import effective_state_dir, load_config_or_exit  # builds every protocol's models
    from collector.indicators.commands import open_store
    from collector.states.summary import period_figures

    cfg = load_config_or_exit(args.config)
    store = open_store(cfg, effective_state_dir(cfg))
    now = time.time()
    try:
        period = periods.parse(args.period, now, cfg.site.timezone)
        if period.kind not in ("day", "month"):
            raise ValueError(f"period '{args.period}' is not today, YYYY-MM-DD or YYYY-MM")
    except ValueError as exc:
        print(f"--period: {exc}", file=sys.stderr)
        store.close()
        return 2
    result = period_figures(cfg, store, period, now, per_shift=args.devices or args.json)
    store.close()
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return 0
    print(format_table(result, args.lang))
    if args.devices:
        print()
        print(format_devices(result, args.lang))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`collector oee`, registered by collector.cli.build_parser()."""
    s = sub.add_parser("oee", help="machine states: time in state, 稼动率 (utilization), availability, OEE")
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument("--period", default="today", help="today (default), YYYY-MM-DD or YYYY-MM")
    s.add_argument("--devices", action="store_true", help="also time in each state and every shift")
    s.add_argument("--lang", choices=("zh", "en"), default="zh", help="names of the figures (default zh)")
    s.add_argument("--json", action="store_true", help="print JSON (with every shift) instead of a table")
    s.set_defaults(fn=cmd_oee)
