"""Faults over real TCP: illegal addresses inside coalesced ranges, silent units, dropped connections, and the
shared connection of several unit ids behind one gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.base import AdapterContext, AdapterError, DeviceSkipped
from adapters.modbus.adapter import ModbusAdapter, ModbusState
from collector.model import Quality
from simulators.modbus import ModbusServerSim
from tests.adapters.modbus.test_modbus_sim import build_device, by_tag, const, free_port

pytestmark = pytest.mark.integration

CONTEXT = AdapterContext()

@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    """What one test's adapters share, like one collector's (its plans, lines and timeout streaks)."""
    global CONTEXT
    CONTEXT = AdapterContext()
    yield


def spans(adapter: ModbusAdapter) -> list[tuple[int, int]]:
    return [(r.start, r.count) for r in adapter.plan]


def twenty_tags() -> list[dict[str, Any]]:
    """t0..t19 at holding registers 0, 2, .., 38 (value 100 + i), and one far tag in a request of its own."""
    tags = [{"name": f"t{i}", "table": "holding_register", "address": 2 * i, "sim": const(100 + i)}
            for i in range(20)]
    tags.append({"name": "far", "table": "holding_register", "address": 500, "sim": const(7)})
    return tags


async def test_one_illegal_address_costs_only_its_own_tag_and_the_split_is_remembered() -> None:
    port = free_port()
    dev = build_device(port, twenty_tags(), simulate={"exception_addresses": [14], "exception_code": 2})
    async with ModbusServerSim(dev.endpoint, [dev]):
        adapter = ModbusAdapter(dev, CONTEXT)
        assert spans(adapter) == [(0, 39), (500, 1)]
        await adapter.connect()
        try:
            got = by_tag(await adapter.read())
            first = adapter.stats()
            # only t7 (address 14) is bad; every neighbour in the coalesced range keeps its value
            assert (got["t7"].value, got["t7"].quality) == (None, Quality.BAD_ILLEGAL_ADDRESS)
            assert {n: r.value for n, r in got.items() if n != "t7"} == \
                {**{f"t{i}": 100 + i for i in range(20) if i != 7}, "far": 7}
            assert all(r.quality == Quality.GOOD for n, r in got.items() if n != "t7")
            assert first["splits"] == 1
            # the split is the plan now: the part before, the bad address alone, the part after
            assert spans(adapter) == [(0, 13), (14, 1), (16, 23), (500, 1)]

            # next cycle: the two good parts and the far tag; the known-illegal address is not asked again
            got = by_tag(await adapter.read())
            second = adapter.stats()
            assert second["requests"] - first["requests"] == 3
            assert second["illegal_skipped"] == 1 and second["exception_responses"] == first["exception_responses"]
            assert got["t7"].quality == Quality.BAD_ILLEGAL_ADDRESS and got["t8"].value == 108
        finally:
            await adapter.close()

        # a new adapter for the same device (the engine builds one per reconnect) starts from the split
        again = ModbusAdapter(dev, CONTEXT)
        assert spans(again) == [(0, 13), (14, 1), (16, 23), (500, 1)]
        await again.connect()
        try:
            got = by_tag(await again.read())
            assert again.stats()["requests"] == 3 and again.stats()["splits"] == 0
            assert sum(r.quality == Quality.GOOD for r in got.values()) == 20
        finally:
            await again.close()


async def test_illegal_address_in_a_hole_splits_the_range_and_loses_no_tag() -> None:
    port = free_port()
    dev = build_device(port, twenty_tags(), simulate={"exception_addresses": [15]})  # between t7 and t8
    async with ModbusServerSim(dev.endpoint, [dev]):
        adapter = ModbusAdapter(dev, CONTEXT)
        await adapter.connect()
        try:
            got = by_tag(await adapter.read())
            assert all(r.quality == Quality.GOOD for r in got.values())
            assert got["t7"].value == 107 and got["t8"].value == 108
            assert spans(adapter) == [(0, 15), (16, 23), (500, 1)]
            before = adapter.stats()["requests"]
            await adapter.read()
            assert adapter.stats()["requests"] - before == 3
        finally:
            await adapter.close()


async def test_several_illegal_addresses_and_a_recheck_after_the_device_is_fixed() -> None:
    port = free_port()
    dev = build_device(port, twenty_tags(), simulate={"exception_addresses": [0, 20, 38]})
    async with ModbusServerSim(dev.endpoint, [dev]) as sim:
        adapter = ModbusAdapter(dev, CONTEXT)
        await adapter.connect()
        try:
            got = by_tag(await adapter.read())
            bad = sorted(n for n, r in got.items() if r.quality == Quality.BAD_ILLEGAL_ADDRESS)
            assert bad == ["t0", "t10", "t19"]
            assert sum(r.quality == Quality.GOOD for r in got.values()) == 18
            assert spans(adapter) == [(0, 1), (2, 17), (20, 1), (22, 15), (38, 1), (500, 1)]
            # the device gets fixed; the illegal requests are asked again once their recheck time is due
            sim.set_exceptions("m1", [])
            assert by_tag(await adapter.read())["t0"].quality == Quality.BAD_ILLEGAL_ADDRESS  # not due yet
            adapter._memory.illegal = dict.fromkeys(adapter._memory.illegal, 0.0)  # due now
            got = by_tag(await adapter.read())
            assert all(r.quality == Quality.GOOD for r in got.values())
            assert (got["t0"].value, got["t10"].value, got["t19"].value) == (100, 110, 119)
        finally:
            await adapter.close()


async def test_exception_04_is_not_split_and_control_api_switches_faults() -> None:
    port = free_port()
    dev = build_device(port, twenty_tags())
    async with ModbusServerSim(dev.endpoint, [dev]) as sim:
        adapter = ModbusAdapter(dev, CONTEXT)
        await adapter.connect()
        try:
            sim.set_exceptions("m1", [14], code=4)
            assert sim.faults("m1") == {"silent": False, "delay": 0.0, "exception_addresses": [14],
                                        "exception_code": 4, "truncate_to": 0, "truncate_left": 0}
            got = by_tag(await adapter.read())
            assert [n for n, r in got.items() if r.quality == Quality.BAD_DEVICE_EXCEPTION] == \
                [f"t{i}" for i in range(20)]
            assert got["far"].quality == Quality.GOOD and adapter.stats()["splits"] == 0
            assert spans(adapter) == [(0, 39), (500, 1)]
            sim.set_exceptions("m1", [])
            assert all(r.quality == Quality.GOOD for r in await adapter.read())
        finally:
            await adapter.close()


async def test_silent_unit_is_degraded_after_n_cycles_and_recovers() -> None:
    port = free_port()
    dev = build_device(port, [{"name": "x", "register": 40001, "sim": const(5)}], timeout=0.1,
                       degrade_after=3, degrade_for=5)
    async with ModbusServerSim(dev.endpoint, [dev]) as sim:
        adapter = ModbusAdapter(dev, CONTEXT)
        await adapter.connect()
        try:
            sim.set_silent("m1")
            for _ in range(2):
                with pytest.raises(AdapterError, match="no answer") as info:
                    await adapter.read()
                assert not isinstance(info.value, DeviceSkipped)
            with pytest.raises(DeviceSkipped, match="3 cycles in a row"):
                await adapter.read()
            # after the skip the unit is probed once: still silent means skipped again right away
            await adapter.close()
            await adapter.connect()
            with pytest.raises(DeviceSkipped):
                await adapter.read()
            sim.set_silent("m1", False)
            assert [r.value for r in await adapter.read()] == [5]
            sim.set_silent("m1")
            with pytest.raises(AdapterError) as info:  # an answer reset the streak
                await adapter.read()
            assert not isinstance(info.value, DeviceSkipped)
        finally:
            await adapter.close()


async def test_late_answers_time_out_without_confusing_the_next_request() -> None:
    port = free_port()
    dev = build_device(port, [{"name": "x", "register": 40001, "sim": const(5)},
                              {"name": "y", "register": 40201, "sim": const(6)}], timeout=0.15)
    async with ModbusServerSim(dev.endpoint, [dev]) as sim:
        adapter = ModbusAdapter(dev, CONTEXT)
        await adapter.connect()
        try:
            sim.set_delay("m1", 0.3)
            with pytest.raises(AdapterError, match="no answer"):
                await adapter.read()
            sim.set_delay("m1", 0)
            await asyncio.sleep(0.4)  # the late answer arrives and is dropped (transaction id)
            assert [r.value for r in await adapter.read()] == [5, 6]
        finally:
            await adapter.close()


async def test_unit_ids_behind_one_gateway_share_one_connection() -> None:
    port = free_port()
    devs = [build_device(port, [{"name": "x", "register": 40001, "sim": const(10 * u)},
                                {"name": "y", "register": 40101, "type": "float32", "sim": const(u + 0.5)}],
                         id=f"u{u}", unit_id=u, timeout=0.2) for u in (1, 2, 3)]
    async with ModbusServerSim(devs[0].endpoint, devs) as sim:
        adapters = [ModbusAdapter(d, CONTEXT) for d in devs]
        for a in adapters:
            await a.connect()
        try:
            assert sim._server is not None and len(sim._server.active_connections) == 1
            assert len({id(a.line) for a in adapters}) == 1 and adapters[0].stats()["line_shared_by"] == 3
            # polled concurrently by their tasks, served one after another on the one connection
            results = await asyncio.gather(*(a.read() for a in adapters))
            assert [[r.value for r in rs] for rs in results] == [[10, 1.5], [20, 2.5], [30, 3.5]]
            # a silent unit costs only itself
            sim.set_silent("u2")
            results2 = await asyncio.gather(*(a.read() for a in adapters), return_exceptions=True)
            assert isinstance(results2[1], AdapterError)
            assert [r.value for r in results2[0]] == [10, 1.5]  # type: ignore[union-attr]
            assert [r.value for r in results2[2]] == [30, 3.5]  # type: ignore[union-attr]
            assert len(sim._server.active_connections) == 1  # the timeout did not close the shared connection
            sim.set_silent("u2", False)
            # the device drops the connection: the unit that sees it reports it and reconnects the line, its
            # neighbours carry on over the new connection
            assert sim.drop_connections() == 1
            await asyncio.sleep(0.05)
            with pytest.raises(AdapterError):
                await adapters[0].read()
            await adapters[0].connect()
            assert [[r.value for r in await a.read()] for a in adapters] == [[10, 1.5], [20, 2.5], [30, 3.5]]
            assert adapters[1].line is not None and adapters[1].line.connects == 2
            assert len(sim._server.active_connections) == 1
        finally:
            for a in adapters:
                await a.close()
        lines = CONTEXT.state("modbus", ModbusState).lines.open_lines()
        assert not any(line.key[2] == port for line in lines.values())  # the last one closed it


async def test_inter_request_delay_and_pause_after_connect() -> None:
    port = free_port()
    tags = [{"name": f"t{i}", "register": 40001 + 200 * i, "sim": const(i)} for i in range(3)]
    dev = build_device(port, tags, inter_request_delay=0.05, pause_after_connect=0.1)
    async with ModbusServerSim(dev.endpoint, [dev]):
        adapter = ModbusAdapter(dev, CONTEXT)
        started = time.perf_counter()
        await adapter.connect()
        assert time.perf_counter() - started >= 0.1
        try:
            started = time.perf_counter()
            assert [r.value for r in await adapter.read()] == [0, 1, 2]
            assert time.perf_counter() - started >= 0.1  # two gaps of 50 ms between three requests
        finally:
            await adapter.close()


def ten_registers() -> list[dict[str, Any]]:
    """r0..r9 at holding registers 0..9 holding 1000..1009: the field trial's map (one request)."""
    return [{"name": f"r{i}", "register": 40001 + i, "sim": const(1000 + i)} for i in range(10)]


@pytest.mark.parametrize("kept", [5, 15, 28])
async def test_a_cut_answer_then_a_good_retry_never_publishes_a_wrong_value(kept: int) -> None:
    """The simulator cuts one answer after `kept` bytes and answers the retry in full. The client used to
    splice the two and publish 8 of 10 registers wrong with quality good; now the request fails (the stream
    cannot be realigned), the line reconnects and the next cycle reads the right values."""
    port = free_port()
    dev = build_device(port, ten_registers(), timeout=0.2, retries=2)
    async with ModbusServerSim(dev.endpoint, [dev]) as sim:
        adapter = ModbusAdapter(dev, CONTEXT)
        await adapter.connect()
        try:
            sim.truncate_answers("m1", keep=kept)
            assert sim.faults("m1")["truncate_left"] == 1
            with pytest.raises(AdapterError, match=f"request failed: .*truncated answer .*: {kept} bytes"):
                await adapter.read()
            assert sim.faults("m1")["truncate_left"] == 0
            assert not adapter.line.connected
            await adapter.connect()
            got = await adapter.read()
            assert [(r.value, r.quality) for r in got] == [(1000 + i, Quality.GOOD) for i in range(10)]
        finally:
            await adapter.close()


async def test_a_wide_unreadable_hole_read_over_on_tcp_is_split_once() -> None:
    """On Modbus TCP the cost model reads over a 60-register hole (one request, not two); a device whose hole
    is not readable answers 02 for it: the range is split once, no tag is lost, and the parts are the plan."""
    port = free_port()
    tags = [{"name": f"a{i}", "table": "holding_register", "address": i, "sim": const(i)} for i in range(20)]
    tags += [{"name": f"b{i}", "table": "holding_register", "address": 80 + i, "sim": const(80 + i)}
             for i in range(20)]
    dev = build_device(port, tags, simulate={"exception_addresses": list(range(20, 80))})
    async with ModbusServerSim(dev.endpoint, [dev]):
        adapter = ModbusAdapter(dev, CONTEXT)
        assert spans(adapter) == [(0, 100)]
        await adapter.connect()
        try:
            got = by_tag(await adapter.read())
            assert {n: (r.value, r.quality) for n, r in got.items()} == \
                {t["name"]: (t["address"], Quality.GOOD) for t in tags}
            assert adapter.stats()["splits"] == 1
            assert spans(adapter) == [(0, 20), (80, 20)]
            before = adapter.stats()["requests"]
            await adapter.read()
            assert adapter.stats()["requests"] - before == 2
        finally:
            await adapter.close()
