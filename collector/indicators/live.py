"""The live indicator snapshot published retained on `{root}/indicators`.

Live 联网率: a digital device is networked *now* when it delivered a good sample within the last
`live_window` (default 2 × bucket). 数控化率 is a stock figure of the register, taken today.
"""

from __future__ import annotations

import datetime as dt
import time
import zoneinfo
from collections.abc import Callable, Mapping
from typing import Any

from collector.config import IndicatorConfig, SiteConfig
from collector.indicators.rates import DEFSET, Figure, cnc_figures, networking_figures
from collector.indicators.register import Asset
from collector.status import DeviceStatus


def _networked_now(statuses: Mapping[str, DeviceStatus], now: float, window: float) -> Callable[[Asset], bool]:
    def networked(a: Asset) -> bool:
        st = statuses.get(a.device or "")
        return st is not None and st.last_delivered is not None and now - st.last_delivered <= window

    return networked


def _today(now: float, tz: str) -> dt.date:
    return dt.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(tz)).date()


def live_figures(assets: list[Asset], statuses: Mapping[str, DeviceStatus], now: float, cfg: IndicatorConfig,
                 tz: str) -> list[Figure]:
    today = _today(now, tz)
    window = cfg.live_window_s
    return [
        *cnc_figures(assets, today, cfg.targets.cnc_rate, cfg.scope),
        *networking_figures(assets, today, _networked_now(statuses, now, window), cfg.targets.networking_rate,
                            {"period": "now", "window_s": window}, cfg.scope),
    ]


def live_snapshot(assets: list[Asset], statuses: Mapping[str, DeviceStatus], cfg: IndicatorConfig,
                  site: SiteConfig, now: float | None = None) -> dict[str, Any]:
    """The payload of `{root}/indicators`: enterprise figures and the same per workshop."""
    now = time.time() if now is None else now
    figures = live_figures(assets, statuses, now, cfg, site.timezone)
    workshops = sorted({a.workshop for a in assets})
    today = _today(now, site.timezone)
    networked = _networked_now(statuses, now, cfg.live_window_s)
    networked_now = sorted(a.id for a in assets
                           if a.in_universe(today, cfg.scope) and a.is_digital and a.device is not None
                           and networked(a))
    return {
        "defset": DEFSET,
        "period": "now",
        "ts": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "enterprise": site.enterprise_id,
        "enterprise_name": site.enterprise_name,
        "county": site.county,
        "figures": {f.id: f.to_dict() for f in figures},
        "workshops": {
            ws: {f.id: f.to_dict() for f in live_figures([a for a in assets if a.workshop == ws], statuses, now,
                                                          cfg, site.timezone)}
            for ws in workshops
        },
        "networked_now": networked_now,
    }
