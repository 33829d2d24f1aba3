"""The live indicator snapshot published retained on `{root}/indicators`.

Live 联网率: a digital device is networked *now* when it delivered a good sample within the last
`live_window` (default 2 × bucket), and its identity does not say simulator (unless
`indicators.allow_simulated`, and then the snapshot carries the banner). 数控化率 is a stock figure of the
register, taken today.
"""

from __future__ import annotations

import datetime as dt
import time
import zoneinfo
from collections.abc import Callable, Collection, Mapping
from typing import Any

from collector.config import IndicatorConfig, SiteConfig
from collector.indicators.rates import DEFSET, Figure, cnc_figures, networking_figures
from collector.indicators.register import Asset
from collector.status import DeviceStatus


def _networked_now(statuses: Mapping[str, DeviceStatus], now: float, window: float,
                   excluded: Collection[str] = ()) -> Callable[[Asset], bool]:
    def networked(a: Asset) -> bool:
        st = statuses.get(a.device or "")
        return (st is not None and st.last_delivered is not None and now - st.last_delivered <= window
                and a.device not in excluded)

    return networked


def _today(now: float, tz: str) -> dt.date:
    return dt.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(tz)).date()


def _excluded(cfg: IndicatorConfig, simulated: Mapping[str, str]) -> Collection[str]:
    return () if cfg.allow_simulated else simulated.keys()


def live_figures(assets: list[Asset], statuses: Mapping[str, DeviceStatus], now: float, cfg: IndicatorConfig,
                 tz: str, simulated: Mapping[str, str] | None = None) -> list[Figure]:
    """`simulated`: device id -> why its identity says simulator (not counted unless `allow_simulated`)."""
    today = _today(now, tz)
    window = cfg.live_window_s
    excluded = _excluded(cfg, simulated or {})
    return [
        *cnc_figures(assets, today, cfg.targets.cnc_rate, cfg.scope),
        *networking_figures(assets, today, _networked_now(statuses, now, window, excluded),
                            cfg.targets.networking_rate, {"period": "now", "window_s": window}, cfg.scope),
    ]


def live_snapshot(assets: list[Asset], statuses: Mapping[str, DeviceStatus], cfg: IndicatorConfig,
                  site: SiteConfig, now: float | None = None, simulated: Mapping[str, str] | None = None
                  ) -> dict[str, Any]:
    """The payload of `{root}/indicators`: enterprise figures and the same per workshop; `simulated` as for
    `live_figures` (the snapshot lists them, and carries the banner when they are counted)."""
    from collector.indicators.figures import (  # figures imports this module
        SIMULATED_BANNER,
        SIMULATED_BANNER_EN,
    )

    now = time.time() if now is None else now
    simulated = simulated or {}
    figures = live_figures(assets, statuses, now, cfg, site.timezone, simulated)
    workshops = sorted({a.workshop for a in assets})
    today = _today(now, site.timezone)
    networked = _networked_now(statuses, now, cfg.live_window_s, _excluded(cfg, simulated))
    networked_now = sorted(a.id for a in assets
                           if a.in_universe(today, cfg.scope) and a.is_digital and a.device is not None
                           and networked(a))
    sims = sorted(a.id for a in assets if a.device in simulated and a.in_universe(today, cfg.scope))
    banner = sims and cfg.allow_simulated
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
                                                          cfg, site.timezone, simulated)}
            for ws in workshops
        },
        "networked_now": networked_now,
        "simulated": sims,
        "banner": SIMULATED_BANNER if banner else None,
        "banner_en": SIMULATED_BANNER_EN if banner else None,
    }
