"""The asset register (设备台账): the denominator of every indicator.

Built from the config: each configured device's `asset:` block (bound to that device) and each `assets:`
entry (not connected, or bound with `device:`), then the enterprise's 设备台账 CSV (`assets_csv:`) and the
register installed by `collector assets import` (state directory). A device that the collector cannot reach
still counts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.config import AssetEntry, AssetFields
from collector.indicators.notices import Notice

if TYPE_CHECKING:  # the root model loads every protocol plugin: the hub reads registers without them
    from collector.config import CollectorConfig

SOURCE_ZH = {"assets_csv": "台账CSV（assets_csv）", "import": "导入台账"}
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
    source: str = "config"  # config, assets_csv, import: where the register entry came from

    def in_universe(self, on: dt.date, scope: str = "all") -> bool:
        """Membership of U (INDICATORS.md) on a date."""
        return self.excluded(on, scope) is None

    def excluded(self, on: dt.date, scope: str = "all") -> str | None:
        """Why the asset is outside U on a date (the report says it beside the row), or None when it is in U:
        scrapped, sealed, non_production, not_commissioned or not_key_process."""
        if self.status not in COUNTED_STATUS:
            return self.status
        if self.usage not in PRODUCTIVE_USAGE:
            return self.usage
        if self.commissioned is not None and self.commissioned > on:
            return "not_commissioned"
        if scope == "key_process" and not self.is_key_process:
            return "not_key_process"
        return None


def _asset(id_: str, f: AssetFields, default_workshop: str, device: str | None,
           protocol: str | None = None, endpoint: str | None = None, name: str | None = None,
           source: str = "config") -> Asset:
    return Asset(
        id=id_, name=f.name or name or id_, workshop=f.workshop or default_workshop, line=f.line,
        category=f.category, usage=f.usage, status=f.status, commissioned=f.commissioned, is_cnc=f.is_cnc,
        # A configured device speaks a protocol, so it is digital unless the register says otherwise.
        is_digital=f.is_digital if f.is_digital is not None else device is not None,
        digital_basis=f.digital_basis, is_key_process=f.is_key_process, original_value=f.original_value,
        device=device, protocol=protocol, endpoint=endpoint, source=source,
    )


def build_register(cfg: CollectorConfig, extra: list[tuple[AssetEntry, str]] | None = None,
                   warnings: list[str] | None = None) -> list[Asset]:
    """Every asset of the config; an `assets:` entry bound to a device replaces that device's `asset:` block.

    `extra` are (entry, source) pairs from a CSV register; the config wins on a clash of ids or bindings,
    and each clash is told in `warnings`.
    """
    ws = cfg.site.workshop
    warn = warnings if warnings is not None else []
    entries: list[tuple[AssetEntry, str]] = [(a, "config") for a in cfg.assets]
    taken = {a.id for a in cfg.assets} | {d.id for d in cfg.devices if not any(a.device == d.id for a in cfg.assets)}
    bound_ids = {a.device for a in cfg.assets if a.device is not None}
    device_ids = {d.id for d in cfg.devices}
    for entry, source in extra or []:
        if entry.id in taken:
            warn.append(Notice(f"{source}: asset '{entry.id}' is also in the config; the config's entry is used",
                               f"{SOURCE_ZH.get(source, source)}：设备 {entry.id} 在配置文件中也有，采用配置文件的条目"))
            continue
        if entry.device is not None and (entry.device not in device_ids or entry.device in bound_ids):
            warn.append(Notice(f"{source}: asset '{entry.id}' binds device '{entry.device}', which is not configured "
                               "or already bound; it is counted as not connected",
                               f"{SOURCE_ZH.get(source, source)}：设备 {entry.id} 绑定的采集设备 {entry.device} "
                               "未配置或已被绑定，按未接入采集计"))
            entry = entry.model_copy(update={"device": None})
        taken.add(entry.id)
        if entry.device is not None:
            bound_ids.add(entry.device)
        entries.append((entry, source))
    bound = {a.device: (a, src) for a, src in entries if a.device is not None}
    out: list[Asset] = []
    for dev in cfg.devices:
        hit = bound.get(dev.id)
        if hit is not None:
            out.append(_asset(hit[0].id, hit[0], ws, dev.id, dev.protocol, dev.endpoint, dev.name, hit[1]))
        else:
            out.append(_asset(dev.id, dev.asset, ws, dev.id, dev.protocol, dev.endpoint, dev.name))
    out.extend(_asset(a.id, a, ws, None, source=src) for a, src in entries if a.device is None)
    return out


IMPORTED_REGISTER = "register-import.json"


def load_register(cfg: CollectorConfig, state_dir: Path | None = None,
                  warnings: list[str] | None = None, at: float | None = None) -> list[Asset]:
    """The whole register: config, `assets_csv:`, and the register `collector assets import` installed (with
    `at`, the imported register that was in force at that time: a closed month keeps its register).

    A CSV that no longer reads is told in `warnings` and skipped: a gateway must keep collecting."""
    from collector.indicators.csv_import import (
        CsvImportError,
        read_imported,
        read_register_csv,
        register_in_force,
    )

    warn = warnings if warnings is not None else []
    extra: list[tuple[AssetEntry, str]] = []
    if cfg.assets_csv is not None:
        try:
            extra += [(e, "assets_csv") for e in read_register_csv(cfg.assets_csv).entries]
        except CsvImportError as exc:
            warn.extend(Notice(f"assets_csv: {line}", f"台账CSV（assets_csv）无法读取，已跳过：{line}")
                        for line in exc.lines)
    state = state_dir if state_dir is not None else cfg.state_dir
    try:
        found = register_in_force(state, at)
        if found is not None:
            extra += [(e, "import") for e in read_imported(found[0])]
    except (OSError, ValueError, KeyError) as exc:
        warn.append(Notice(f"{state / IMPORTED_REGISTER}: unreadable ({exc}); imported register skipped",
                           f"{state / IMPORTED_REGISTER}：导入的台账无法读取（{exc}），已跳过"))
    return build_register(cfg, extra, warn)


def register_version(cfg: CollectorConfig, state_dir: Path, at: float | None = None) -> dict[str, Any] | None:
    """The imported register version in force at `at` (time, sha256, rows), None for the config's alone."""
    from collector.indicators.csv_import import register_in_force

    try:
        found = register_in_force(state_dir, at)
    except (OSError, ValueError, KeyError):
        return None
    return None if found is None else found[1]
