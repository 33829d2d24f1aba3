"""Indicator arithmetic (defset v1): one `Figure` per rate, always with numerator and denominator.

Pure functions over the register and per-device facts, so they are unit-tested on hand-built histories.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any

from collector.indicators.register import Asset

DEFSET = "v1"

NAMES: dict[str, tuple[str, str]] = {
    "D1": ("装备数控化率", "CNC rate of production equipment"),
    "D1v": ("装备数控化率（按原值）", "CNC rate weighted by original value"),
    "D1k": ("关键工序数控化率", "CNC rate of key-process equipment"),
    "D2": ("数字化设备联网率", "networking rate of digital equipment"),
    "D2a": ("设备联网率（全部设备）", "networking rate of all equipment"),
    "D3": ("设备数字化率", "digitalisation rate of equipment"),
}


def truncated(num: float | Decimal, den: float, places: int = 3) -> Decimal | None:
    """num / den cut (never rounded) to `places` decimals: 1/13 -> 0.076, 5496/10000 -> 0.549.

    What machine-readable outputs carry beside the numerator and denominator: a value that never exceeds the
    exact fraction, so it never looks like it meets a target the fraction misses."""
    if den == 0:
        return None
    q = Decimal(1).scaleb(-places)
    return (Decimal(str(num)) / Decimal(str(den))).quantize(q, rounding=ROUND_DOWN)


def pct(num: float, den: float) -> str:
    """The one display rule of every rate (report, `collector status`, status page, MQTT snapshot): truncated
    to 0.1 % (1/13 shows "7.6 %", 54.96 % shows "54.9 %"); "—" without a denominator."""
    v = truncated(Decimal(str(num)) * 100, den, 1)
    return "—" if v is None else f"{v} %"


@dataclass
class Figure:
    """One computed rate with everything needed to recompute it."""

    id: str
    numerator: float
    denominator: float
    target: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float | None:
        return None if self.denominator == 0 else self.numerator / self.denominator

    @property
    def passed(self) -> bool | None:
        v = self.value
        if self.target is None or v is None:
            return None
        # Compare in exact fractions' terms: 11/20 meets 55 % exactly, whatever the float rounding.
        return self.numerator * 10000 >= round(self.target * 10000) * self.denominator

    def to_dict(self) -> dict[str, Any]:
        zh, en = NAMES[self.id]
        d = asdict(self)
        d.update(name_zh=zh, name_en=en, value=self.value, passed=self.passed, defset=DEFSET,
                 display=pct(self.numerator, self.denominator))
        return d


def cnc_figures(assets: Iterable[Asset], on: dt.date, target: float, scope: str = "all") -> list[Figure]:
    """D1 (by count), D1v (by original value), D1k (key processes) on a date: a stock figure.

    `scope: key_process` restricts U for every figure (INDICATORS.md), so D1 and D1v count key processes only
    (and D1k equals D1)."""
    universe = [a for a in assets if a.in_universe(on, scope)]
    cnc = [a for a in universe if a.is_cnc]
    key = [a for a in universe if a.is_key_process]
    valued = [a for a in universe if a.original_value is not None]
    params = {"on": on.isoformat(), "scope": scope}
    return [
        Figure("D1", len(cnc), len(universe), target, params),
        Figure("D1v", sum(a.original_value or 0 for a in valued if a.is_cnc),
               sum(a.original_value or 0 for a in valued), target,
               {**params, "unvalued_assets": len(universe) - len(valued)}),
        Figure("D1k", sum(1 for a in key if a.is_cnc), len(key), target, params),
    ]


def networking_figures(assets: Iterable[Asset], on: dt.date, networked: Callable[[Asset], bool], target: float,
                       params: dict[str, Any], scope: str = "all") -> list[Figure]:
    """D2 (networked digital / digital), D2a (networked / all), D3 (digital / all)."""
    universe = [a for a in assets if a.in_universe(on, scope)]
    digital = [a for a in universe if a.is_digital]
    net = [a for a in digital if a.device is not None and networked(a)]
    p = {**params, "scope": scope}
    return [
        Figure("D2", len(net), len(digital), target, p),
        Figure("D2a", len(net), len(universe), None, p),
        Figure("D3", len(digital), len(universe), None, {"on": on.isoformat(), "scope": scope}),
    ]


def pool(figures: Iterable[Figure], id_: str | None = None, params: dict[str, Any] | None = None) -> Figure:
    """Roll-up by pooling: Σ numerators / Σ denominators (never an average of rates)."""
    figs = list(figures)
    if not figs and id_ is None:
        raise ValueError("nothing to pool")
    first = figs[0] if figs else None
    return Figure(id_ or (first.id if first else ""), sum(f.numerator for f in figs),
                  sum(f.denominator for f in figs), first.target if first else None,
                  {**(params or {}), "pooled_from": len(figs)})
