"""Terminal views of the running collector: the demo's live screen and `collector status`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from collector.indicators.rates import pct

STATE_STYLE = {"online": "green", "degraded": "yellow", "offline": "red", "never_seen": "dim"}


def fmt_value(value: Any, unit: str | None) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"  # 10000.2 -> "10000", not "1e+04"
    else:
        text = str(value)
    return f"{text}{' ' + unit if unit else ''}"


def fmt_duration(seconds: float) -> str:
    """`42 s`, `12 min`, `5.2 h`, `3 d 4 h` (the status page's `duration()`): an uptime of minutes is not `0.0 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


def fmt_rate(fig: dict[str, Any]) -> str:
    shown = pct(fig["numerator"], fig["denominator"])  # truncated to 0.1 %, as the report shows it
    target = fig.get("target")
    mark = "" if fig.get("passed") is None else (" ✔ pass" if fig["passed"] else " ✘ below target")
    goal = f" (target ≥ {target * 100:.0f} %)" if target is not None else ""
    return f"{shown}  [{fig['numerator']:g}/{fig['denominator']:g}]{goal}{mark}"


def fmt_activity(row: dict[str, Any]) -> str:
    """`123 polls` or, for a subscribing device (never polled), `45 publishes`; then its reconnects."""
    if row.get("mode") == "subscribe":
        count, what = row.get("publishes"), "publishes"
    else:
        count, what = row.get("polls"), "polls"
    return f"{count or 0} {what}\n{row.get('reconnects') or 0} reconnects"


def render(rows: list[dict[str, Any]], indicators: dict[str, Any], header: str, max_values: int = 4) -> Group:
    table = Table(title=header, expand=True)
    table.add_column("device")
    table.add_column("name")
    table.add_column("proto")
    table.add_column("state")
    counted = any("mode" in row for row in rows)  # the HTTP API's rows carry the task counters
    if counted:
        table.add_column("activity")
    table.add_column("last values")
    for row in rows:
        vals = [f"{tag}={fmt_value(v, u)}" + ("" if q == "good" else f" [{q}]")
                for tag, (v, u, q) in list(row["values"].items())[:max_values]]
        state = Text(row["state"], style=STATE_STYLE.get(row["state"], ""))
        if row["reason"] and row["state"] != "online":
            state.append(f"\n{row['reason'][:40]}", style="dim")
        # an offline device's values are its last ones, not current: dimmed
        values = Text("  ".join(vals), style="dim" if row["state"] in ("offline", "never_seen") else "")
        cells = [row["id"], row["name"], row["protocol"], state] + ([fmt_activity(row)] if counted else [])
        table.add_row(*cells, values)
    figs = indicators["figures"]
    ind = Table(title=f"indicators (defset {indicators['defset']}, live)", expand=True, show_header=False)
    ind.add_column("figure")
    ind.add_column("value")
    for key in ("D2", "D1", "D3", "D2a"):
        f = figs[key]
        ind.add_row(f"{f['name_zh']} {key} — {f['name_en']}", fmt_rate(f))
    if indicators.get("banner"):  # simulated devices counted (indicators.allow_simulated)
        return Group(Text(f" {indicators['banner']} · {indicators.get('banner_en') or ''} ",
                          style="bold white on red"), table, ind)
    return Group(table, ind)


def render_plain(rows: list[dict[str, Any]], indicators: dict[str, Any]) -> str:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    lines = [f"--- {stamp}"]
    for row in rows:
        vals = ", ".join(f"{t}={fmt_value(v, u)}" for t, (v, u, _q) in list(row["values"].items())[:4])
        lines.append(f"{row['id']:<10} {row['state']:<10} {vals}")
    for key in ("D2", "D1"):
        f = indicators["figures"][key]
        lines.append(f"{f['name_zh']} {key}: {fmt_rate(f)}")
    if indicators.get("banner"):
        lines.append(f"!!! {indicators['banner']} / {indicators.get('banner_en') or ''} !!!")
    return "\n".join(lines)


def render_outbox(outbox: dict[str, Any], sink: dict[str, Any], health: dict[str, Any]) -> Table:
    """`collector status`: the outbox (per sink when it reports per sink), the MQTT link, the health verdict."""
    table = Table(title="outbox & health", expand=True, show_header=False)
    table.add_column("what")
    table.add_column("value")
    sections = outbox if outbox and all(isinstance(v, dict) for v in outbox.values()) else (
        {"outbox": outbox} if outbox else {})
    for name, s in sections.items():
        age = s.get("oldest_age_s")
        rate = s.get("delivery_rate")
        depth = s.get("depth_batches", "—")
        dropped = s.get("dropped_batches", "—")
        table.add_row(name, f"depth {depth}  oldest {'—' if age is None else f'{age:.0f} s'}  "
                            f"dropped {dropped}  rate {'—' if rate is None else f'{rate:.1f}/s'}")
    if not sections:
        table.add_row("outbox", "not in use")
    table.add_row("MQTT", Text(("connected" if sink.get("connected") else "disconnected") +
                               f"  unacked {sink.get('in_flight', 0)}  published {sink.get('published', 0)}  "
                               f"errors {sink.get('errors', 0)}", style="" if sink.get("connected") else "red"))
    ok = health.get("status") == "ok"
    table.add_row("health", Text(health.get("status", "?") + ("" if ok else ": " + "; ".join(health.get("reasons", []))),
                                 style="green" if ok else "red"))
    return table
