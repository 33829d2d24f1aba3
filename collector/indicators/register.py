"""The asset register (设备台账): the denominator of every indicator.

Built from the config: each configured device's `asset:` block (bound to that device) and each `assets:`
entry (not connected, or bound with `device:`). A device that the collector cannot reach still counts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from collector.config import AssetFields, CollectorConfig

PRODUCTIVE_USAGE = ("production", "auxiliary")
COUNTED_STATUS = ("in_service", "idle")


@dataclass(frozen=True)
class Asset:
    """One register entry, with defaults resolved."""

    id: str
    name: str
    workshop: str
    line: str | None
    category: str | None
    usage: str
    status: str
    commissioned: dt.date | None
    is_cnc: bool
    is_digital: bool
    digital_basis: str | None
    is_key_process: bool
    original_value: float | None
    device: str | None  # the configured device it is bound to, if any
    protocol: str | None = None
    endpoint: str | None = None

    def in_universe(self, on: dt.date, scope: str = "all") -> bool:
        """Membership of U (INDICATORS.md) on a date."""
        if self.usage not in PRODUCTIVE_USAGE or self.status not in COUNTED_STATUS:
            return False
        if self.commissioned is not None and self.commissioned > on:
            return False
        return scope != "key_process" or self.is_key_process


def _asset(id_: str, f: AssetFields, default_workshop: str, device: str | None,
           protocol: str | None = None, endpoint: str | None = None, name: str | None = None) -> Asset:
    return Asset(
        id=id_, name=f.name or name or id_, workshop=f.workshop or default_workshop, line=f.line,
        category=f.category, usage=f.usage, status=f.status, commissioned=f.commissioned, is_cnc=f.is_cnc,
        # A configured device speaks a protocol, so it is digital unless the register says otherwise.
        is_digital=f.is_digital if f.is_digital is not None else device is not None,
        digital_basis=f.digital_basis, is_key_process=f.is_key_process, original_value=f.original_value,
        device=device, protocol=protocol, endpoint=endpoint,
    )


def build_register(cfg: CollectorConfig) -> list[Asset]:
    """Every asset of the config; an `assets:` entry bound to a device replaces that device's `asset:` block."""
    ws = cfg.site.workshop
    bound = {a.device: a for a in cfg.assets if a.device is not None}
    out: list[Asset] = []
    for dev in cfg.devices:
        entry = bound.get(dev.id)
        if entry is not None:
            out.append(_asset(entry.id, entry, ws, dev.id, dev.protocol, dev.endpoint, dev.name))
        else:
            out.append(_asset(dev.id, dev.asset, ws, dev.id, dev.protocol, dev.endpoint, dev.name))
    out.extend(_asset(a.id, a, ws, None) for a in cfg.assets if a.device is None)
    return out
