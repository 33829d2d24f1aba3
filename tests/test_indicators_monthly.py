"""Monthly indicator arithmetic (defset v1) on hand-built histories in a real StatusStore.

Buckets are 1 h here, so a 30-day month holds 720 buckets and the counts stay readable.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import zoneinfo
from pathlib import Path

import pytest

from collector.config import CalendarConfig, CollectorConfig, IndicatorConfig, SiteConfig
from collector.indicators import periods
from collector.indicators.evidence import ShiftCalendar
from collector.indicators.figures import PeriodResult, compute
from collector.indicators.pooling import Submission, pool_submissions
from collector.indicators.rates import Figure, pool
from collector.indicators.register import Asset
from collector.indicators.report import pct
from collector.model import Batch, Reading
from collector.pipeline import Pipeline
from collector.status import StatusStore, StatusTracker

TZ = "Asia/Shanghai"
SH = zoneinfo.ZoneInfo(TZ)
H = 3600
NOV = periods.month(2026, 11, TZ)
AFTER_CLOSE = periods.month_closes(2026, 11, TZ) + 1


def t(day: int, hour: int = 0, month: int = 11) -> float:
    return dt.datetime(2026, month, day, hour, tzinfo=SH).timestamp()


def asset(i: int, *, cnc: bool = False, digital: bool = True, bound: bool = True, status: str = "in_service",
          commissioned: dt.date | None = None, workshop: str = "ws1", usage: str = "production") -> Asset:
    return Asset(id=f"a{i}", name=f"machine {i}", workshop=workshop, line=None, category=None, usage=usage,
                 status=status, commissioned=commissioned, is_cnc=cnc, is_digital=digital, digital_basis=None,
                 is_key_process=False, original_value=None, device=f"d{i}" if bound else None,
                 protocol="modbus" if bound else None, endpoint="tcp://127.0.0.1:502" if bound else None)


def config(**ind: object) -> CollectorConfig:
    return CollectorConfig(site=SiteConfig(enterprise_id="e1", enterprise_name="测试企业", workshop="ws1"),
                           indicators=IndicatorConfig(bucket=H, **ind))  # type: ignore[arg-type]


class History:
    """A status store filled by hand: collector uptime and per-device good buckets with ack times."""

    def __init__(self, path: Path) -> None:
        self.store = StatusStore(path / "status.db", H)

    def up(self, start: float, end: float) -> None:
        self.store.write([], [], {}, set(range(int(start), int(end), H)))

    def good(self, device: str, start: float, end: float, acked_at: float | None = None,
             every: int = 1) -> None:
        buckets = list(range(int(start), int(end), H))[::every]
        self.store.write([], [], {(device, b): (acked_at if acked_at is not None else b + 10) for b in buckets},
                         set())

    def month(self, cfg: CollectorConfig, assets: list[Asset], now: float = AFTER_CLOSE,
              period: periods.Period = NOV) -> PeriodResult:
        return compute(cfg, assets, self.store, period, now)


@pytest.fixture
def hist(tmp_path: Path) -> History:
    return History(tmp_path)


def row(result: PeriodResult, asset_id: str) -> dict[str, object]:
    return next(r for r in result.to_dict()["devices"] if r["id"] == asset_id)


def test_month_window_and_close_time_in_site_time_zone() -> None:
    assert NOV.start == t(1) and NOV.end == t(1, month=12)
    assert NOV.closes == t(4, month=12)  # 24:00 on Dec 3 = 00:00 on Dec 4, +08:00
    assert periods.last_closed_month(t(4, month=12) - 1, TZ) == (2026, 10)
    assert periods.last_closed_month(t(4, month=12), TZ) == (2026, 11)
    assert periods.last_closed_month(dt.datetime(2027, 1, 4, tzinfo=SH).timestamp(), TZ) == (2026, 12)
    assert periods.parse("2026", t(5), TZ).closes == dt.datetime(2027, 1, 4, tzinfo=SH).timestamp()
    assert len(NOV.days()) == 30


def test_device_online_79_percent_is_not_networked_81_is_and_80_exactly_is(hist: History) -> None:
    hist.up(t(1), t(1) + 100 * H)  # the collector ran 100 hours: 100 expected buckets
    assets = [asset(0), asset(1), asset(2)]
    for i, n in enumerate((79, 81, 80)):
        hist.good(f"d{i}", t(1), t(1) + n * H)
    res = hist.month(config(), assets)
    assert [(row(res, f"a{i}")["good_buckets"], row(res, f"a{i}")["expected_buckets"]) for i in range(3)] == \
        [(79, 100), (81, 100), (80, 100)]
    assert [row(res, f"a{i}")["networked"] for i in range(3)] == [False, True, True]
    assert row(res, "a0")["reason"] == "coverage"
    d2 = res.figure("D2")
    assert (d2.numerator, d2.denominator) == (2, 3)


def test_exactly_55_percent_networked_passes_and_one_less_fails(hist: History) -> None:
    hist.up(t(1), t(1, month=12))
    assets = [asset(i) for i in range(20)]
    for i in range(11):
        hist.good(f"d{i}", t(1), t(1, month=12))
    d2 = hist.month(config(), assets).figure("D2")
    assert (d2.numerator, d2.denominator, d2.passed) == (11, 20, True)
    assets.append(asset(20))  # one more digital device, silent: 11/21 = 52.4 %
    d2 = hist.month(config(), assets).figure("D2")
    assert (d2.numerator, d2.denominator, d2.passed) == (11, 21, False)


def test_exactly_70_percent_cnc_passes_and_below_fails(hist: History) -> None:
    assets = [asset(i, cnc=i < 7, bound=False) for i in range(10)]
    d1 = hist.month(config(), assets).figure("D1")
    assert (d1.numerator, d1.denominator, d1.passed) == (7, 10, True)
    d1 = hist.month(config(), [*assets, asset(10, bound=False)]).figure("D1")
    assert (d1.numerator, d1.denominator, d1.passed) == (7, 11, False)


def test_device_commissioned_mid_month_counts_from_its_commissioning(hist: History) -> None:
    hist.up(t(1), t(1, month=12))
    late = asset(0, cnc=True, commissioned=dt.date(2026, 11, 16))
    hist.good("d0", t(16), t(1, month=12))  # 15 days × 24 h, all good
    res = hist.month(config(), [late, asset(1, cnc=False)])
    r = row(res, "a0")
    assert (r["expected_buckets"], r["good_buckets"], r["expected_days"], r["networked"]) == (360, 360, 15, True)
    assert (res.figure("D1").numerator, res.figure("D1").denominator) == (1, 2)  # stock at Nov 30: in U
    early = hist.month(config(), [late, asset(1)], now=t(10), period=NOV)  # month still running on Nov 10
    assert (early.figure("D1").numerator, early.figure("D1").denominator) == (0, 1)
    assert early.to_dict()["status"] == "provisional"


def test_sealed_and_scrapped_devices_leave_the_universe_even_with_data(hist: History) -> None:
    hist.up(t(1), t(1, month=12))
    assets = [asset(0, cnc=True), asset(1, cnc=True, status="sealed"), asset(2, cnc=True, status="scrapped"),
              asset(3, status="idle")]
    for i in range(3):
        hist.good(f"d{i}", t(1), t(1, month=12))
    res = hist.month(config(), assets)
    assert (res.figure("D1").numerator, res.figure("D1").denominator) == (1, 2)  # a0, a3
    assert (res.figure("D2").numerator, res.figure("D2").denominator) == (1, 2)  # a3 idle: in U, silent
    assert row(res, "a1")["in_universe"] is False and row(res, "a2")["in_universe"] is False


def test_collector_outage_does_not_count_against_devices(hist: History) -> None:
    hist.up(t(1), t(10))
    hist.up(t(20), t(1, month=12))  # the collector was down Nov 10–19
    hist.good("d0", t(1), t(10))
    hist.good("d0", t(20), t(1, month=12))
    r = row(hist.month(config(), [asset(0)]), "a0")
    assert (r["expected_buckets"], r["good_buckets"], r["expected_days"], r["good_days"]) == (480, 480, 20, 20)
    assert r["coverage"] == 1.0 and r["networked"] is True


def test_day_share_fails_a_device_with_enough_buckets_on_too_few_days(hist: History) -> None:
    hist.up(t(1), t(1, month=12))
    hist.good("d0", t(1), t(13))  # 12 full days of 30: coverage 40 %, 12/30 days
    res = hist.month(config(coverage=0.4), [asset(0)])
    assert row(res, "a0")["networked"] is False and row(res, "a0")["reason"] == "day_share"
    res = hist.month(config(coverage=0.4, day_share=0.4), [asset(0)])
    assert row(res, "a0")["networked"] is True


def test_data_acknowledged_after_the_month_closes_does_not_count(hist: History) -> None:
    hist.up(t(1), t(1, month=12))
    hist.good("d0", t(1), t(25))  # delivered on time: 24 days = 80 %
    hist.good("d0", t(25), t(28), acked_at=t(3, 12, month=12))  # buffered, delivered Dec 3 noon: counts
    hist.good("d0", t(28), t(1, month=12), acked_at=t(5, month=12))  # delivered after the close: not counted
    r = row(hist.month(config(), [asset(0)], now=t(10, month=12)), "a0")
    assert (r["good_buckets"], r["expected_buckets"], r["late_buckets"]) == (27 * 24, 720, 3 * 24)


def test_stale_values_make_no_good_bucket(tmp_path: Path) -> None:
    """A value whose source timestamp stopped advancing for longer than stale_after is not a good sample."""
    clock = [t(1)]
    store = StatusStore(tmp_path / "s.db", H)
    tracker = StatusTracker(store, ["d0"], clock=lambda: clock[0])
    seqs = iter(range(1, 1_000_000))
    pipe = Pipeline(tracker, stale_after=900, next_seq=lambda _dev: next(seqs), clock=lambda: clock[0])
    acked: list[Batch] = []

    def sink(b: Batch) -> None:  # the broker acknowledges at once
        acked.append(b)
        if b.good_ts is not None:
            tracker.delivered(b.device, b.good_ts)

    pipe.add_sink(sink)
    frozen = t(1) + 60
    for minute in range(0, 6 * 60, 10):  # 6 hours, a poll every 10 min; the source clock froze at 00:01
        clock[0] = t(1) + minute * 60
        pipe.submit("d0", [Reading("d0", "temp", 21.5, "°C", "good", frozen if minute else t(1), clock[0])])
        tracker.flush()
    # good until 15 min after the value stopped advancing (00:00 and 00:10: bucket 00:00); stale after that
    assert store.good_buckets("d0", t(1), t(2)) == [int(t(1))]
    res = compute(config(), [asset(0)], store, periods.custom(t(1), t(1) + 6 * H, TZ), t(1) + 7 * H)
    r = row(res, "a0")
    assert (r["good_buckets"], r["expected_buckets"]) == (1, 6)


def test_non_digital_devices_in_u_count_in_d2a_and_d3_not_in_d2(hist: History) -> None:
    hist.up(t(1), t(1, month=12))
    assets = [asset(0), asset(1), asset(2, digital=False, bound=False), asset(3, digital=False, bound=False),
              asset(4, bound=False), asset(5, usage="non_production")]
    hist.good("d0", t(1), t(1, month=12))
    hist.good("d5", t(1), t(1, month=12))
    res = hist.month(config(), assets)
    f = {k: (res.figure(k).numerator, res.figure(k).denominator) for k in ("D2", "D2a", "D3")}
    assert f == {"D2": (1, 3), "D2a": (1, 5), "D3": (3, 5)}
    assert row(res, "a4")["reason"] == "not_bound"


def test_shift_calendar_expected_time_holidays_and_overnight_shift(hist: History) -> None:
    cal = CalendarConfig(working_days=["mon", "tue", "wed", "thu", "fri"], shifts=["08:00-20:00"],
                         holidays=[dt.date(2026, 11, 2)], workdays=[dt.date(2026, 11, 7)])
    hist.up(t(1), t(1, month=12))
    # the machine is on only during the day shift, every day; Nov 2026: 21 weekdays - 1 holiday + 1 调休 Saturday
    for d in range(1, 31):
        hist.good("d0", t(d, 8), t(d, 20))
    r = row(hist.month(config(calendar=cal), [asset(0)]), "a0")
    assert (r["expected_buckets"], r["good_buckets"], r["expected_days"]) == (21 * 12, 21 * 12, 21)
    assert r["networked"] is True
    assert row(hist.month(config(), [asset(0)]), "a0")["networked"] is False  # without: 360/720 = 50 %
    night = ShiftCalendar(CalendarConfig(shifts=["20:00-08:00"]), TZ)
    assert night.contains(t(6, 23)) and night.contains(t(7, 7))  # Fri 23:00, and Sat 07:00 (Fri's shift)
    assert not night.contains(t(7, 23)) and not night.contains(t(9, 7))  # Sat evening; Mon 07:00 (Sun off)


def test_workshop_roll_up_pools_and_year_pools_device_months(hist: History) -> None:
    hist.up(t(1, month=10), t(1, month=12))
    assets = [asset(0), asset(1), asset(2, workshop="ws2"), asset(3, workshop="ws2", digital=False, bound=False)]
    hist.good("d0", t(1, month=10), t(1, month=12))  # both months
    hist.good("d2", t(1), t(1, month=12))  # November only
    res = hist.month(config(), assets)
    ent, w1, w2 = res.figure("D2"), res.figure("D2", "ws1"), res.figure("D2", "ws2")
    assert (w1.numerator, w1.denominator, w2.numerator, w2.denominator) == (1, 2, 1, 1)
    pooled = pool([w1, w2])
    assert (pooled.numerator, pooled.denominator) == (ent.numerator, ent.denominator) == (2, 3)
    year = compute(config(), assets, hist.store, periods.year(2026, TZ), AFTER_CLOSE)
    assert year.months == ["2026-10", "2026-11", "2026-12"]  # from the first month the collector ran
    d2 = year.figure("D2")
    # Oct: d0 of 3; Nov: d0, d2 of 3; Dec (no evidence yet): 0 of 3
    assert (d2.numerator, d2.denominator) == (3, 9)
    assert next(r for r in year.devices if r.asset.id == "a0").networked_months == (2, 3)


def test_county_roll_up_pools_and_counts_passing_enterprises() -> None:
    def sub(enterprise: str, n: int, d: int) -> Submission:
        return Submission(enterprise, None, "c", None, "ws1", {"D2": Figure("D2", n, d, 0.55)}, "x", True)

    out = pool_submissions("2026-11", [sub("a", 11, 20), sub("b", 1, 10)])
    d2 = out.figures["D2"]
    assert (d2.numerator, d2.denominator, len(out.enterprises), out.passing["D2"]) == (12, 30, 2, 1)
    assert d2.passed is False  # 40 %, not the 32.5 % average of 55 % and 10 %


def test_daily_series_and_shown_values_never_round_up_past_a_target(hist: History) -> None:
    hist.up(t(1), t(3))
    hist.good("d0", t(1), t(2))
    res = hist.month(config(), [asset(0), asset(1)], now=t(3, 1))
    daily = res.to_dict()["daily"]
    assert daily[0] == {"date": "2026-11-01", "numerator": 1, "denominator": 2, "value": 0.5, "passed": False}
    assert daily[1]["numerator"] == 0 and daily[2]["value"] is None  # Nov 3: no complete bucket yet
    assert pct(5496, 10000) == "54.9 %" and pct(11, 20) == "55.0 %" and pct(1, 0) == "—"


def test_old_database_without_ack_times_is_migrated_and_its_buckets_count(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "status.db")
    db.execute("CREATE TABLE good_buckets (device TEXT NOT NULL, bucket INTEGER NOT NULL, "
               "PRIMARY KEY (device, bucket)) WITHOUT ROWID")
    db.execute("INSERT INTO good_buckets VALUES ('d0', ?)", (int(t(2)),))
    db.commit()
    db.close()
    store = StatusStore(tmp_path / "status.db", H)
    assert store.good_buckets("d0", t(1), t(3), acked_by=t(1)) == [int(t(2))]  # NULL ack time counts
    assert store.good_bucket_rows(t(1), t(3)) == [("d0", int(t(2)), None)]


def test_tracker_records_ack_time_and_fills_uptime_between_close_flushes(tmp_path: Path) -> None:
    clock = [t(1)]
    store = StatusStore(tmp_path / "s.db", 1.0)
    tracker = StatusTracker(store, ["d0"], clock=lambda: clock[0])
    tracker.flush()
    clock[0] = t(1) + 2.5  # a late timer: bucket +1 was never flushed in
    tracker.delivered("d0", t(1) + 0.5)
    tracker.flush()
    assert store.uptime_buckets(t(1), t(1) + 10) == [int(t(1)), int(t(1)) + 1, int(t(1)) + 2]
    assert store.good_bucket_rows(t(1), t(2)) == [("d0", int(t(1)), t(1) + 2.5)]
    clock[0] = t(1) + 60  # a long gap (suspended host) is not filled
    tracker.flush()
    assert len(store.uptime_buckets(t(1), t(1) + 100)) == 4
