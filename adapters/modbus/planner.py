"""Read planner: group a device's tags into as few Modbus requests as the limits allow.

A request costs ~90 µs of client CPU and one round trip whatever its length (LIBRARY-FACTS.md), so tags of
one table are joined into one request while the hole between them is at most `max_gap` addresses and the
request stays within `max_registers` (125) registers or `max_bits` (2000) bits. `max_gap` counts addresses
in bit tables too. Pure: no I/O; it runs once when an adapter is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from adapters.modbus.config import BIT_TABLES, ModbusDevice, ModbusTag

__all__ = ["TABLE_ORDER", "ReadRequest", "plan_device", "plan_reads", "span_request"]

# Bits first, then registers; a fixed order keeps plans reproducible.
TABLE_ORDER = {"coil": 0, "discrete_input": 1, "input_register": 2, "holding_register": 3}


@dataclass(slots=True)
class ReadRequest:
    """One read: `count` registers (or bits) of `table` from wire address `start`; each tag with its offset
    (in registers or bits) inside the answer."""

    table: str
    start: int
    count: int
    tags: list[tuple[ModbusTag, int]] = field(default_factory=list)

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.start + self.count

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES


def _located(tag: ModbusTag) -> tuple[str, int]:
    if tag.table is None or tag.address is None:
        raise ValueError(f"tag '{tag.name}' has no resolved table/address (validate it in a ModbusDevice)")
    return tag.table, tag.address


def plan_reads(tags: Iterable[ModbusTag], *, max_registers: int = 125, max_bits: int = 2000,
               max_gap: int = 10, coalesce: bool = True) -> list[ReadRequest]:
    """Plan the requests that read every tag once.

    Greedy over the tags of each table sorted by address: a tag joins the open request when the hole before
    it is <= `max_gap` and the request then stays within the limit; tags may overlap (bits of one register).
    `coalesce=False` gives one request per tag (the baseline for benchmarks). Raises ValueError for a tag
    longer than the limit, which no request could read.
    """
    by_table: dict[str, list[ModbusTag]] = {}
    for tag in tags:
        table, _ = _located(tag)
        by_table.setdefault(table, []).append(tag)
    plan: list[ReadRequest] = []
    for table in sorted(by_table, key=TABLE_ORDER.__getitem__):
        limit = max_bits if table in BIT_TABLES else max_registers
        members = sorted(by_table[table], key=lambda t: (_located(t)[1], t.register_count()))
        current: ReadRequest | None = None
        for tag in members:
            address = _located(tag)[1]
            size = tag.register_count()
            if size > limit:
                raise ValueError(f"tag '{tag.name}' spans {size} addresses but a request may read at most "
                                 f"{limit}; raise max_registers/max_bits or shorten the tag")
            end = address + size
            if current is not None and coalesce and address - current.end <= max_gap \
                    and max(end, current.end) - current.start <= limit:
                current.count = max(end, current.end) - current.start
                current.tags.append((tag, address - current.start))
                continue
            current = ReadRequest(table, address, size, [(tag, 0)])
            plan.append(current)
    return plan


def plan_device(device: ModbusDevice) -> list[ReadRequest]:
    """Plan with the device's own limits (`max_registers`, `max_bits`, `max_gap`, `coalesce`)."""
    return plan_reads(device.tags, max_registers=device.max_registers, max_bits=device.max_bits,
                      max_gap=device.max_gap, coalesce=device.coalesce)


def span_request(tags: Iterable[ModbusTag]) -> ReadRequest:
    """The one request that covers exactly `tags` (all of one table): from the lowest address to the end of
    the last tag. The illegal-address split uses it to re-read parts of a coalesced range."""
    members = sorted(tags, key=lambda t: (_located(t)[1], t.register_count()))
    if not members:
        raise ValueError("a request needs at least one tag")
    table = _located(members[0])[0]
    start = _located(members[0])[1]
    end = max(_located(t)[1] + t.register_count() for t in members)
    return ReadRequest(table, start, end - start, [(t, _located(t)[1] - start) for t in members])
