"""Warnings about a valid config: things that are legal but most often a slip. They never fail `check` or stop
`run`; `check` prints them to stderr and `run` logs them, each with the field path and what to do.

What is an error and what a warning: an error is a setting that cannot work or reads a wrong value for sure
(see collector/config.py); a warning is one that can be meant (two tags reading one register as int16 and
uint16) but usually is not (a float32 starting inside another float32).
"""

from __future__ import annotations

from collector.config import (
    BIT_TABLES,
    CollectorConfig,
    ModbusDevice,
    ModbusTag,
)

FAST_POLL = 0.1  # s: faster polling is legal, but few PLCs answer 10 requests a second per tag group
SIXTEEN_BIT = ("bool", "int16", "uint16")
# A 16-bit value or a string has no word order: these read the same as the order beside them.
NO_WORD_ORDER = {"CDAB": "ABCD", "DCBA": "BADC"}


def _byte_order_warning(where: str, tag: ModbusTag) -> str | None:
    """A byte_order set on the tag itself that does not do what its name says."""
    order = tag.byte_order
    if order is None or tag.table in BIT_TABLES:
        return None
    if tag.type == "raw" or (tag.type == "bool" and tag.bit is not None):
        return (f"{where}.byte_order: tag '{tag.name}': byte_order {order} is ignored for a {tag.type} tag"
                + (" (bit counts from the least significant bit as transmitted)" if tag.type == "bool" else ""))
    if order in NO_WORD_ORDER and (tag.type in SIXTEEN_BIT or tag.type == "string"):
        what = "a string" if tag.type == "string" else f"a 16-bit {tag.type}"
        return (f"{where}.byte_order: tag '{tag.name}': {what} has no word order, so {order} reads the same as "
                f"{NO_WORD_ORDER[order]}; write {NO_WORD_ORDER[order]} (or check the device manual)")
    return None


def _overlap_warnings(i: int, dev: ModbusDevice) -> list[str]:
    """Tags of one device that read the same registers (or bits) in one table. Bits of a status word and the
    word itself are normal; two values sharing registers are an off-by-one far more often than a choice."""
    lines: list[str] = []
    spans: dict[str, list[tuple[int, int, int, ModbusTag]]] = {}
    for j, tag in enumerate(dev.tags):
        if tag.table is None or tag.address is None:
            continue
        spans.setdefault(tag.table, []).append((tag.address, tag.address + tag.register_count() - 1, j, tag))
    for table, items in spans.items():
        items.sort(key=lambda s: (s[0], s[2]))
        bits: dict[tuple[int, int], int] = {}
        reach: tuple[int, int, ModbusTag] | None = None  # (last register, index, tag) reaching furthest so far
        for start, end, j, tag in items:
            if tag.type == "bool" and tag.bit is not None:
                first = bits.setdefault((start, tag.bit), j)
                if first != j:
                    lines.append(f"devices[{i}].tags[{j}]: tag '{tag.name}' reads the same bit {tag.bit} of {table} "
                                 f"{start} as tag '{dev.tags[first].name}'")
                continue
            if reach is not None and start <= reach[0]:
                other = reach[2]
                lines.append(f"devices[{i}].tags[{j}]: tag '{tag.name}' ({tag.type}, {table} {start}..{end}) "
                             f"overlaps tag '{other.name}' ({other.type}, {table} {other.address}.."
                             f"{reach[0]}); check the addresses (a {other.type} takes {other.register_count()} "
                             "registers)")
            if reach is None or end > reach[0]:
                reach = (end, j, tag)
    return lines


def topic_root_warnings(root: str) -> list[str]:
    lines = []
    if root.startswith("$"):
        lines.append(f"mqtt.topic_root: '{root}' starts with '$': brokers keep such topics for themselves ($SYS) "
                     "and subscribers to '#' do not see them")
    if root.startswith("/") or "//" in root or root.endswith("/"):
        lines.append(f"mqtt.topic_root: '{root}' has an empty level (a leading, doubled or trailing '/'); "
                     "write factory/{enterprise}/{workshop}")
    if any(c.isspace() for c in root):
        lines.append(f"mqtt.topic_root: '{root}' contains a space; many MQTT tools handle that badly")
    return lines


def config_warnings(cfg: CollectorConfig) -> list[str]:
    """Every warning about `cfg`, each starting with the field path."""
    lines = topic_root_warnings(cfg.mqtt.topic_root)
    for i, dev in enumerate(cfg.devices):
        if dev.interval < FAST_POLL:
            lines.append(f"devices[{i}].interval: {dev.interval:g} s polls more than 10 times a second; check "
                         "that the device and the network keep up (0.5 to 5 s is usual)")
        if isinstance(dev, ModbusDevice):
            for j, tag in enumerate(dev.tags):
                warning = _byte_order_warning(f"devices[{i}].tags[{j}]", tag)
                if warning:
                    lines.append(warning)
                if tag.scale == 0:
                    lines.append(f"devices[{i}].tags[{j}].scale: tag '{tag.name}': scale 0 makes every value 0")
            lines += _overlap_warnings(i, dev)
    if cfg.assets_csv is not None and not cfg.assets_csv.is_file():
        lines.append(f"assets_csv: {cfg.assets_csv} does not exist; the register has only the config's assets")
    return lines
