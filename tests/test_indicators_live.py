"""Indicator arithmetic on hand-built registers (defset v1): D1, D1v, D1k, live D2, D2a, D3."""

from __future__ import annotations

import datetime as dt

from collector.config import IndicatorConfig, SiteConfig
from collector.indicators.live import live_snapshot
from collector.indicators.rates import Figure, cnc_figures
from collector.indicators.register import Asset
from collector.model import DeviceState
from collector.status import DeviceStatus

TODAY = dt.date(2026, 11, 26)
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC).timestamp()


def asset(i: int, *, cnc: bool = False, digital: bool = False, device: bool = False, usage: str = "production",
          status: str = "in_service", commissioned: dt.date | None = None, value: float | None = None,
          key: bool = False) -> Asset:
    return Asset(id=f"a{i}", name=f"a{i}", workshop="ws", line=None, category=None, usage=usage, status=status,
                 commissioned=commissioned, is_cnc=cnc, is_digital=digital, digital_basis=None, is_key_process=key,
                 original_value=value, device=f"d{i}" if device else None)


def test_cnc_rate_exactly_70_percent_passes_and_69_fails() -> None:
    assets = [asset(i, cnc=i < 7) for i in range(10)]
    d1 = cnc_figures(assets, TODAY, 0.70)[0]
    assert (d1.numerator, d1.denominator, d1.passed) == (7, 10, True)
    assets = [asset(i, cnc=i < 69) for i in range(100)]
    d1 = cnc_figures(assets, TODAY, 0.70)[0]
    assert (d1.numerator, d1.denominator, d1.passed) == (69, 100, False)


def test_exact_fractions_meet_the_target_despite_float_rounding() -> None:
    assert Figure("D2", 11, 20, 0.55).passed is True  # 0.55 exactly
    assert Figure("D2", 54999, 100000, 0.55).passed is False
    assert Figure("D1", 0, 0, 0.70).passed is None and Figure("D1", 0, 0, 0.70).value is None


def test_universe_excludes_sealed_scrapped_non_production_and_future_assets() -> None:
    assets = [
        asset(0, cnc=True), asset(1),
        asset(2, cnc=True, status="sealed"), asset(3, cnc=True, status="scrapped"),
        asset(4, cnc=True, usage="non_production"), asset(5, usage="auxiliary"), asset(6, status="idle"),
        asset(7, cnc=True, commissioned=dt.date(2026, 11, 27)),  # tomorrow: not yet in U
        asset(8, cnc=True, commissioned=TODAY),  # today: in U
    ]
    d1 = cnc_figures(assets, TODAY, 0.70)[0]
    assert (d1.numerator, d1.denominator) == (2, 5)  # a0, a8 of a0, a1, a5, a6, a8


def test_weighted_and_key_process_variants() -> None:
    assets = [asset(0, cnc=True, value=900.0, key=True), asset(1, value=100.0, key=True), asset(2, cnc=True)]
    d1, d1v, d1k = cnc_figures(assets, TODAY, 0.70)
    assert (d1v.numerator, d1v.denominator) == (900.0, 1000.0)
    assert d1v.params["unvalued_assets"] == 1
    assert (d1k.numerator, d1k.denominator) == (1, 2)


def status(dev: str, delivered_ago: float | None) -> DeviceStatus:
    return DeviceStatus(dev, DeviceState.ONLINE, NOW, None, None,
                        None if delivered_ago is None else NOW - delivered_ago)


def test_live_networking_rate_counts_digital_devices_that_delivered_within_the_window() -> None:
    cfg = IndicatorConfig(bucket=300)  # live window 600 s
    assets = [
        asset(0, digital=True, device=True), asset(1, digital=True, device=True),
        asset(2, digital=True, device=True), asset(3, digital=True),  # digital, not connected
        asset(4),  # not digital: in U, not in D2's denominator
        asset(5, digital=True, device=True, usage="non_production"),  # a meter: delivers, but outside U
    ]
    statuses = {"d0": status("d0", 10), "d1": status("d1", 599), "d2": status("d2", 601), "d5": status("d5", 1)}
    snap = live_snapshot(assets, statuses, cfg, SiteConfig(enterprise_id="e"), NOW)
    d2, d2a, d3 = snap["figures"]["D2"], snap["figures"]["D2a"], snap["figures"]["D3"]
    assert (d2["numerator"], d2["denominator"]) == (2, 4)
    assert d2["passed"] is False and d2["target"] == 0.55
    assert (d2a["numerator"], d2a["denominator"]) == (2, 5)
    assert (d3["numerator"], d3["denominator"]) == (4, 5)
    assert snap["networked_now"] == ["a0", "a1"]
    assert d2["name_zh"] == "数字化设备联网率" and d2["defset"] == "v1"
    assert snap["workshops"]["ws"]["D2"]["numerator"] == 2


def test_never_delivered_device_is_not_networked() -> None:
    assets = [asset(0, digital=True, device=True)]
    snap = live_snapshot(assets, {"d0": status("d0", None)}, IndicatorConfig(), SiteConfig(enterprise_id="e"), NOW)
    assert snap["figures"]["D2"]["numerator"] == 0 and snap["figures"]["D2"]["denominator"] == 1
