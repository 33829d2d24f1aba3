"""The read planner: how many requests a tag map costs, and that every tag sits where the answer has it."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.modbus.planner import ReadRequest, default_gaps, link_cost, plan_device, plan_reads, rtu_cost
from collector.config import ModbusDevice, ModbusTag, parse_config


def hr(name: str, address: int, type_: str = "uint16", **extra: Any) -> ModbusTag:
    return ModbusTag.model_validate({"name": name, "table": "holding_register", "address": address,
                                     "type": type_, **extra})


def coil(name: str, address: int) -> ModbusTag:
    return ModbusTag(name=name, table="coil", address=address, type="bool")


def spans(plan: list[ReadRequest]) -> list[tuple[str, int, int]]:
    return [(r.table, r.start, r.count) for r in plan]


def check_offsets(plan: list[ReadRequest]) -> None:
    """Every tag lies inside its request, at start + offset == its address."""
    for req in plan:
        for tag, off in req.tags:
            assert req.start + off == tag.address
            assert off + tag.register_count() <= req.count


def test_contiguous_map_fills_requests_of_125() -> None:
    tags = [hr(f"t{i}", i) for i in range(300)]
    plan = plan_reads(tags)
    assert spans(plan) == [("holding_register", 0, 125), ("holding_register", 125, 125),
                           ("holding_register", 250, 50)]
    assert sum(len(r.tags) for r in plan) == 300
    check_offsets(plan)


def test_sparse_map_40_tags_over_300_registers() -> None:
    tags = [hr(f"t{i}", i * 7 + 10, "float32") for i in range(40)]  # holes of 5 registers, 10..290
    plan = plan_reads(tags, max_gap=10)
    assert len(plan) == 3
    assert all(r.count <= 125 for r in plan)
    assert plan[0].start == 10 and plan[-1].end == 39 * 7 + 10 + 2
    check_offsets(plan)
    # holes wider than max_gap: one request per tag
    assert len(plan_reads(tags, max_gap=4)) == 40
    # the baseline: one request per tag whatever the gaps
    assert len(plan_reads(tags, coalesce=False)) == 40


def test_max_gap_is_inclusive() -> None:
    a = hr("a", 0)
    assert spans(plan_reads([a, hr("b", 11)], max_gap=10)) == [("holding_register", 0, 12)]  # hole of 10
    assert spans(plan_reads([a, hr("b", 12)], max_gap=10)) == [("holding_register", 0, 1),
                                                               ("holding_register", 12, 1)]
    assert len(plan_reads([a, hr("b", 1)], max_gap=0)) == 1
    assert len(plan_reads([a, hr("b", 2)], max_gap=0)) == 2


def test_no_request_past_the_limit() -> None:
    # a float32 whose second register would be the 126th starts a new request
    assert spans(plan_reads([hr("a", 0), hr("b", 123, "float32")], max_gap=125)) == [("holding_register", 0, 125)]
    assert spans(plan_reads([hr("a", 0), hr("b", 124, "float32")], max_gap=125)) == [
        ("holding_register", 0, 1), ("holding_register", 124, 2)]
    assert spans(plan_reads([hr("a", 0), hr("b", 9)], max_registers=10)) == [("holding_register", 0, 10)]
    assert len(plan_reads([hr("a", 0), hr("b", 10)], max_registers=10)) == 2
    with pytest.raises(ValueError, match="at most 4"):
        plan_reads([hr("s", 0, "string", count=10)], max_registers=4)


def test_bits_coalesce_up_to_2000() -> None:
    coils = [coil(f"c{i}", i * 5) for i in range(1000)]  # 0..4995
    plan = plan_reads(coils, max_gap=10)
    assert spans(plan) == [("coil", 0, 1996), ("coil", 2000, 1996), ("coil", 4000, 996)]
    check_offsets(plan)
    assert plan[0].is_bits and plan[0].tags[3] == (coils[3], 15)
    assert len(plan_reads(coils, max_bits=100)) == 50


def test_tables_are_never_mixed_and_order_is_fixed() -> None:
    tags = [hr("h", 0), ModbusTag(name="i", table="input_register", address=0, type="uint16"),
            coil("c", 0), ModbusTag(name="d", table="discrete_input", address=0, type="bool"), hr("h2", 1)]
    assert spans(plan_reads(tags)) == [("coil", 0, 1), ("discrete_input", 0, 1), ("input_register", 0, 1),
                                       ("holding_register", 0, 2)]


def test_overlapping_tags_share_a_request() -> None:
    tags = [hr("word", 10), hr("bit0", 10, "bool", bit=0), hr("bit9", 10, "bool", bit=9), hr("x", 11, "uint32")]
    plan = plan_reads(tags)
    assert spans(plan) == [("holding_register", 10, 3)]
    assert sorted((t.name, off) for t, off in plan[0].tags) == [("bit0", 0), ("bit9", 0), ("word", 0), ("x", 1)]


def modbus(endpoint: str, tags: list[dict[str, Any]], **extra: Any) -> ModbusDevice:
    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [
        {"id": "d", "protocol": "modbus", "endpoint": endpoint, "tags": tags, **extra}]})
    dev = cfg.devices[0]
    assert isinstance(dev, ModbusDevice)
    return dev


SPREAD = [{"name": f"t{a}", "table": "holding_register", "address": a, "type": "float32"}
          for a in (0, 10, 25, 60, 200, 330)]
COILS = [{"name": f"c{a}", "table": "coil", "address": a, "type": "bool"} for a in (0, 100, 300, 2500)]


def test_tcp_reads_over_any_hole_the_request_limit_allows() -> None:
    """On Modbus TCP a register is ~0.16 µs of wire next to ≥ 120 µs per request: every hole that fits."""
    dev = modbus("tcp://127.0.0.1:5020", SPREAD + COILS)
    assert default_gaps(dev) == (125, 2000)
    assert spans(plan_device(dev)) == [("coil", 0, 301), ("coil", 2500, 1), ("holding_register", 0, 62),
                                       ("holding_register", 200, 2), ("holding_register", 330, 2)]
    assert all(r.count <= (2000 if r.is_bits else 125) for r in plan_device(dev))
    check_offsets(plan_device(dev))


def test_rtu_at_9600_baud_reads_over_short_holes_only() -> None:
    """At 9,600 baud 8N1 a register is 2.08 ms of line time, a request ~24 ms (13 characters of header and
    CRC, two 3.5-character silences, 3 ms turnaround): holes up to 11 registers, 183 bits."""
    dev = modbus("serial:///dev/ttyUSB0?baudrate=9600", SPREAD + COILS)
    cost = link_cost(dev.parsed_endpoint)
    assert cost.register_s == pytest.approx(2 * 10 / 9600)
    assert cost.request_s == pytest.approx(13 * 10 / 9600 + 2 * 3.5 * 10 / 9600 + 0.003)
    assert default_gaps(dev) == (11, 183)
    assert spans(plan_device(dev)) == [("coil", 0, 101), ("coil", 300, 1), ("coil", 2500, 1),  # 99 bits: 13 bytes
                                       ("holding_register", 0, 12), ("holding_register", 25, 2),
                                       ("holding_register", 60, 2), ("holding_register", 200, 2),
                                       ("holding_register", 330, 2)]


def test_the_gap_grows_with_the_baud_rate_and_follows_the_frame() -> None:
    gaps = [default_gaps(modbus(f"serial:///dev/ttyUSB0?baudrate={b}", SPREAD))[0]
            for b in (1200, 9600, 19200, 38400, 115200)]
    assert gaps == [10, 11, 12, 18, 43]
    # above 19,200 baud the silence is a fixed 1.75 ms, so a request costs relatively more
    assert rtu_cost(115200).request_s == pytest.approx(13 * 10 / 115200 + 2 * 0.00175 + 0.003)
    # parity and a second stop bit lengthen every character alike: the gap stays about the same
    assert rtu_cost(9600, parity="E", stopbits=2).register_s == pytest.approx(2 * 12 / 9600)
    # a serial server (rtu+tcp://) is assumed to run its line at 9,600 baud
    assert default_gaps(modbus("rtu+tcp://127.0.0.1:4001", SPREAD)) == (11, 183)
    # a device that needs a pause between requests makes every request dearer: wider holes pay off
    assert default_gaps(modbus("serial:///dev/ttyUSB0", SPREAD, inter_request_delay=0.05))[0] == 35
    assert default_gaps(modbus("tcp://127.0.0.1:5020", SPREAD, max_registers=60)) == (60, 2000)


def test_an_explicit_max_gap_wins_on_every_transport() -> None:
    for endpoint in ("tcp://127.0.0.1:5020", "serial:///dev/ttyUSB0?baudrate=115200", "rtu+tcp://127.0.0.1:1"):
        dev = modbus(endpoint, SPREAD + COILS, max_gap=10)
        assert default_gaps(dev) == (10, 10)
        assert spans(plan_device(dev))[-5:] == [("holding_register", 0, 12), ("holding_register", 25, 2),
                                                ("holding_register", 60, 2), ("holding_register", 200, 2),
                                                ("holding_register", 330, 2)]
    assert len(plan_device(modbus("tcp://127.0.0.1:5020", SPREAD, max_gap=0))) == 6


def test_plan_reads_takes_a_separate_gap_for_bits() -> None:
    tags = [hr("a", 0), hr("b", 30), coil("c", 0), coil("d", 30)]
    assert spans(plan_reads(tags, max_gap=10, max_bit_gap=40)) == [("coil", 0, 31), ("holding_register", 0, 1),
                                                                   ("holding_register", 30, 1)]
    assert len(plan_reads(tags, max_gap=10)) == 4  # without it, max_gap for both, as before


def test_plan_device_uses_the_device_limits() -> None:
    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [{
        "id": "d", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:5020", "max_gap": 0, "max_registers": 3,
        "tags": [{"name": f"t{i}", "register": 40001 + i} for i in range(7)]
        + [{"name": "far", "register": 40020}]}]})
    dev = cfg.devices[0]
    assert isinstance(dev, ModbusDevice)
    assert spans(plan_device(dev)) == [("holding_register", 0, 3), ("holding_register", 3, 3),
                                       ("holding_register", 6, 1), ("holding_register", 19, 1)]
    dev.coalesce = False
    assert len(plan_device(dev)) == 8
