"""The S7 simulator over real TCP: `sim:` specs drive the DB contents, its SZL says simulator, a removed DB
answers 0x0A, and the workshop takes it off the network and back."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest
import snap7

from adapters.s7.adapter import S7Adapter
from adapters.s7.config import S7Device
from collector.config import parse_config
from collector.indicators.identity import simulator_reason
from collector.model import Quality
from simulators.s7 import S7MachineSim
from simulators.workshop import Workshop
from tests.support.broker import free_port

pytestmark = pytest.mark.integration


def config(port: int) -> dict[str, object]:
    return {"site": {"enterprise_id": "e"}, "devices": [{
        "id": "pack-01", "protocol": "s7", "endpoint": f"s7://127.0.0.1:{port}", "interval": 0.05,
        "simulate": {"update_interval": 0.05, "initial": "running", "states": {"running": 1.0}},
        "tags": [
            {"name": "state", "address": "DB10.DBW0", "type": "INT", "sim": {"kind": "state"}},
            {"name": "speed", "address": "DB10.DBD2", "type": "REAL", "sim": {"kind": "constant", "value": 57.5}},
            {"name": "count", "address": "DB10.DBD6", "type": "DINT", "sim": {"kind": "counter", "rate": 100}},
            {"name": "recipe", "address": "DB10.DBB10", "type": "STRING[8]",
             "sim": {"kind": "constant", "value": "A-500g"}},
            {"name": "running", "address": "M10.0", "sim": {"kind": "running"}},
            {"name": "fault", "address": "M10.1", "sim": {"kind": "alarm"}},
            {"name": "other_db", "address": "DB20.DBW0", "sim": {"kind": "constant", "value": 7}},
            {"name": "temp", "address": "DB10.DBW30", "type": "INT", "scale": 0.1, "unit": "°C",
             "sim": {"kind": "constant", "value": 61.5}},
        ]}]}


def device(port: int) -> S7Device:
    dev = parse_config(config(port)).devices[0]
    assert isinstance(dev, S7Device)
    return dev


async def test_sim_specs_fill_the_db_as_an_independent_client_reads_it() -> None:
    port = free_port()
    sim = S7MachineSim(device(port))
    await sim.start()
    client = snap7.AsyncClient()  # the library's own typed reads, not our decoder
    try:
        await client.connect("127.0.0.1", 0, 1, port)
        raw = await client.db_read(10, 0, 20)
        assert struct.unpack_from(">h", raw, 0)[0] == 1  # running
        assert struct.unpack_from(">f", raw, 2)[0] == 57.5
        first = struct.unpack_from(">i", raw, 6)[0]
        assert raw[10:12] == bytes([8, 6]) and raw[12:18] == b"A-500g"
        assert struct.unpack_from(">h", await client.db_read(10, 30, 2), 0)[0] == 615  # what the PLC holds
        flags = await client.mb_read(10, 1)
        assert flags[0] & 0b11 == 0b01  # running, no fault
        await asyncio.sleep(0.3)
        later = struct.unpack_from(">i", await client.db_read(10, 6, 4), 0)[0]
        assert later > first  # the counter rises while running
        sim.model.force_state("alarm")
        await asyncio.sleep(0.2)
        assert (await client.mb_read(10, 1))[0] & 0b11 == 0b10
        assert struct.unpack_from(">h", await client.db_read(10, 0, 2), 0)[0] == 2
    finally:
        await client.disconnect()
        await sim.stop()


async def test_identity_says_simulator_and_a_removed_db_marks_only_its_tags() -> None:
    port = free_port()
    sim = S7MachineSim(device(port))
    await sim.start()
    adapter = S7Adapter(sim.device)
    try:
        await adapter.connect()
        identity = await adapter.identify()
        assert identity["order_number"] == "SIMULATOR" and identity["serial_number"] == "SIM-pack-01"
        assert identity["module_type"] == "shopfloor-collector simulator"
        assert simulator_reason(identity) is not None
        sim.remove_db(20)
        readings = {r.tag: r for r in await adapter.read()}
        assert (readings["other_db"].value, readings["other_db"].quality) == (None, Quality.BAD_ILLEGAL_ADDRESS)
        assert all(r.good for n, r in readings.items() if n != "other_db")
        assert readings["speed"].value == 57.5 and readings["recipe"].value == "A-500g"
        assert readings["temp"].value == pytest.approx(61.5)
    finally:
        await adapter.close()
        await sim.stop()


async def test_workshop_serves_s7_and_takes_it_off_the_network_and_back() -> None:
    port = free_port()
    workshop = Workshop(parse_config(config(port)))
    await workshop.start()
    adapter = S7Adapter(device(port))
    try:
        await adapter.connect()
        assert {r.tag: r.value for r in await adapter.read()}["speed"] == 57.5
        await workshop.stop_device("pack-01")
        await adapter.close()
        with pytest.raises(Exception, match="cannot connect"):
            await adapter.connect()
        await workshop.start_device("pack-01")
        deadline = time.monotonic() + 5
        while True:
            try:
                await adapter.connect()
                break
            except Exception:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert {r.tag: r.value for r in await adapter.read()}["speed"] == 57.5
    finally:
        await adapter.close()
        await workshop.stop()


async def test_a_write_to_an_area_the_cpu_does_not_hold_is_refused_not_a_crash() -> None:
    """python-snap7's own client writes a counter (CT) area: the simulator answers 0x0A (object does not exist)
    as a CPU does, and goes on serving."""
    port = free_port()
    sim = S7MachineSim(device(port))
    await sim.start()
    client = snap7.AsyncClient()
    try:
        await client.connect("127.0.0.1", 0, 1, port)
        with pytest.raises(Exception) as err:
            await client.write_area(snap7.Area.CT, 0, 0, bytearray(b"\x00\x01"))
        assert "not exist" in str(err.value).lower() or "0x0a" in str(err.value).lower(), err.value
        assert sim.writes == []
        assert struct.unpack_from(">f", await client.db_read(10, 2, 4), 0)[0] == 57.5  # still serving
    finally:
        await client.disconnect()
        await sim.stop()
