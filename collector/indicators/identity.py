"""Device identity in the indicators: which devices are simulators, and which changed identity in a period.

The adapters report what identifies a device (`Adapter.identify()`: OPC UA ApplicationUri, ProductUri,
BuildInfo, certificate thumbprint, Machinery Identification; Modbus FC 43/14 objects, identity tags, MAC);
`collector/status.py` keeps one row per distinct identity with first and last sighting. Here:

- a device whose identity *says* simulator (any descriptive field containing "simulat": the bundled
  simulators answer ProductCode "SIMULATOR" and ProductName "shopfloor-collector simulator …"; third-party
  simulation servers say so too) is 模拟设备: never counted as networked unless `indicators.allow_simulated`;
- an identity holds from its first sighting until the next one of the same device replaces it, so a device
  identified yesterday is still known today;
- a change of identity (a new row after another) inside a period is a warning with both identities.
A device that does not identify itself at all is not penalised: identity is evidence, not a condition.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from collector.status import IdentityRecord, changed_keys

_SIMULATOR = re.compile(r"simulat", re.IGNORECASE)
# keys that describe the connection or a value, not what the device is
_NOT_DESCRIPTIVE = frozenset({"protocol", "fc43", "mac", "certificate_thumbprint"})


def simulator_reason(values: Mapping[str, Any]) -> str | None:
    """`key = value` of the first descriptive field that says simulator, or None."""
    for key in sorted(values):
        value = values[key]
        if key in _NOT_DESCRIPTIVE or key.startswith("tag.") or not isinstance(value, str):
            continue
        if _SIMULATOR.search(value):
            return f"{key} = {value}"
    return None


def simulated_devices(identities: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Device id -> why it is a simulator, from each device's latest identity."""
    out = {}
    for device, values in identities.items():
        reason = simulator_reason(values)
        if reason is not None:
            out[device] = reason
    return out


@dataclass
class PeriodIdentity:
    """The identity evidence of a period, per configured device id."""

    current: dict[str, IdentityRecord] = field(default_factory=dict)  # the last identity in force in the period
    simulated: dict[str, str] = field(default_factory=dict)  # an identity in force in the period says simulator
    changes: list[tuple[IdentityRecord, IdentityRecord]] = field(default_factory=list)  # (before, after)


def period_identity(records: Iterable[IdentityRecord], start: float, end: float) -> PeriodIdentity:
    """`records` by device and first sighting (StatusStore.identities): what was in force in [start, end)."""
    by_device: dict[str, list[IdentityRecord]] = {}
    for rec in records:
        by_device.setdefault(rec.device, []).append(rec)
    out = PeriodIdentity()
    for device, recs in by_device.items():
        for i, rec in enumerate(recs):
            until = recs[i + 1].first_seen if i + 1 < len(recs) else float("inf")
            if rec.first_seen >= end or until <= start:
                continue  # not in force in the period
            out.current[device] = rec
            reason = simulator_reason(rec.values)
            if reason is not None and device not in out.simulated:
                out.simulated[device] = reason
            if i > 0 and rec.first_seen >= start and changed_keys(recs[i - 1].values, rec.values):
                out.changes.append((recs[i - 1], rec))
    out.changes.sort(key=lambda c: c[1].first_seen)
    return out
