"""The indicators' parameters (INDICATORS.md): targets, the shift calendar, and the evidence chain's anchoring."""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from pydantic import Field, field_validator

from collector.config.base import Number, Strict


class EvidenceConfig(Strict):
    """Anchoring the evidence chain (docs/indicators.md): where the signed chain heads are sent."""

    topic: str = Field(default="{root}/evidence/head", description="MQTT topic of the signed heads (retained, "
                       "QoS 1, through the outbox); {root}, {enterprise} and {workshop} are filled in")
    anchor_interval: Number = Field(default=86400.0, ge=60, le=7 * 86400,
                                    description="seconds between anchors of an unchanged "
                                   "head (a changed head is anchored at once)")
    hub: str | None = Field(default=None, description="reserved for the city hub's address (a later release)")

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v or any(c in v for c in "#+") or v.startswith("/"):
            raise ValueError(f"'{v}' is not a topic to publish to (no wildcards # +, no leading /)")
        try:
            v.format(root="r", enterprise="e", workshop="w")
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"'{v}': only {{root}}, {{enterprise}} and {{workshop}} can be filled in") from None
        return v

    @field_validator("hub")
    @classmethod
    def _hub(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError("sending heads to the city hub is not built yet (a later release); remove "
                             "evidence.hub: the heads go to evidence.topic on the MQTT broker meanwhile")
        return v



class IndicatorTargets(Strict):
    cnc_rate: Number = Field(default=0.70, ge=0, le=1)
    networking_rate: Number = Field(default=0.55, ge=0, le=1)


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SHIFT = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)-([01]?\d|2[0-4]):([0-5]\d)$")


class CalendarConfig(Strict):
    """Shift calendar (expected time of the 联网率 evidence rule): working days, shifts, holidays, 调休 days.

    A shift is `"HH:MM-HH:MM"`; one that ends at or before its start runs past midnight and belongs to the day
    it starts on. `workdays` are extra working days (调休补班) that override `working_days` and `holidays`.
    """

    working_days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS[:5]))
    shifts: list[str] = Field(min_length=1)
    holidays: list[dt.date] = Field(default_factory=list)
    workdays: list[dt.date] = Field(default_factory=list)

    @field_validator("shifts")
    @classmethod
    def _shift_form(cls, v: list[str]) -> list[str]:
        for s in v:
            if not _SHIFT.match(str(s).strip()):
                raise ValueError(f"shift '{s}' is not HH:MM-HH:MM (quote it in YAML, e.g. \"08:00-20:00\")")
        return [str(s).strip() for s in v]

    def shift_minutes(self) -> list[tuple[int, int]]:
        """Each shift as (start, end) minutes after the midnight of its day; end may exceed 1440."""
        out = []
        for s in self.shifts:
            m = _SHIFT.match(s)
            assert m is not None
            a = int(m[1]) * 60 + int(m[2])
            b = int(m[3]) * 60 + int(m[4])
            out.append((a, b if b > a else b + 1440))
        return out


class IndicatorConfig(Strict):
    """Parameters of INDICATORS.md (defset v1); seconds for durations."""

    publish_interval: Number = Field(default=60.0, ge=0.1, le=86400)
    bucket: Number = Field(default=300.0, ge=1, le=86400)
    coverage: Number = Field(default=0.80, ge=0, le=1)
    day_share: Number = Field(default=0.50, ge=0, le=1)
    stale_after: Number = Field(default=900.0, gt=0, le=30 * 86400)
    live_window: Number | None = Field(default=None, gt=0, le=7 * 86400, description="default 2 x bucket")
    scope: Literal["all", "key_process"] = "all"
    pledge: str | None = Field(default=None, description="企业承诺 text in the report footer (default: a standard "
                               "pledge in the report's language)")
    # Count devices whose identity says simulator (demos only): every output then carries SIMULATED_BANNER
    allow_simulated: bool = False
    targets: IndicatorTargets = Field(default_factory=IndicatorTargets)
    calendar: CalendarConfig | None = None

    @property
    def live_window_s(self) -> float:
        return self.live_window if self.live_window is not None else 2 * self.bucket


