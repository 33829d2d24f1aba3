"""Modbus RTU: over a pseudo-terminal pair made by socat (`serial://`), and RTU frames over TCP (`rtu+tcp://`).

The dead-unit test runs the real engine: two unit ids on one RS-485 line, one of them silent. The live one must
keep its poll rate within 20 % while the dead one is skipped (state `degraded`).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterError
from adapters.modbus.adapter import ModbusAdapter, forget_plans
from collector.config import ModbusDevice, parse_config
from collector.engine import Engine
from collector.model import DeviceState, Quality, Reading
from simulators.modbus import ModbusServerSim
from tests.test_modbus_sim import by_tag, const, expected_value, free_port, typed_tags

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _need_socat() -> None:
    forget_plans()
    if shutil.which("socat") is None:
        pytest.fail("socat is not installed: `apt-get install socat` (.ci/run does it); the RTU tests serve "
                    "Modbus RTU on a pseudo-terminal pair made by socat")


def devices(endpoint: str, specs: list[dict[str, Any]]) -> list[ModbusDevice]:
    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [
        {"protocol": "modbus", "endpoint": endpoint, "timeout": 0.3, "retries": 0, **s} for s in specs]})
    out = [d for d in cfg.devices if isinstance(d, ModbusDevice)]
    assert len(out) == len(specs)
    return out


@pytest.mark.parametrize("scheme", ["serial", "rtu+tcp"])
async def test_rtu_round_trip_every_type_and_byte_order(scheme: str, tmp_path: Path) -> None:
    endpoint = (f"serial://{tmp_path}/ttyRS485?baudrate=19200&parity=N&stopbits=1" if scheme == "serial"
                else f"rtu+tcp://127.0.0.1:{free_port()}")
    tags, where = typed_tags()
    tags.append({"name": "label", "register": 40201, "type": "string", "count": 4, "sim": const("RTU-7")})
    tags.append({"name": "door", "register": 10003, "type": "bool", "sim": const(True)})
    (dev,) = devices(endpoint, [{"id": "plc", "unit_id": 17, "tags": tags}])
    async with ModbusServerSim(endpoint, [dev]):
        adapter = ModbusAdapter(dev)
        await adapter.connect()
        try:
            got = by_tag(await adapter.read())
            stats = adapter.stats()
        finally:
            await adapter.close()
    for name, (type_, _order, _address, value) in where.items():
        assert (got[name].value, got[name].quality) == (expected_value(type_, value), Quality.GOOD), name
    assert got["label"].value == "RTU-7" and got["door"].value is True
    assert stats["requests_per_cycle"] == 4  # 128 holding registers in two requests, the string, the input


async def test_two_units_on_one_line_one_dead_the_live_one_keeps_its_pace(tmp_path: Path) -> None:
    endpoint = f"serial://{tmp_path}/ttyUSB0?baudrate=9600"
    interval, run_s = 0.1, 3.0
    live, dead = devices(endpoint, [
        {"id": "live", "unit_id": 1, "interval": interval,
         "tags": [{"name": "speed", "register": 40001, "sim": const(1450)},
                  {"name": "temp", "register": 30001, "type": "float32", "sim": const(61.5)}]},
        # the dead unit times out (0.25 s) longer than the live one's whole interval
        {"id": "dead", "unit_id": 2, "interval": interval, "timeout": 0.25, "degrade_after": 2,
         "degrade_for": 60, "simulate": {"silent": True},
         "tags": [{"name": "x", "register": 40001, "sim": const(1)}]},
    ])
    polls: dict[str, list[tuple[float, list[Reading]]]] = {"live": [], "dead": []}
    states: dict[str, list[tuple[DeviceState, str | None]]] = {"live": [], "dead": []}
    engine = Engine(lambda d, rs: polls[d].append((time.monotonic(), rs)),
                    lambda d, st, reason: states[d].append((st, reason)))
    async with ModbusServerSim(endpoint, [live, dead]):
        started = time.monotonic()
        engine.start_device(live)
        engine.start_device(dead)
        await asyncio.sleep(run_s)
        await engine.stop()
    assert polls["dead"] == []
    assert [s for s, _ in states["dead"]] == [DeviceState.OFFLINE, DeviceState.DEGRADED]
    assert "2 cycles in a row" in (states["dead"][-1][1] or "")
    assert states["live"] == []  # never offline
    times = [t - started for t, _ in polls["live"]]
    expected = run_s / interval
    assert abs(len(times) - expected) <= 0.2 * expected, (len(times), expected)
    # while the dead unit was still tried, each of its timeouts delayed the live poll by at most one timeout;
    # once it is skipped the live unit polls on its grid
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) <= dead.timeout + interval + 0.1, max(gaps)
    late = sum(1 for t in times if t >= 1.0)
    assert abs(late - (run_s - 1.0) / interval) <= 0.1 * (run_s - 1.0) / interval, late
    last = by_tag(polls["live"][-1][1])
    assert (last["speed"].value, last["temp"].value, last["temp"].quality) == (1450, 61.5, Quality.GOOD)


async def test_a_missing_serial_port_is_a_readable_connect_error(tmp_path: Path) -> None:
    (dev,) = devices(f"serial://{tmp_path}/ttyNOPE?baudrate=9600", [
        {"id": "x", "tags": [{"name": "x", "register": 40001}]}])
    adapter = ModbusAdapter(dev)
    with pytest.raises(AdapterError, match=rf"cannot open serial port {tmp_path}/ttyNOPE: missing"):
        await adapter.connect()
    await adapter.close()


@pytest.mark.parametrize("scheme", ["serial", "rtu+tcp"])
async def test_a_late_answer_after_a_retry_is_never_taken_for_the_next_request(scheme: str, tmp_path: Path) -> None:
    """RTU frames carry no transaction id. A unit answering slower than `timeout` gets its request sent twice
    (retries: 1); the answer to the second try still comes after the first try's answer was taken. It must
    not be taken for the next request: two requests of equal size in two tables with different values."""
    endpoint = (f"serial://{tmp_path}/ttyRS485?baudrate=115200" if scheme == "serial"
                else f"rtu+tcp://127.0.0.1:{free_port()}")
    holding = [{"name": f"h{i}", "register": 40001 + i, "sim": const(100 + i)} for i in range(8)]
    inputs = [{"name": f"i{i}", "register": 30001 + i, "sim": const(200 + i)} for i in range(8)]
    (dev,) = devices(endpoint, [{"id": "slow", "unit_id": 3, "timeout": 0.2, "retries": 1,
                                 "simulate": {"delay": 0.3}, "tags": holding + inputs}])
    async with ModbusServerSim(endpoint, [dev]):
        adapter = ModbusAdapter(dev)
        await adapter.connect()
        try:
            cycles = []
            for _ in range(3):
                try:
                    cycles.append(by_tag(await adapter.read()))
                except AdapterError as exc:  # a cycle may fail; it must never deliver wrong values
                    cycles.append({"error": exc.reason})  # type: ignore[dict-item]
        finally:
            await adapter.close()
    good = [c for c in cycles if "error" not in c]
    assert good, cycles
    for c in good:
        for i in range(8):
            assert (c[f"h{i}"].value, c[f"i{i}"].value) == (100 + i, 200 + i), (i, c[f"h{i}"], c[f"i{i}"])


def test_an_answer_of_another_function_or_size_is_refused() -> None:
    from adapters.modbus.adapter import _mismatch
    from adapters.modbus.planner import ReadRequest
    from adapters.modbus.tcp import Answer

    regs = ReadRequest("holding_register", 0, 4)
    bits = ReadRequest("coil", 0, 10)
    assert _mismatch(regs, Answer(3, (1, 2, 3, 4), (), 0)) is None
    assert _mismatch(regs, Answer(0x83, (), (), 2)) is None  # an exception answer to this request
    assert _mismatch(regs, Answer(4, (1, 2, 3, 4), (), 0)) == "function code 4, expected 3"
    assert _mismatch(regs, Answer(3, (1, 2, 3), (), 0)) == "3 registers for 4"
    assert _mismatch(bits, Answer(1, (), [False] * 16, 0)) is None  # padded to whole bytes
    assert _mismatch(bits, Answer(1, (), [False] * 8, 0)) == "8 bits for 10"


async def test_an_exception_answer_on_rtu_marks_only_its_tags(tmp_path: Path) -> None:
    """Exception answers pass the RTU answer check (function code | 0x80) and split as over TCP."""
    endpoint = f"rtu+tcp://127.0.0.1:{free_port()}"
    tags = [{"name": f"r{i}", "register": 40001 + i, "sim": const(10 + i)} for i in range(6)]
    (dev,) = devices(endpoint, [{"id": "plc", "unit_id": 5, "simulate": {"exception_addresses": [3]},
                                 "tags": tags}])
    async with ModbusServerSim(endpoint, [dev]):
        adapter = ModbusAdapter(dev)
        await adapter.connect()
        try:
            got = by_tag(await adapter.read())
        finally:
            await adapter.close()
    assert got["r3"].quality == Quality.BAD_ILLEGAL_ADDRESS
    assert [(got[f"r{i}"].value, got[f"r{i}"].quality) for i in (0, 1, 2, 4, 5)] == \
        [(10 + i, Quality.GOOD) for i in (0, 1, 2, 4, 5)]


@pytest.mark.parametrize("scheme", ["serial", "rtu+tcp"])
async def test_a_cut_rtu_answer_then_a_good_retry_is_never_spliced(scheme: str, tmp_path: Path) -> None:
    """The TCP splice (tests/test_modbus_faults.py) on the pymodbus RTU path: pymodbus empties its receive
    buffer before every try, and a splice would fail the CRC anyway, so the retry's answer is read whole."""
    endpoint = (f"serial://{tmp_path}/ttyRS485?baudrate=19200" if scheme == "serial"
                else f"rtu+tcp://127.0.0.1:{free_port()}")
    tags = [{"name": f"r{i}", "register": 40001 + i, "sim": const(1000 + i)} for i in range(10)]
    (dev,) = devices(endpoint, [{"id": "plc", "unit_id": 5, "retries": 2, "tags": tags}])
    async with ModbusServerSim(endpoint, [dev]) as sim:
        adapter = ModbusAdapter(dev)
        await adapter.connect()
        try:
            for kept in (3, 12, 24):  # an RTU answer of 10 registers is 25 bytes
                sim.truncate_answers("plc", keep=kept)
                got = await adapter.read()
                assert sim.faults("plc")["truncate_left"] == 0
                assert [(r.value, r.quality) for r in got] == [(1000 + i, Quality.GOOD) for i in range(10)]
        finally:
            await adapter.close()
