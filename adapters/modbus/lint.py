"""Modbus warnings about a valid config (collector/lint.py asks each device through `config_warnings`):
byte orders that do nothing and tags that read the same registers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.modbus.config import BIT_TABLES

if TYPE_CHECKING:
    from adapters.modbus.config import ModbusDevice, ModbusTag

SIXTEEN_BIT = ("bool", "int16", "uint16")
# A 16-bit value or a string has no word order: these read the same as the order beside them.
NO_WORD_ORDER = {"CDAB": "ABCD", "DCBA": "BADC"}


def byte_order_warning(where: str, tag: ModbusTag) -> str | None:
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


def overlap_warnings(where: str, dev: ModbusDevice) -> list[str]:
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
                    lines.append(f"{where}.tags[{j}]: tag '{tag.name}' reads the same bit {tag.bit} of {table} "
                                 f"{start} as tag '{dev.tags[first].name}'")
                continue
            if reach is not None and start <= reach[0]:
                other = reach[2]
                lines.append(f"{where}.tags[{j}]: tag '{tag.name}' ({tag.type}, {table} {start}..{end}) "
                             f"overlaps tag '{other.name}' ({other.type}, {table} {other.address}.."
                             f"{reach[0]}); check the addresses (a {other.type} takes {other.register_count()} "
                             "registers)")
            if reach is None or end > reach[0]:
                reach = (end, j, tag)
    return lines




def device_warnings(where: str, dev: ModbusDevice) -> list[str]:
    """Every Modbus warning of one device, in the order `check` prints them."""
    lines: list[str] = []
    for j, tag in enumerate(dev.tags):
        warning = byte_order_warning(f"{where}.tags[{j}]", tag)
        if warning:
            lines.append(warning)
        if tag.scale == 0:
            lines.append(f"{where}.tags[{j}].scale: tag '{tag.name}': scale 0 makes every value 0")
    return lines + overlap_warnings(where, dev)
