"""The `states:` config: which machine state each device is in, from conditions on its tags (docs/states.md).

A device's `states.rules` maps states to conditions (collector/states/expr.py); the first that holds, in the
order written, is the state. Without rules, a device whose tags say their state themselves gets a preset
(collector/states/presets.py). The root `states:` switches the whole feature and sets the summary topic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from collector.states.expr import ExprError, compile_condition

RuleState = Literal["running", "idle", "setup", "fault", "planned_stop"]
RULE_STATES: tuple[str, ...] = ("running", "idle", "setup", "fault", "planned_stop")
STATES: tuple[str, ...] = (*RULE_STATES, "offline", "unknown")
Preset = Literal["auto", "none", "machine_tool", "state_code", "euromap", "running_flag"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class DeviceStates(_Strict):
    """Per device: the rules, or a preset; and the counters the performance and quality figures need."""

    preset: Preset = Field(default="auto", description="used when `rules` is empty: auto picks one from the tag "
                           "names (docs/states.md); none: no machine states for this device")
    rules: dict[RuleState, str] = Field(default_factory=dict, description="state: condition, first match wins; "
                                        "no match is idle")
    ideal_cycle_time: float | None = Field(default=None, gt=0, le=86400, description="seconds per part (ISO "
                                           "22400 planned run time per item)")
    parts: str | None = Field(default=None, description="counter tag of produced parts")
    good: str | None = Field(default=None, description="counter tag of good parts")
    scrap: str | None = Field(default=None, description="counter tag of scrap parts")
    counter_wrap: float | None = Field(default=None, gt=0, description="the value the counters wrap at (65536 for "
                                       "a uint16, 4294967296 for a uint32); a drop is a reset without it")

    @field_validator("rules")
    @classmethod
    def _conditions(cls, v: dict[str, str]) -> dict[str, str]:
        from collector.config import SUBPATH  # each problem under its own rule's path (format_errors)

        problems = []
        for state, text in v.items():
            try:
                compile_condition(text)
            except ExprError as exc:
                problems.append(f"{SUBPATH}{state}: {exc} in {text!r}")
        if problems:
            raise ValueError("\n".join(problems))
        return v


class StatesConfig(_Strict):
    """The root `states:`: on for every device with rules or a preset that fits, unless switched off."""

    enabled: bool = True
    summary_topic: str = Field(default="{root}/states/shift", description="retained per-shift figures")

    @field_validator("summary_topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v or any(c in v for c in "#+") or v.startswith("/"):
            raise ValueError(f"'{v}' is not a topic to publish to (no wildcards # +, no leading /)")
        return v


def tag_errors(states: DeviceStates, tags: set[str]) -> list[str]:
    """Conditions and counters naming a tag the device does not have (each with the nearest tag name)."""
    from collector.config import near_miss

    out = []
    for state, text in states.rules.items():
        for tag in sorted(compile_condition(text).tags - tags):
            hint = near_miss(tag, sorted(tags))
            out.append(f"states.rules.{state}: no tag '{tag}' on this device" + (f" (did you mean '{hint}'?)" if hint else ""))
    for name in ("parts", "good", "scrap"):
        tag = getattr(states, name)
        if tag is not None and tag not in tags:
            hint = near_miss(tag, sorted(tags))
            out.append(f"states.{name}: no tag '{tag}' on this device" + (f" (did you mean '{hint}'?)" if hint else ""))
    return out
