"""The Modbus simulator and adapter over real TCP on 127.0.0.1.

Expected registers are computed here with `struct` from the byte order's definition, and checked on the wire
with a plain pymodbus client, so a mistake shared by the simulator's encoder and the adapter's decoder would
still show.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from adapters.base import AdapterContext, AdapterError, create_adapter
from adapters.modbus.adapter import ModbusAdapter
from collector.config import ModbusDevice, parse_config
from collector.model import Quality, Reading
from simulators.modbus import ModbusServerSim
from tests.support.broker import free_port as broker_free_port
from tests.test_float32 import shortest_reference

pytestmark = pytest.mark.integration

CONTEXT = AdapterContext()

@pytest.fixture(autouse=True)
def _fresh_context() -> None:
    """What one test's adapters share, like one collector's (its plans, lines and timeout streaks)."""
    global CONTEXT
    CONTEXT = AdapterContext()

ORDERS = ("ABCD", "BADC", "CDAB", "DCBA")
FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
           "float32": "f", "float64": "d"}
VALUES: dict[str, Any] = {"int16": -12345, "uint16": 54321, "int32": -123456789, "uint32": 3123456789,
                          "int64": -1234567890123456789, "uint64": 12345678901234567890,
                          "float32": 1234.5678, "float64": -math.pi * 1e10}


def free_port() -> int:
    return broker_free_port()


def wire_words(value: Any, type_: str, order: str) -> list[int]:
    """Registers for `value`: A is the most significant byte; the order names the bytes on the wire."""
    be = struct.pack(">" + FORMATS[type_], value)
    pairs = [be[i:i + 2] for i in range(0, len(be), 2)]
    wire = {"ABCD": be, "DCBA": be[::-1], "BADC": b"".join(p[::-1] for p in pairs),
            "CDAB": b"".join(reversed(pairs))}[order]
    return list(struct.unpack(f">{len(pairs)}H", wire))


def expected_value(type_: str, value: Any) -> Any:
    """A float32 comes back as the shortest decimal of the nearest single-precision value."""
    return shortest_reference(struct.unpack(">f", struct.pack(">f", value))[0]) if type_ == "float32" else value


def const(value: Any) -> dict[str, Any]:
    return {"kind": "constant", "value": value}


def build_device(port: int, tags: list[dict[str, Any]], **extra: Any) -> ModbusDevice:
    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [{
        "id": extra.pop("id", "m1"), "protocol": "modbus", "endpoint": f"tcp://127.0.0.1:{port}",
        "timeout": extra.pop("timeout", 0.5), "retries": extra.pop("retries", 0), "tags": tags, **extra}]})
    dev = cfg.devices[0]
    assert isinstance(dev, ModbusDevice)
    return dev


def typed_tags() -> tuple[list[dict[str, Any]], dict[str, tuple[str, str, int, Any]]]:
    """Every numeric type in every byte order, 4 registers apart in holding registers (coalesced reads)."""
    tags: list[dict[str, Any]] = []
    where: dict[str, tuple[str, str, int, Any]] = {}
    address = 0
    for type_, value in VALUES.items():
        for order in ORDERS:
            name = f"{type_}_{order}"
            tags.append({"name": name, "table": "holding_register", "address": address, "type": type_,
                         "byte_order": order, "sim": const(value)})
            where[name] = (type_, order, address, value)
            address += 4
    return tags, where


async def raw_registers(port: int, address: int, count: int, unit: int = 1) -> list[int]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0, reconnect_delay=0)
    assert await client.connect()
    words: list[int] = []
    try:
        for start in range(address, address + count, 100):
            resp = await client.read_holding_registers(start, count=min(100, address + count - start),
                                                       device_id=unit)
            assert not resp.isError(), resp
            words += resp.registers
        return words
    finally:
        client.close()


def by_tag(readings: list[Reading]) -> dict[str, Reading]:
    return {r.tag: r for r in readings}


@pytest.fixture
async def typed_sim() -> AsyncIterator[tuple[ModbusServerSim, ModbusDevice, dict[str, Any]]]:
    port = free_port()
    tags, where = typed_tags()
    tags += [
        {"name": "s_abcd", "table": "holding_register", "address": 200, "type": "string", "count": 5,
         "sim": const("AX-200")},
        {"name": "s_badc", "table": "holding_register", "address": 210, "type": "string", "count": 5,
         "byte_order": "BADC", "sim": const("AX-200")},
        {"name": "raw3", "table": "holding_register", "address": 220, "type": "raw", "count": 3,
         "sim": const([1, 0xFFFF, 42])},
        {"name": "bit3", "table": "holding_register", "address": 230, "type": "bool", "bit": 3,
         "sim": const(True)},
        {"name": "bit12", "table": "holding_register", "address": 230, "type": "bool", "bit": 12,
         "sim": const(True)},
        {"name": "bit5", "table": "holding_register", "address": 230, "type": "bool", "bit": 5,
         "sim": const(False)},
        {"name": "temp", "table": "input_register", "address": 0, "type": "int16", "scale": 0.1,
         "unit": "degC", "sim": const(-21.5)},
        {"name": "press", "table": "input_register", "address": 1, "type": "uint16", "range": [0, 100],
         "sim": const(150)},
        {"name": "run", "register": "00001", "type": "bool", "sim": const(True)},
        {"name": "stop", "register": "00002", "type": "bool", "sim": const(False)},
        {"name": "door", "register": "10017", "type": "bool", "sim": const(True)},
    ]
    dev = build_device(port, tags)
    sim = ModbusServerSim(dev.endpoint, [dev])
    await sim.start()
    yield sim, dev, where
    await sim.stop()


async def test_every_type_and_byte_order_on_the_wire_and_decoded(typed_sim: Any) -> None:
    sim, dev, where = typed_sim
    # the simulator puts the struct-computed registers on the wire
    wire = await raw_registers(sim.port, 0, 128)
    for type_, order, address, value in where.values():
        n = len(wire_words(value, type_, order))
        assert wire[address:address + n] == wire_words(value, type_, order), (type_, order)
        assert wire[address + n:address + 4] == [0] * (4 - n)  # gaps read as 0
    # the adapter decodes them back
    adapter = ModbusAdapter(dev, CONTEXT)
    await adapter.connect()
    try:
        readings = await adapter.read()
    finally:
        await adapter.close()
    assert [r.tag for r in readings] == [t.name for t in dev.tags]  # one reading per tag, in tag order
    got = by_tag(readings)
    for name, (type_, _order, _address, value) in where.items():
        assert got[name].quality == Quality.GOOD, name
        assert got[name].value == expected_value(type_, value), name
        assert type(got[name].value) is (float if type_.startswith("float") else int), name


async def test_strings_bits_scaling_and_tables(typed_sim: Any) -> None:
    sim, dev, _ = typed_sim
    wire = await raw_registers(sim.port, 200, 31)
    assert wire[0:5] == list(struct.unpack(">5H", b"AX-200\x00\x00\x00\x00"))
    assert wire[10:15] == list(struct.unpack("<5H", b"AX-200\x00\x00\x00\x00"))
    assert wire[20:23] == [1, 0xFFFF, 42]
    assert wire[30] == (1 << 3) | (1 << 12)
    adapter = create_adapter(dev, CONTEXT)
    assert isinstance(adapter, ModbusAdapter)
    await adapter.connect()
    try:
        got = by_tag(await adapter.read())
        stats = adapter.stats()
    finally:
        await adapter.close()
    assert got["s_abcd"].value == "AX-200" and got["s_badc"].value == "AX-200"
    assert got["raw3"].value == [1, 0xFFFF, 42]
    assert (got["bit3"].value, got["bit12"].value, got["bit5"].value) == (True, True, False)
    assert got["temp"].value == pytest.approx(-21.5) and got["temp"].unit == "degC"
    assert (got["press"].value, got["press"].quality) == (150, Quality.BAD_OUT_OF_RANGE)
    assert (got["run"].value, got["stop"].value, got["door"].value) == (True, False, True)
    assert all(r.quality == Quality.GOOD for n, r in got.items() if n != "press")
    assert all(r.source_ts == r.receive_ts > 0 for r in got.values())
    # 128 holding registers of numbers + strings/raw/bits at 200..230: 2 register requests (on TCP the hole
    # before 200 is read over: 0..124, 125..230); plus IR, coil, DI
    assert stats["requests_per_cycle"] == 5 and stats["requests"] == 5 and stats["failures"] == 0


async def test_values_follow_the_model() -> None:
    port = free_port()
    dev = build_device(port, [
        {"name": "state", "register": 40001, "type": "uint16", "sim": {"kind": "state"}},
        {"name": "alarm", "register": "00001", "type": "bool", "sim": {"kind": "alarm"}},
    ], simulate={"update_interval": 0.05, "initial": "running", "dwell": [1000, 1000]})
    async with ModbusServerSim(dev.endpoint, [dev]) as sim:
        adapter = ModbusAdapter(dev, CONTEXT)
        await adapter.connect()
        try:
            got = by_tag(await adapter.read())
            assert (got["state"].value, got["alarm"].value) == (1, False)
            sim.models["m1"].force_state("alarm")
            await asyncio.sleep(0.2)
            got = by_tag(await adapter.read())
            assert (got["state"].value, got["alarm"].value) == (2, True)
        finally:
            await adapter.close()


async def test_device_failure_inside_a_coalesced_range_costs_the_range() -> None:
    """Exception 04 (device failure) is transient: no split, the range's tags are bad for this cycle.
    Exception 02 is split (tests/adapters/modbus/test_modbus_faults.py)."""
    code, quality = 4, Quality.BAD_DEVICE_EXCEPTION
    port = free_port()
    tags = [{"name": f"t{i}", "table": "holding_register", "address": i * 2, "sim": const(i)} for i in range(6)]
    tags.append({"name": "far", "table": "holding_register", "address": 100, "sim": const(7)})
    dev = build_device(port, tags, max_gap=10, simulate={"exception_addresses": [5], "exception_code": code})
    async with ModbusServerSim(dev.endpoint, [dev]):
        adapter = ModbusAdapter(dev, CONTEXT)
        assert [(r.start, r.count) for r in adapter.plan] == [(0, 11), (100, 1)]
        await adapter.connect()
        try:
            got = by_tag(await adapter.read())  # does not raise
            stats = adapter.stats()
        finally:
            await adapter.close()
        for i in range(6):  # address 5 is a hole, but the coalesced request touches it
            assert (got[f"t{i}"].value, got[f"t{i}"].quality) == (None, quality)
        assert (got["far"].value, got["far"].quality) == (7, Quality.GOOD)
        assert stats["exception_responses"] == 1 and stats["failures"] == 0

        # without coalescing no request touches address 5: every tag is good
        dev.coalesce = False
        single = ModbusAdapter(dev, CONTEXT)
        await single.connect()
        try:
            got = by_tag(await single.read())
        finally:
            await single.close()
        assert {n: r.value for n, r in got.items()} == {"t0": 0, "t1": 1, "t2": 2, "t3": 3, "t4": 4, "t5": 5,
                                                       "far": 7}
        assert all(r.quality == Quality.GOOD for r in got.values())


async def test_stop_raises_and_restart_reconnects() -> None:
    port = free_port()
    dev = build_device(port, [{"name": "speed", "register": 40001, "type": "float32", "sim": const(1500.0)}])
    sim = ModbusServerSim(dev.endpoint, [dev])
    await sim.start()
    adapter = ModbusAdapter(dev, CONTEXT)
    try:
        await adapter.connect()
        assert [r.value for r in await adapter.read()] == [1500.0]
        await sim.stop()
        with pytest.raises(AdapterError):
            await adapter.read()
        with pytest.raises(AdapterError, match="cannot connect"):
            await adapter.connect()
        await sim.start()  # same port again
        assert sim.port == port
        await adapter.connect()
        readings = await adapter.read()
        assert [(r.value, r.quality) for r in readings] == [(1500.0, Quality.GOOD)]
        assert adapter.stats()["connects"] == 2
    finally:
        await adapter.close()
        await sim.stop()


async def test_stop_during_a_slow_answer_fails_fast() -> None:
    port = free_port()
    dev = build_device(port, [{"name": "x", "register": 40001, "sim": const(1)}], timeout=5.0, retries=2,
                       simulate={"delay": 0.3})
    sim = ModbusServerSim(dev.endpoint, [dev])
    await sim.start()
    adapter = ModbusAdapter(dev, CONTEXT)
    await adapter.connect()
    try:
        pending = asyncio.create_task(adapter.read())
        await asyncio.sleep(0.1)
        await sim.stop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(AdapterError, match="connection"):
            await pending
        assert loop.time() - started < 1.0  # not the 3 x 5 s of timeouts and retries
    finally:
        await adapter.close()
        await sim.stop()


async def test_silent_unit_and_slow_unit_raise_and_other_units_answer() -> None:
    port = free_port()
    a = build_device(port, [{"name": "x", "register": 40001, "sim": const(11)}], id="a", unit_id=1,
                     timeout=0.2)
    b = build_device(port, [{"name": "x", "register": 40001, "sim": const(22)}], id="b", unit_id=2,
                     timeout=0.2)
    async with ModbusServerSim(a.endpoint, [a, b]) as sim:
        ad_a, ad_b = ModbusAdapter(a, CONTEXT), ModbusAdapter(b, CONTEXT)
        await ad_a.connect()
        await ad_b.connect()
        try:
            assert [r.value for r in await ad_a.read()] == [11]
            assert [r.value for r in await ad_b.read()] == [22]
            sim.set_silent("a", True)
            with pytest.raises(AdapterError, match="no answer"):
                await ad_a.read()
            assert [r.value for r in await ad_b.read()] == [22]  # the other unit still answers
            sim.set_silent("a", False)
            await ad_a.connect()
            assert [r.value for r in await ad_a.read()] == [11]
            sim.unit("b").delay = 0.5  # slower than the timeout
            with pytest.raises(AdapterError, match="no answer"):
                await ad_b.read()
        finally:
            await ad_a.close()
            await ad_b.close()


async def test_connect_errors_are_readable() -> None:
    dev = build_device(free_port(), [{"name": "x", "register": 40001}])
    adapter = ModbusAdapter(dev, CONTEXT)
    with pytest.raises(AdapterError, match=r"cannot connect to 127\.0\.0\.1:\d+"):
        await adapter.connect()
    with pytest.raises(AdapterError, match="not connected"):
        await adapter.read()
    await adapter.close()  # never raises
    await adapter.close()
    rtu_port = free_port()
    rtu = parse_config({"site": {"enterprise_id": "e"}, "devices": [{
        "id": "r", "protocol": "modbus", "endpoint": f"rtu+tcp://127.0.0.1:{rtu_port}",
        "tags": [{"name": "x", "register": 40001}]}]}).devices[0]
    with pytest.raises(AdapterError, match=rf"cannot connect to 127\.0\.0\.1:{rtu_port}"):
        await create_adapter(rtu, CONTEXT).connect()
