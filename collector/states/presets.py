"""Rules for machines that say their state themselves, picked from the tag names when `states.rules` is empty.

Each preset is written in the rule language itself (collector/states/expr.py), so `collector oee --rules`
and docs/states.md show exactly what runs. The first rule that holds wins; no match is idle.
"""

from __future__ import annotations

from collector.states.config import DeviceStates

ALARM_TAGS = ("alarm", "fault_code", "alarm_active")
PARTS_TAGS = ("parts_count", "part_count", "shot_count", "parts")


def _fault(tags: set[str]) -> list[str]:
    return [t for t in ALARM_TAGS if t in tags]


def machine_tool(tags: set[str]) -> dict[str, str]:
    """OPC UA Machine Tools (OPC 40501) `Monitoring.Channel.ChannelState`: Active (0) runs, Interrupted (1) and
    Reset (2) do not; the bundled simulator says running / idle / alarm / setup as text."""
    rules = {"fault": " or ".join([*_fault(tags), 'channel_state == "alarm"'])}
    rules["setup"] = 'channel_state == "setup"'
    rules["running"] = 'channel_state in ["running", "Active", 0]'
    return rules


def state_code(tags: set[str]) -> dict[str, str]:
    """A numeric `machine_state` register: 0 idle, 1 running, 2 alarm, 3 setup (the bundled simulators, and the
    common PLC convention); an alarm tag beside it also means fault."""
    return {"fault": " or ".join([*_fault(tags), "machine_state == 2"]), "setup": "machine_state == 3",
            "running": "machine_state == 1"}


def euromap(tags: set[str]) -> dict[str, str]:
    """A Euromap 77-style `machine_mode` (1 automatic, 2 semi-automatic, 3 manual, 4 setup): automatic and
    semi-automatic cycles run, manual and setup are setup; check your machine's table and write rules if it
    differs."""
    rules = {"fault": " or ".join(_fault(tags))} if _fault(tags) else {}
    return {**rules, "running": "machine_mode in [1, 2]", "setup": "machine_mode in [3, 4]"}


def running_flag(tags: set[str]) -> dict[str, str]:
    """A plain running bit (`running` or `motor_running`), with an alarm tag if there is one."""
    flag = "running" if "running" in tags else "motor_running"
    rules = {"fault": " or ".join(_fault(tags))} if _fault(tags) else {}
    return {**rules, "running": flag}


PRESETS = {"machine_tool": (machine_tool, "channel_state"), "state_code": (state_code, "machine_state"),
           "euromap": (euromap, "machine_mode"), "running_flag": (running_flag, "running")}


def pick(tags: set[str]) -> str | None:
    """The preset the tag names fit, in the order of PRESETS (`motor_running` counts as a running flag)."""
    for name, (_, key) in PRESETS.items():
        if key in tags or (name == "running_flag" and "motor_running" in tags):
            return name
    return None


def resolve(states: DeviceStates | None, tags: set[str]) -> tuple[str, dict[str, str], str | None] | None:
    """(where the rules come from, the rules, the parts counter) of a device, or None when it has no states."""
    states = states or DeviceStates()
    parts = states.parts or next((t for t in PARTS_TAGS if t in tags), None)
    if states.rules:
        return "rules", {str(k): v for k, v in states.rules.items()}, parts
    if states.preset == "none":
        return None
    name = pick(tags) if states.preset == "auto" else states.preset
    if name is None:
        return None
    return f"preset {name}", PRESETS[name][0](tags), parts
