"""Reporting periods in the enterprise's time zone, and when each one closes (INDICATORS.md, defset v1).

A month runs from local midnight of its 1st to local midnight of the next month's 1st, and **closes** at
24:00 on the 3rd of the next month (= 00:00 on the 4th): data buffered offline and acknowledged before then
still counts, data acknowledged later never changes a closed month. A year closes with its December; a day is
final when its month closes.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass
from typing import Literal

PeriodKind = Literal["now", "day", "month", "year", "custom"]
CLOSE_DAY = 4  # the month closes at 00:00 on the 4th of the next month, i.e. 24:00 on the 3rd


def _midnight(d: dt.date, tz: str) -> float:
    return dt.datetime(d.year, d.month, d.day, tzinfo=zoneinfo.ZoneInfo(tz)).timestamp()


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def local_date(ts: float, tz: str) -> dt.date:
    return dt.datetime.fromtimestamp(ts, zoneinfo.ZoneInfo(tz)).date()


def iso_local(ts: float, tz: str) -> str:
    """A time as ISO 8601 with the site's offset, to the second (what the reports show)."""
    return dt.datetime.fromtimestamp(ts, zoneinfo.ZoneInfo(tz)).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Period:
    """[start, end) in POSIX seconds, its closing time, and the date its stock figures are taken on."""

    kind: PeriodKind
    label: str
    start: float
    end: float
    closes: float
    last_day: dt.date
    tz: str

    def closed(self, now: float) -> bool:
        return now >= self.closes

    def snapshot(self, now: float) -> dt.date:
        """The date of the stock figures (U, D1, D3): the period's last day, or today while it runs."""
        return min(self.last_day, local_date(now, self.tz))

    def days(self) -> list[dt.date]:
        first = local_date(self.start, self.tz)
        return [first + dt.timedelta(days=i) for i in range((self.last_day - first).days + 1)]

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "label": self.label, "start": iso_local(self.start, self.tz),
                "end": iso_local(self.end, self.tz), "closes": iso_local(self.closes, self.tz), "timezone": self.tz}


def month_closes(year: int, month: int, tz: str) -> float:
    ny, nm = _next_month(year, month)
    return _midnight(dt.date(ny, nm, CLOSE_DAY), tz)


def month(year: int, month_: int, tz: str) -> Period:
    ny, nm = _next_month(year, month_)
    end_day = dt.date(ny, nm, 1)
    return Period("month", f"{year:04d}-{month_:02d}", _midnight(dt.date(year, month_, 1), tz),
                  _midnight(end_day, tz), month_closes(year, month_, tz), end_day - dt.timedelta(days=1), tz)


def year(year_: int, tz: str) -> Period:
    return Period("year", f"{year_:04d}", _midnight(dt.date(year_, 1, 1), tz), _midnight(dt.date(year_ + 1, 1, 1), tz),
                  month_closes(year_, 12, tz), dt.date(year_, 12, 31), tz)


def day(d: dt.date, tz: str) -> Period:
    return Period("day", d.isoformat(), _midnight(d, tz), _midnight(d + dt.timedelta(days=1), tz),
                  month_closes(d.year, d.month, tz), d, tz)


def custom(start: float, end: float, tz: str) -> Period:
    """Any window (tests, ad-hoc checks): final as soon as it ends."""
    last = local_date(max(start, end - 1e-6), tz)
    return Period("custom", f"{iso_local(start, tz)}/{iso_local(end, tz)}", start, end, end, last, tz)


def now_period(now: float, tz: str) -> Period:
    return Period("now", "now", now, now, now, local_date(now, tz), tz)


def parse(text: str, now: float, tz: str) -> Period:
    """`now`, `today`, `month` (this month), `year` (this year), `YYYY-MM`, `YYYY`, `YYYY-MM-DD`."""
    t = text.strip().lower()
    today = local_date(now, tz)
    if t == "now":
        return now_period(now, tz)
    if t == "today":
        return day(today, tz)
    if t == "month":
        return month(today.year, today.month, tz)
    if t == "year":
        return year(today.year, tz)
    if re.fullmatch(r"\d{4}-\d{2}", t) and 1 <= int(t[5:]) <= 12:
        return month(int(t[:4]), int(t[5:]), tz)
    if re.fullmatch(r"\d{4}", t):
        return year(int(t), tz)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
        try:
            return day(dt.date.fromisoformat(t), tz)
        except ValueError:
            pass
    raise ValueError(f"period '{text}' is not now, today, month, year, YYYY-MM, YYYY or YYYY-MM-DD")


def last_closed_month(now: float, tz: str) -> tuple[int, int]:
    """The latest month whose close time is at or before `now`."""
    today = local_date(now, tz)
    y, m = (today.year - 1, 12) if today.month == 1 else (today.year, today.month - 1)
    if now < month_closes(y, m, tz):  # before 00:00 on the 4th: last month is still open
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
    return y, m


def months_of_year(year_: int, now: float, tz: str) -> list[Period]:
    """The months of a year that have begun by `now`."""
    return [p for m in range(1, 13) if (p := month(year_, m, tz)).start <= now]


def months_from(first: tuple[int, int], last: tuple[int, int]) -> list[tuple[int, int]]:
    out = []
    y, m = first
    while (y, m) <= last:
        out.append((y, m))
        y, m = _next_month(y, m)
    return out
