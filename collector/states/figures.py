"""Time in state and the ISO 22400-2 figures of a device over shifts, each with its formula and denominator.

Time categories (seconds, inside planned shifts only; ISO 22400-2 names in brackets):
  planned operation time POT  = the shifts' elapsed time (the whole day without a calendar)   [POT]
  unknown                     = POT the collector was not running: not observed, left out of every ratio
  planned downtime            = time in `planned_stop`                                          [PDOT]
  planned busy time PBT       = POT − planned downtime                                          [PBT]
  actual production time APT  = time in `running`                                               [APT]
Ratios (observed = minus `unknown`):
  availability  A  = APT / observed PBT                                                         [availability]
  utilization 稼动率 = APT / observed POT
  performance   P  = ideal cycle time × produced quantity / APT                                 [effectiveness]
  quality       Q  = good quantity / produced quantity                                          [quality ratio]
  OEE              = A × P × Q                                                                  [OEE index]
A figure whose input is missing (no counter tag, no ideal cycle time, a counter without good readings for part of
the running time, no observed time) is absent: None with the reason, never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.states.config import STATES
from collector.states.shifts import Shift


@dataclass
class Tally:
    """Seconds per state, part counts and alarms of one device over some shifts."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STATES, 0.0))
    planned: float = 0.0  # POT
    counts: dict[str, float] = field(default_factory=dict)
    uncounted: dict[str, float] = field(default_factory=dict)  # role -> running seconds without the counter
    alarms: int = 0

    def add(self, other: Tally) -> None:
        for k, v in other.seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v
        self.planned += other.planned
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0.0) + v
        for k, v in other.uncounted.items():
            self.uncounted[k] = self.uncounted.get(k, 0.0) + v
        self.alarms += other.alarms


def tally(segments: Sequence[tuple[Any, ...]], shift: Shift, now: float, roles: Iterable[str]) -> Tally:
    """One device's segments (device, start, end, state, parts, good, scrap) clipped to one shift, up to `now`."""
    t = Tally()
    a, b = shift.start, min(shift.end, now)
    if b <= a:
        return t
    t.planned = b - a
    covered = 0.0
    prev_fault_end: float | None = None
    roles = tuple(roles)
    for _dev, s, e, state, parts, good, scrap in segments:
        lo, hi = max(s, a), min(e, b)
        if state == "fault" and s != prev_fault_end and a <= s < b:
            t.alarms += 1  # a fault that began in the shift (a cut at a boundary is no new alarm)
        prev_fault_end = e if state == "fault" else None
        if hi <= lo:
            continue
        t.seconds[state] = t.seconds.get(state, 0.0) + hi - lo
        covered += hi - lo
        for role, v in zip(("parts", "good", "scrap"), (parts, good, scrap), strict=True):
            if role not in roles:
                continue
            if v is None:
                if state == "running":
                    t.uncounted[role] = t.uncounted.get(role, 0.0) + hi - lo
            else:
                t.counts[role] = t.counts.get(role, 0.0) + v
    t.seconds["unknown"] += max(0.0, t.planned - covered)
    return t


def _figure(value: float | None, formula: str, denominator: str, reason: str | None = None) -> dict[str, Any]:
    return {"value": value, "formula": formula, "denominator": denominator, "reason": reason if value is None else None}


def figures(t: Tally, ideal_cycle_time: float | None, roles: Iterable[str]) -> dict[str, Any]:
    """Every figure of a tally (see the module docstring); ratios in [0, 1] or None with the reason."""
    roles = set(roles)
    sec = t.seconds
    unknown = sec.get("unknown", 0.0)
    pdot = sec.get("planned_stop", 0.0)
    pbt = t.planned - pdot
    apt = sec.get("running", 0.0)
    obs_pbt, obs_pot = pbt - unknown, t.planned - unknown
    out: dict[str, Any] = {
        "planned_operation_time_s": t.planned, "planned_downtime_s": pdot, "planned_busy_time_s": pbt,
        "actual_production_time_s": apt, "unknown_s": unknown,
        "seconds": {k: round(v, 3) for k, v in sec.items()},
        "alarms": {"count": t.alarms, "duration_s": sec.get("fault", 0.0)},
    }
    out["availability"] = _figure(apt / obs_pbt if obs_pbt > 0 else None, "APT / (PBT − unknown)",
                                  "planned busy time observed", "no observed planned busy time")
    out["utilization"] = _figure(apt / obs_pot if obs_pot > 0 else None, "running / (POT − unknown)",
                                 "planned operation time observed", "no observed planned time")
    # quantities: produced = parts counter, else good + scrap; good = good counter, else produced − scrap
    def missing(role: str) -> str | None:
        if role not in roles:
            return f"no {role} counter tag configured (states.{role})"
        if t.uncounted.get(role):
            return f"the {role} counter had no good reading for {t.uncounted[role]:.0f} s of running time"
        return None

    produced: float | None = None
    why_produced = missing("parts")
    if why_produced is None:
        produced = t.counts.get("parts", 0.0)
    elif missing("good") is None and missing("scrap") is None:
        produced, why_produced = t.counts.get("good", 0.0) + t.counts.get("scrap", 0.0), None
    good: float | None = None
    why_good = missing("good")
    if why_good is None:
        good = t.counts.get("good", 0.0)
    elif produced is not None and missing("scrap") is None:
        good, why_good = produced - t.counts.get("scrap", 0.0), None
    out["produced_quantity"], out["good_quantity"] = produced, good
    why: str | None
    if ideal_cycle_time is None:
        perf, why = None, "no ideal cycle time configured (states.ideal_cycle_time)"
    elif produced is None:
        perf, why = None, why_produced
    elif apt <= 0:
        perf, why = None, "no running time"
    else:
        perf, why = ideal_cycle_time * produced / apt, None
    out["performance"] = _figure(perf, "ideal cycle time × produced quantity / APT", "actual production time", why)
    if produced is None or good is None:
        qual, why = None, why_produced or why_good
    elif produced <= 0:
        qual, why = None, "no parts produced"
    else:
        qual, why = good / produced, None
    out["quality"] = _figure(qual, "good quantity / produced quantity", "produced quantity", why)
    parts = [out[k]["value"] for k in ("availability", "performance", "quality")]
    reasons = [out[k]["reason"] for k in ("availability", "performance", "quality") if out[k]["value"] is None]
    a_, p_, q_ = parts
    oee = a_ * p_ * q_ if a_ is not None and p_ is not None and q_ is not None else None
    out["oee"] = _figure(oee, "availability × performance × quality", "(product of the three)",
                         "; ".join(r for r in reasons if r) or None)
    return out
