"""Write-back to S7 and MC devices against their simulators over real TCP, through the HTTP door the Modbus
and OPC UA write tests use: values land in the simulated PLC's memory, compared with `struct`-encoded bytes
(big-endian for S7, little-endian words, low word first, for MC), not with our codecs; a BOOL write leaves
its neighbour bits alone; refusals send nothing (the simulators' write logs stay empty); a PLC that refuses
the write is `failed`/`device_refused` with its code.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from collector.app import Collector
from collector.config import ConfigError, Settings, parse_config
from collector.http import HttpServer
from simulators.workshop import Workshop
from tests.support.broker import MosquittoProcess, free_port
from tests.test_writes import TOKEN, Site, close_site

ON = {"allowed": True}


def config(state_dir: Path, broker_port: int) -> dict[str, Any]:
    return {
        "site": {"enterprise_id": "t1", "workshop": "w1"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}"},
        "state_dir": str(state_dir),
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "writes": {"enabled": True},
        "devices": [
            {"id": "s7-1", "protocol": "s7", "endpoint": f"s7://127.0.0.1:{free_port()}", "interval": 0.3,
             "timeout": 1.0, "writes": {"enabled": True}, "tags": [
                 {"name": "setpoint", "address": "DB10.DBD0", "type": "REAL", "write": {"allowed": True, "min": 0,
                  "max": 500}, "sim": {"kind": "constant", "value": 100}},
                 {"name": "speed", "address": "DB10.DBW4", "type": "INT", "scale": 0.1, "write": ON,
                  "sim": {"kind": "constant", "value": 5}},
                 {"name": "total", "address": "DB10.DBD6", "type": "DINT", "write": ON},
                 {"name": "ratio", "address": "DB10.DBB10", "type": "LREAL", "write": ON},
                 {"name": "lamp", "address": "DB10.DBX18.3", "write": ON},
                 {"name": "ready", "address": "DB10.DBX18.0", "sim": {"kind": "constant", "value": True}},
                 {"name": "recipe", "address": "DB10.DBB20", "type": "STRING[10]", "write": ON,
                  "sim": {"kind": "constant", "value": "A1"}},
                 {"name": "flag", "address": "M10.1", "write": ON},
                 {"name": "started", "address": "DB10.DBB40", "type": "DTL", "write": ON},
                 {"name": "count", "address": "DB10.DBW52", "type": "INT"},
                 {"name": "notes", "address": "DB10.DBB60", "type": "WSTRING[254]", "write": ON},
                 {"name": "estop", "address": "I0.0"},
             ]},
            {"id": "mc-1", "protocol": "mc", "endpoint": f"mc://127.0.0.1:{free_port()}", "interval": 0.3,
             "timeout": 0.5, "writes": {"enabled": True}, "tags": [
                 {"name": "setpoint", "address": "D100", "type": "REAL", "write": {"allowed": True, "min": 0,
                  "max": 500}, "sim": {"kind": "constant", "value": 100}},
                 {"name": "speed", "address": "D104", "type": "INT", "scale": 0.1, "write": ON,
                  "sim": {"kind": "constant", "value": 5}},
                 {"name": "total", "address": "D106", "type": "DINT", "write": ON},
                 {"name": "ratio", "address": "D110", "type": "LREAL", "write": ON},
                 {"name": "lamp", "address": "D120.3", "write": ON},
                 {"name": "ready", "address": "D120.0", "sim": {"kind": "constant", "value": True}},
                 {"name": "run", "address": "M10", "write": ON},
                 {"name": "door", "address": "M11", "sim": {"kind": "constant", "value": True}},
                 {"name": "recipe", "address": "D130", "type": "STRING[10]", "write": ON},
                 {"name": "count", "address": "D140"},
                 {"name": "estop", "address": "X0"},
             ]},
        ],
    }


@pytest.fixture
async def site(broker: MosquittoProcess, state_dir: Path) -> AsyncIterator[Site]:
    cfg = parse_config(config(state_dir, broker.port))
    workshop = Workshop(cfg)
    await workshop.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    http = HttpServer(collector, token=TOKEN)
    await http.start()
    s = Site(workshop, collector, http, aiohttp.ClientSession())
    try:
        await s.online("s7-1", "mc-1")
        yield s
    finally:
        await close_site(s)


async def ok(site: Site, device: str, tag: str, value: Any) -> dict[str, Any]:
    code, result = await site.write(device, {"tag": tag, "value": value})
    assert (code, result["status"], result["code"]) == (200, "ok", None), result
    return result


async def test_s7_values_land_in_the_db_big_endian_and_read_back(site: Site) -> None:
    sim = site.workshop.by_device["s7-1"]
    db10 = sim.areas[("DB", 10)]
    result = await ok(site, "s7-1", "setpoint", 123.25)
    assert (result["old"], result["readback"], result["readback_quality"]) == (100.0, 123.25, "good")
    assert bytes(db10[0:4]) == struct.pack(">f", 123.25)
    result = await ok(site, "s7-1", "speed", -12.3)
    assert (result["old"], result["readback"]) == (5.0, -12.3)
    assert bytes(db10[4:6]) == struct.pack(">h", -123)  # -12.3 / 0.1, in reverse through the scale
    await ok(site, "s7-1", "total", -100_000)
    assert bytes(db10[6:10]) == struct.pack(">i", -100_000)
    assert (await ok(site, "s7-1", "ratio", 2.718281828459045))["readback"] == 2.718281828459045
    assert bytes(db10[10:18]) == struct.pack(">d", 2.718281828459045)
    result = await ok(site, "s7-1", "recipe", "B-77")
    assert (result["old"], result["readback"]) == ("A1", "B-77")
    assert bytes(db10[20:26]) == bytes([10, 4]) + b"B-77"  # the max-length byte the DB declares stays 10
    await ok(site, "s7-1", "flag", True)
    assert sim.areas[("M", 0)][10] == 0b10
    assert [(w[0], w[2], w[3]) for w in sim.writes] == [
        ("DB", 0, None), ("DB", 4, None), ("DB", 6, None), ("DB", 10, None), ("DB", 21, None), ("M", 10, 1)]

    await asyncio.sleep(0.8)  # the simulator keeps what was written: the machine model no longer overwrites it
    assert bytes(db10[0:4]) == struct.pack(">f", 123.25)
    latest = site.collector.pipeline.latest["s7-1"]
    assert latest["setpoint"].value == 123.25 and latest["recipe"].value == "B-77"


async def test_s7_bool_is_a_bit_write_that_keeps_the_neighbour_bits(site: Site) -> None:
    sim = site.workshop.by_device["s7-1"]
    db10 = sim.areas[("DB", 10)]
    db10[18] |= 0b1000_0000  # the PLC program's bit 7 in the same byte, set behind the collector's back
    assert db10[18] == 0b1000_0001  # and bit 0 is `ready`, set by the machine model
    result = await ok(site, "s7-1", "lamp", True)
    assert (result["old"], result["readback"]) == (False, True)
    assert db10[18] == 0b1000_1001
    assert sim.writes[-1] == ("DB", 10, 18, 3, b"\x01")  # transport size BIT: the bit alone went on the wire
    result = await ok(site, "s7-1", "lamp", False)
    assert (result["old"], result["readback"]) == (True, False) and db10[18] == 0b1000_0001


async def test_s7_refusals_send_nothing_and_a_cpu_refusal_fails(site: Site) -> None:
    sim = site.workshop.by_device["s7-1"]
    cases = [
        ("estop", 1, "not_writable", "该点位不允许写入"),  # an input: no write.allowed (the config refuses one)
        ("count", 1, "not_writable", "该点位不允许写入"),
        ("setpoint", "hot", "type_mismatch", "数值类型不符"),
        ("setpoint", 900, "out_of_range", "数值超出允许范围"),
        ("lamp", 5, "type_mismatch", "数值类型不符"),
        ("speed", 12.34, "type_mismatch", "数值类型不符"),  # not a step of 0.1
        ("speed", 4000, "type_mismatch", "数值类型不符"),  # 40000 raw: outside INT, never clamped
        ("total", 2**31, "type_mismatch", "数值类型不符"),
        ("recipe", "x" * 11, "type_mismatch", "数值类型不符"),  # longer than STRING[10]
        ("started", 1.0, "type_mismatch", "数值类型不符"),  # a DTL is not written
        # 2 + 2 × 250 bytes: more than one request at the simulator's PDU, so never half written
        ("notes", "x" * 250, "type_mismatch", "数值类型不符"),
    ]
    for tag, value, want, zh in cases:
        code, result = await site.write("s7-1", {"tag": tag, "value": value})
        assert (code, result["status"], result["code"]) == (409, "refused", want), (tag, result)
        assert result["reason"].startswith(zh)
    assert sim.writes == []
    assert bytes(sim.areas[("DB", 10)][4:6]) == struct.pack(">h", 50)

    sim.refuse_writes(0x03)  # PUT/GET not permitted, or a write-protected DB
    code, result = await site.write("s7-1", {"tag": "setpoint", "value": 10})
    sim.refuse_writes(None)
    assert (code, result["status"], result["code"]) == (502, "failed", "device_refused")
    assert result["reason"].startswith("设备拒绝写入") and "0x03 access denied" in result["reason"]
    assert bytes(sim.areas[("DB", 10)][0:4]) == struct.pack(">f", 100.0) and sim.writes == []
    assert result["old"] is None  # a failed write reports no outcome
    assert site.collector.status.devices["s7-1"].state == "online"  # a refusal is no connection problem


async def test_mc_values_land_in_the_words_little_endian_and_read_back(site: Site) -> None:
    sim = site.workshop.by_device["mc-1"]
    d = sim.memory.words["D"]

    def words(fmt: str, value: Any) -> list[int]:
        raw = struct.pack("<" + fmt, value)
        return list(struct.unpack(f"<{len(raw) // 2}H", raw))

    result = await ok(site, "mc-1", "setpoint", 123.25)
    assert (result["old"], result["readback"], result["readback_quality"]) == (100.0, 123.25, "good")
    assert list(d[100:102]) == words("f", 123.25)
    result = await ok(site, "mc-1", "speed", -12.3)
    assert (result["old"], result["readback"]) == (5.0, -12.3) and list(d[104:105]) == words("h", -123)
    await ok(site, "mc-1", "total", -100_000)
    assert list(d[106:108]) == words("i", -100_000)
    await ok(site, "mc-1", "ratio", 2.718281828459045)
    assert list(d[110:114]) == words("d", 2.718281828459045)
    assert (await ok(site, "mc-1", "recipe", "B-77"))["readback"] == "B-77"
    assert list(d[130:135]) == words("10s", b"B-77")  # NUL-padded, two characters a word
    assert sim.writes == [(0, "D", 100, 2), (0, "D", 104, 1), (0, "D", 106, 2), (0, "D", 110, 4), (0, "D", 130, 5)]


async def test_mc_bools_keep_the_neighbour_bits(site: Site) -> None:
    sim = site.workshop.by_device["mc-1"]
    d, m = sim.memory.words["D"], sim.memory.bits["M"]
    # a bit of a word: read, that bit changed, written back; the others (bit 0 from the model, bit 9 set
    # by the PLC program behind the collector's back) stay
    d[120] |= 1 << 9
    assert d[120] == 0b10_0000_0001
    result = await ok(site, "mc-1", "lamp", True)
    assert (result["old"], result["readback"]) == (False, True) and d[120] == 0b10_0000_1001
    assert sim.writes[-1] == (0, "D", 120, 1)
    await ok(site, "mc-1", "lamp", False)
    assert d[120] == 0b10_0000_0001
    # a point of a bit device: bit units, that point alone
    m[12] = 1
    result = await ok(site, "mc-1", "run", True)
    assert (result["old"], result["readback"]) == (False, True)
    assert list(m[10:13]) == [1, 1, 1] and sim.writes[-1] == (1, "M", 10, 1)
    await ok(site, "mc-1", "run", False)
    assert list(m[10:13]) == [0, 1, 1]


async def test_mc_refusals_send_nothing_and_a_plc_refusal_fails(site: Site) -> None:
    sim = site.workshop.by_device["mc-1"]
    for tag, value, want in [("estop", True, "not_writable"), ("count", 1, "not_writable"),
                             ("setpoint", "hot", "type_mismatch"), ("setpoint", -1, "out_of_range"),
                             ("run", 2, "type_mismatch"), ("speed", 0.05, "type_mismatch"),
                             ("total", 2**31, "type_mismatch"), ("recipe", "x" * 11, "type_mismatch")]:
        code, result = await site.write("mc-1", {"tag": tag, "value": value})
        assert (code, result["status"], result["code"]) == (409, "refused", want), (tag, result)
    assert sim.writes == []

    sim.refuse_writes(0x0055)  # a CPU in RUN with online change disabled
    code, result = await site.write("mc-1", {"tag": "setpoint", "value": 10})
    sim.refuse_writes(0)
    assert (code, result["status"], result["code"]) == (502, "failed", "device_refused")
    assert "end code 0x0055" in result["reason"] and "online change" in result["reason"]
    assert sim.writes == [] and sim.memory.words["D"][100:102].tobytes() == struct.pack("<f", 100.0)
    assert site.collector.status.devices["mc-1"].state == "online"
    assert (await ok(site, "mc-1", "setpoint", 10))["readback"] == 10.0


@pytest.mark.parametrize(("device", "address"), [
    ({"protocol": "s7", "endpoint": "s7://127.0.0.1"}, "I0.0"),
    ({"protocol": "s7", "endpoint": "s7://127.0.0.1"}, "EW2"),
    ({"protocol": "mc", "endpoint": "mc://127.0.0.1:5000"}, "X1F"),
])
def test_write_allowed_on_an_input_is_a_config_error(device: dict[str, Any], address: str) -> None:
    data = {"site": {"enterprise_id": "e"}, "devices": [
        {"id": "d", **device, "tags": [{"name": "t", "address": address, "write": {"allowed": True}}]}]}
    with pytest.raises(ConfigError, match="read-only"):
        parse_config(data)
    del data["devices"][0]["tags"][0]["write"]
    parse_config(data)  # readable, of course
