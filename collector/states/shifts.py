"""Shifts as time windows in the site's time zone, from `indicators.calendar` (the same calendar the 联网率
evidence uses, collector/indicators/evidence.py's ShiftCalendar).

A shift that runs past midnight belongs to the day it starts on; without a calendar every day is one planned
"shift" from midnight to midnight. State segments are cut at every boundary returned here, so each segment lies
inside one shift (or outside all) and one day, and its part counts belong to it exactly.
"""

from __future__ import annotations

import bisect
import datetime as dt
import zoneinfo
from dataclasses import dataclass

from collector.config import CalendarConfig
from collector.indicators.evidence import ShiftCalendar


@dataclass(frozen=True)
class Shift:
    """One planned shift: [start, end) in POSIX seconds, the production day it belongs to, its number (1-based)
    and its label as configured ("08:00-20:00")."""

    day: dt.date
    index: int
    label: str
    start: float
    end: float

    @property
    def key(self) -> str:
        return f"{self.day.isoformat()}#{self.index}"


class Shifts:
    def __init__(self, calendar: CalendarConfig | None, tz: str) -> None:
        self.calendar = calendar
        self.tz = zoneinfo.ZoneInfo(tz)
        self.cal = ShiftCalendar(calendar, tz) if calendar is not None else None
        self._cuts: list[float] = []
        self._cut_days: tuple[dt.date, dt.date] | None = None

    def _at(self, d: dt.date, minutes: int) -> float:
        base = dt.datetime(d.year, d.month, d.day, tzinfo=self.tz)
        return (base + dt.timedelta(minutes=minutes)).timestamp() if minutes < 1440 else \
            dt.datetime.combine(d + dt.timedelta(days=minutes // 1440), dt.time(), self.tz).timestamp() + \
            (minutes % 1440) * 60

    def of_day(self, d: dt.date) -> list[Shift]:
        """The shifts that start on `d` (none on a non-working day)."""
        if self.cal is None or self.calendar is None:
            return [Shift(d, 1, "00:00-24:00", self._at(d, 0), self._at(d + dt.timedelta(days=1), 0))]
        if not self.cal.working_day(d):
            return []
        return [Shift(d, i + 1, label, self._at(d, a), self._at(d, b))
                for i, ((a, b), label) in enumerate(zip(self.cal.shifts, self.calendar.shifts, strict=True))]

    def of_days(self, days: list[dt.date]) -> list[Shift]:
        return sorted((s for d in days for s in self.of_day(d)), key=lambda s: s.start)

    def current(self, now: float) -> Shift | None:
        """The shift running at `now` (a night shift may have started yesterday)."""
        d = dt.datetime.fromtimestamp(now, self.tz).date()
        for s in self.of_days([d - dt.timedelta(days=1), d]):
            if s.start <= now < s.end:
                return s
        return None

    def latest(self, now: float) -> Shift | None:
        """The running shift, else the last one that ended before `now` (within a week)."""
        cur = self.current(now)
        if cur is not None:
            return cur
        d = dt.datetime.fromtimestamp(now, self.tz).date()
        past = [s for s in self.of_days([d - dt.timedelta(days=i) for i in range(7, -1, -1)]) if s.end <= now]
        return past[-1] if past else None

    def next_cut(self, ts: float) -> float:
        """The first boundary after `ts`: a local midnight, a shift's start or end."""
        d = dt.datetime.fromtimestamp(ts, self.tz).date()
        if self._cut_days is None or not self._cut_days[0] <= d <= self._cut_days[1]:
            days = [d + dt.timedelta(days=i) for i in range(-1, 3)]
            cuts = {self._at(x, 0) for x in days}
            for s in self.of_days(days):
                cuts.update((s.start, s.end))
            self._cuts = sorted(cuts)
            self._cut_days = (d, d + dt.timedelta(days=1))
        i = bisect.bisect_right(self._cuts, ts)
        return self._cuts[i] if i < len(self._cuts) else ts + 86400.0
