"""Read planner: group a device's tags into as few Modbus requests as pay off.

Tags of one table are joined into one request while the hole between them is at most `max_gap` addresses and
the request stays within `max_registers` (125) registers or `max_bits` (2000) bits. `max_gap` counts addresses
in bit tables too. Without a `max_gap` in the config, a cost model of the device's link decides (`LinkCost`):
reading over a hole of `gap` registers costs `gap` × the line time of a register, one more request costs its
round trip, headers and silences; the hole is read over while that is cheaper. On Modbus TCP a register is
~0.16 µs next to a request's ≥ 120 µs, so any hole the request limit allows is read over; on RTU at 9,600 baud
a register is ~2 ms of line time and a request ~24 ms, so holes of up to ~11 registers are. Pure: no I/O; it
runs once when an adapter is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from adapters.modbus.config import BIT_TABLES, ModbusDevice, ModbusTag
from collector.config.base import Endpoint

__all__ = ["TABLE_ORDER", "LinkCost", "ReadRequest", "default_gaps", "link_cost", "plan_device", "plan_reads",
           "span_request"]

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
               max_gap: int = 10, max_bit_gap: int | None = None, coalesce: bool = True) -> list[ReadRequest]:
    """Plan the requests that read every tag once.

    Greedy over the tags of each table sorted by address: a tag joins the open request when the hole before
    it is <= `max_gap` (in a coil or discrete-input table: `max_bit_gap`, by default `max_gap`) and the
    request then stays within the limit; tags may overlap (bits of one register). `coalesce=False` gives one
    request per tag (the baseline for benchmarks). Raises ValueError for a tag longer than the limit, which
    no request could read.
    """
    by_table: dict[str, list[ModbusTag]] = {}
    for tag in tags:
        table, _ = _located(tag)
        by_table.setdefault(table, []).append(tag)
    plan: list[ReadRequest] = []
    for table in sorted(by_table, key=TABLE_ORDER.__getitem__):
        bits = table in BIT_TABLES
        limit = max_bits if bits else max_registers
        gap = max_bit_gap if bits and max_bit_gap is not None else max_gap
        members = sorted(by_table[table], key=lambda t: (_located(t)[1], t.register_count()))
        current: ReadRequest | None = None
        for tag in members:
            address = _located(tag)[1]
            size = tag.register_count()
            if size > limit:
                raise ValueError(f"tag '{tag.name}' spans {size} addresses but a request may read at most "
                                 f"{limit}; raise max_registers/max_bits or shorten the tag")
            end = address + size
            if current is not None and coalesce and address - current.end <= gap \
                    and max(end, current.end) - current.start <= limit:
                current.count = max(end, current.end) - current.start
                current.tags.append((tag, address - current.start))
                continue
            current = ReadRequest(table, address, size, [(tag, 0)])
            plan.append(current)
    return plan


# -------------------------------------------------------------------------------------- the cost model

TCP_REQUEST_S = 20e-6 + 100e-6
"""One more Modbus TCP request: ~20 µs of the collector's loop and kernel time (docs/BENCHMARKS.md, profile)
plus a round trip through a switch and a device's TCP stack, ~100 µs at the least (on 127.0.0.1 only the
first part; either way it is the smaller bound, the one that joins fewer holes)."""
TCP_REGISTER_S = 16 / 100e6
"""One more register in an answer: 2 bytes on a 100 Mbit/s link (0.16 µs); the bytes cost no decoding."""
RTU_TURNAROUND_S = 0.003
"""How long a serial device takes to start its answer after the request: 1–10 ms for most (a PLC answers at
the end of its scan); the model takes the short end, which joins fewer holes."""
RTU_REQUEST_CHARS = 8 + 5
"""Characters of one read that carry no data: the request (unit, function, start, count, CRC: 8) and the
answer's unit, function, byte count and CRC (5)."""
RTU_DEFAULT_BAUD = 9600
"""The line behind an `rtu+tcp://` serial server is not in the URL: Modbus' default speed, and the most
common setting of serial servers, is assumed."""


@dataclass(frozen=True, slots=True)
class LinkCost:
    """What a device's link charges, in seconds of its poll cycle: one more request (round trip, headers,
    silences, turnaround, the device's `inter_request_delay`), one more register and one more bit read."""

    request_s: float
    register_s: float
    bit_s: float

    def gap(self, bits: bool, limit: int) -> int:
        """The widest hole worth reading over rather than sending one more request (at most `limit`)."""
        per = self.bit_s if bits else self.register_s
        if per <= 0:
            return limit
        return max(0, min(limit, int(self.request_s / per)))


def serial_char_s(baud: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> float:
    """Line time of one character: start bit, data bits, parity bit (unless N), stop bits."""
    return (1 + bytesize + (parity.upper()[:1] != "N") + stopbits) / baud


def rtu_cost(baud: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1,
             extra_request_s: float = 0.0) -> LinkCost:
    """Modbus RTU at `baud`: a request costs its frames' headers and CRCs, the 3.5-character silence before
    each frame (fixed at 1.75 ms above 19,200 baud, as the standard says) and the device's turnaround."""
    char = serial_char_s(baud, bytesize, parity, stopbits)
    silence = 3.5 * char if baud <= 19200 else 0.00175
    request = RTU_REQUEST_CHARS * char + 2 * silence + RTU_TURNAROUND_S + extra_request_s
    return LinkCost(request_s=request, register_s=2 * char, bit_s=char / 8)


def link_cost(endpoint: Endpoint, inter_request_delay: float = 0.0) -> LinkCost:
    """The cost model of a device's endpoint: `tcp://` Modbus TCP, `serial://` RTU at the URL's settings
    (9,600 8N1 unless given), `rtu+tcp://` RTU frames to a serial server (its line at 9,600 baud)."""
    if endpoint.scheme == "tcp":
        return LinkCost(request_s=TCP_REQUEST_S + inter_request_delay, register_s=TCP_REGISTER_S,
                        bit_s=TCP_REGISTER_S / 16)
    params = endpoint.params if endpoint.scheme == "serial" else {}
    try:
        baud = int(params.get("baudrate", RTU_DEFAULT_BAUD))
        bytesize = int(params.get("bytesize", 8))
        stopbits = int(params.get("stopbits", 1))
    except ValueError:  # the endpoint's validation names a bad parameter; the model takes the defaults
        baud, bytesize, stopbits = RTU_DEFAULT_BAUD, 8, 1
    extra = inter_request_delay + (TCP_REQUEST_S if endpoint.scheme == "rtu+tcp" else 0.0)
    return rtu_cost(max(1, baud), bytesize, params.get("parity", "N"), stopbits, extra_request_s=extra)


def default_gaps(device: ModbusDevice) -> tuple[int, int]:
    """(register gap, bit gap) the device is planned with: its `max_gap` for both when the config gives one,
    else what its link's cost model says."""
    if device.max_gap is not None:
        return device.max_gap, device.max_gap
    cost = link_cost(device.parsed_endpoint, device.inter_request_delay)
    return cost.gap(False, device.max_registers), cost.gap(True, device.max_bits)


def plan_device(device: ModbusDevice) -> list[ReadRequest]:
    """Plan with the device's own limits (`max_registers`, `max_bits`, `coalesce`) and gaps (`default_gaps`)."""
    gap, bit_gap = default_gaps(device)
    return plan_reads(device.tags, max_registers=device.max_registers, max_bits=device.max_bits,
                      max_gap=gap, max_bit_gap=bit_gap, coalesce=device.coalesce)


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
