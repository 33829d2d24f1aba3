"""The read planner: how many requests a tag map costs, and that every tag sits where the answer has it."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.modbus.planner import ReadRequest, plan_device, plan_reads
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
