"""The S7 adapter over real TCP against python-snap7's own server, whose memory the test fills with `struct`
(an encoder that is not the adapter's): every address form and type, refused items, a server restart."""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from snap7.server import Server
from snap7.type import SrvArea

from adapters.base import AdapterError
from adapters.s7.adapter import S7Adapter
from adapters.s7.config import S7Device
from collector.config import parse_config
from collector.engine import Engine
from collector.model import DeviceState, Quality, Reading
from tests.support.broker import free_port

pytestmark = pytest.mark.integration

UTC = dt.UTC


def bcd(n: int) -> int:
    return (n // 10) << 4 | n % 10


def memory() -> dict[tuple[SrvArea, int], bytearray]:
    """The CPU's memory, written byte by byte as S7 stores it (big-endian, STRING/WSTRING headers, BCD)."""
    db10 = bytearray(80)
    db10[0] = 0b0000_1000  # DBX0.3
    db10[1] = 200
    struct.pack_into(">H", db10, 2, 60000)
    struct.pack_into(">h", db10, 4, -1234)
    struct.pack_into(">I", db10, 6, 4_000_000_000)
    struct.pack_into(">i", db10, 10, -100_000)
    struct.pack_into(">f", db10, 14, 3.25)
    struct.pack_into(">d", db10, 18, 2.718281828459045)
    db10[26:38] = bytes([10, 5]) + b"hello" + bytes(5)  # STRING[10]
    db10[38:58] = struct.pack(">HH", 8, 2) + "温度".encode("utf-16-be") + bytes(12)  # WSTRING[8]
    # DATE_AND_TIME 2024-05-06 07:08:09.123, Monday (weekday 2)
    db10[58:66] = bytes([bcd(24), bcd(5), bcd(6), bcd(7), bcd(8), bcd(9), bcd(12), 3 << 4 | 2])
    db10[66:78] = struct.pack(">HBBBBBBI", 2024, 5, 6, 2, 7, 8, 9, 123_456_000)  # DTL
    struct.pack_into(">h", db10, 78, -7)
    db11 = bytearray(32)
    struct.pack_into(">b", db11, 0, -5)  # SINT
    struct.pack_into(">H", db11, 2, 65535)  # UINT
    struct.pack_into(">I", db11, 4, 123456)  # UDINT
    db11[1] = ord("Z")  # CHAR
    struct.pack_into(">q", db11, 8, -(2**40))  # LINT
    struct.pack_into(">Q", db11, 16, 2**63 + 5)  # ULINT
    struct.pack_into(">Q", db11, 24, 0x0102030405060708)  # LWORD
    mk = bytearray(29)
    mk[10] = 0b10
    mk[11] = 7
    struct.pack_into(">h", mk, 20, -2)
    struct.pack_into(">f", mk, 24, 1.5)
    mk[28] = 250  # USINT
    pe = bytearray(6)
    pe[0] = 0b11  # I0.0 and E0.1
    struct.pack_into(">H", pe, 2, 500)
    pe[4] = 0x5A
    pa = bytearray(8)
    pa[0] = 0b010  # Q0.1 on, A0.2 off
    struct.pack_into(">h", pa, 2, -3)
    struct.pack_into(">I", pa, 4, 0xDEADBEEF)
    v = bytearray(108)  # S7-200 SMART V memory = DB1
    v[100] = 1
    v[101] = 9
    struct.pack_into(">H", v, 102, 1000)
    struct.pack_into(">f", v, 104, 0.5)
    db12 = bytearray(10)
    struct.pack_into(">H", db12, 0, 42)
    return {(SrvArea.DB, 10): db10, (SrvArea.DB, 11): db11, (SrvArea.MK, 0): mk, (SrvArea.PE, 0): pe,
            (SrvArea.PA, 0): pa, (SrvArea.DB, 1): v, (SrvArea.DB, 12): db12}


EXPECTED: list[tuple[str, str, str | None, Any]] = [
    ("x", "DB10.DBX0.3", None, True),
    ("x_off", "DB10.DBX0.2", None, False),
    ("b", "DB10.DBB1", None, 200),
    ("w", "DB10.DBW2", None, 60000),
    ("i", "DB10.DBW4", "INT", -1234),
    ("d", "DB10.DBD6", None, 4_000_000_000),
    ("di", "DB10.DBD10", "DINT", -100_000),
    ("r", "DB10.DBD14", "REAL", 3.25),
    ("lr", "DB10.DBB18", "LREAL", 2.718281828459045),
    ("s", "DB10.DBB26", "STRING[10]", "hello"),
    ("ws", "DB10.DBB38", "WSTRING[8]", "温度"),
    ("dt", "DB10.DBB58", "DATE_AND_TIME", dt.datetime(2024, 5, 6, 7, 8, 9, 123000, UTC).timestamp()),
    ("dtl", "DB10.DBB66", "DTL", dt.datetime(2024, 5, 6, 7, 8, 9, 123456, UTC).timestamp()),
    ("pct", "%db10.dbw78", "int", -7),
    ("si", "DB11.DBB0", "SINT", -5),
    ("ch", "DB11.DBB1", "CHAR", "Z"),
    ("ui", "DB11.DBW2", "UINT", 65535),
    ("ud", "DB11.DBD4", "UDINT", 123456),
    ("li", "DB11.DBB8", "LINT", -(2**40)),
    ("uli", "DB11.DBB16", "ULINT", 2**63 + 5),
    ("lw", "DB11.DBB24", "LWORD", 0x0102030405060708),
    ("m", "M10.1", None, True),
    ("mb", "MB11", None, 7),
    ("mw", "MW20", "INT", -2),
    ("md", "MD24", "REAL", 1.5),
    ("mu", "MB28", "USINT", 250),
    ("i0", "I0.0", None, True),
    ("e1", "E0.1", None, True),
    ("iw", "IW2", None, 500),
    ("eb", "EB4", None, 0x5A),
    ("q1", "Q0.1", None, True),
    ("a2", "A0.2", None, False),
    ("qw", "QW2", "INT", -3),
    ("ad", "AD4", None, 0xDEADBEEF),
    ("v0", "V100.0", None, True),
    ("vb", "VB101", None, 9),
    ("vw", "VW102", None, 1000),
    ("vd", "VD104", "REAL", 0.5),
]


def s7_device(port: int, tags: list[dict[str, Any]], **extra: Any) -> S7Device:
    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [
        {"id": "plc1", "protocol": "s7", "endpoint": f"s7://127.0.0.1:{port}?rack=0&slot=1", "interval": 0.05,
         "timeout": 1.0, "tags": tags, **extra}]})
    device = cfg.devices[0]
    assert isinstance(device, S7Device)
    return device


def expected_tags() -> list[dict[str, Any]]:
    return [{"name": n, "address": a, **({"type": t} if t else {})} for n, a, t, _ in EXPECTED]


def start_server(port: int, areas: dict[tuple[SrvArea, int], bytearray]) -> Server:
    server = Server(log=False)
    server.host = "127.0.0.1"
    for (area, index), buf in areas.items():
        server.register_area(area, index, buf)
    server.start(tcp_port=port)
    return server


@pytest.fixture
async def plc() -> AsyncIterator[tuple[int, Server]]:
    port = free_port()
    server = start_server(port, memory())
    yield port, server
    await asyncio.to_thread(server.stop)


def by_name(readings: list[Reading]) -> dict[str, Reading]:
    return {r.tag: r for r in readings}


async def test_every_address_form_and_type_decodes(plc: tuple[int, Server]) -> None:
    port, _ = plc
    adapter = S7Adapter(s7_device(port, expected_tags()))
    await adapter.connect()
    try:
        readings = await adapter.read()
    finally:
        await adapter.close()
    assert [r.tag for r in readings] == [n for n, *_ in EXPECTED]
    got = {r.tag: (r.value, r.quality) for r in readings}
    assert got == {n: (v, Quality.GOOD) for n, _, _, v in EXPECTED}
    # coalesced: 7 areas/DBs, a handful of blocks, all in one request of the 480-byte PDU
    assert adapter.stats()["pdu"] == 480
    assert adapter.stats()["requests_per_cycle"] == 1
    assert adapter.stats()["requests"] == 1


async def test_missing_db_and_short_db_mark_only_their_tags(plc: tuple[int, Server]) -> None:
    port, _ = plc
    tags = [*expected_tags(),
            {"name": "gone", "address": "DB99.DBW0"},  # no DB99: 0x0A
            {"name": "past", "address": "DB10.DBW500"},  # DB10 has 80 bytes: 0x05
            {"name": "db12_ok", "address": "DB12.DBW0"},  # coalesced with the next one, which is past the end
            {"name": "db12_past", "address": "DB12.DBW20"}]
    adapter = S7Adapter(s7_device(port, tags))
    await adapter.connect()
    try:
        first = by_name(await adapter.read())
        second = by_name(await adapter.read())
    finally:
        await adapter.close()
    for readings in (first, second):
        assert (readings["gone"].value, readings["gone"].quality) == (None, Quality.BAD_ILLEGAL_ADDRESS)
        assert (readings["past"].value, readings["past"].quality) == (None, Quality.BAD_ILLEGAL_ADDRESS)
        assert (readings["db12_past"].value, readings["db12_past"].quality) == (None, Quality.BAD_ILLEGAL_ADDRESS)
        assert (readings["db12_ok"].value, readings["db12_ok"].quality) == (42, Quality.GOOD)
        for n, _, _, v in EXPECTED:
            assert (readings[n].value, readings[n].quality) == (v, Quality.GOOD), n
    refused = adapter.stats()["refused"]
    assert "DB99 bytes 0..1" in refused and "no such DB" in refused["DB99 bytes 0..1"]
    assert "Optimized block access" in refused["DB10 bytes 500..501"]


class DenyingServer(Server):  # type: ignore[misc]
    """A CPU with PUT/GET not permitted for some DBs: their items answer 0x03 (access denied)."""

    denied: set[int] = set()

    def _read_from_memory_area(self, area: Any, db_number: int, start: int, count: int) -> tuple[int, bytearray]:
        if db_number in self.denied:
            return 0x03, bytearray()
        result: tuple[int, bytearray] = super()._read_from_memory_area(area, db_number, start, count)
        return result


async def test_access_denied_marks_its_tags_and_says_enable_put_get() -> None:
    port = free_port()
    server = DenyingServer(log=False)
    server.denied = {11}
    server.host = "127.0.0.1"
    for (area, index), buf in memory().items():
        server.register_area(area, index, buf)
    server.start(tcp_port=port)
    adapter = S7Adapter(s7_device(port, expected_tags()))
    try:
        await adapter.connect()
        readings = by_name(await adapter.read())
    finally:
        await adapter.close()
        await asyncio.to_thread(server.stop)
    for n, address, _, v in EXPECTED:
        if address.startswith("DB11."):
            assert (readings[n].value, readings[n].quality) == (None, Quality.BAD_DEVICE_EXCEPTION), n
        else:
            assert (readings[n].value, readings[n].quality) == (v, Quality.GOOD), n
    (reason,) = adapter.stats()["refused"].values()
    assert "PUT/GET" in reason and "Protection & Security" in reason


async def test_server_stop_raises_then_reconnect_reads_again(plc: tuple[int, Server]) -> None:
    port, server = plc
    adapter = S7Adapter(s7_device(port, [{"name": "vw", "address": "VW102"}]))
    try:
        await adapter.connect()
        assert [r.value for r in await adapter.read()] == [1000]
        await asyncio.to_thread(server.stop)
        with pytest.raises(AdapterError):
            for _ in range(3):  # the server may answer a request already on its way
                await adapter.read()
        with pytest.raises(AdapterError, match="cannot connect"):
            await adapter.connect()
        again = start_server(port, memory())
        try:
            await adapter.connect()
            assert [(r.value, r.quality) for r in await adapter.read()] == [(1000, Quality.GOOD)]
            assert adapter.stats()["connects"] == 2
        finally:
            await adapter.close()
            await asyncio.to_thread(again.stop)
    finally:
        await adapter.close()


async def test_engine_recovers_after_a_plc_power_cycle() -> None:
    """Status, backoff and reconnect as for Modbus: offline with the reason, then data again, no restart."""
    port = free_port()
    areas = memory()
    server = start_server(port, areas)
    readings: list[Reading] = []
    states: list[tuple[DeviceState, str | None]] = []
    engine = Engine(lambda dev, r: readings.extend(r), lambda dev, st, why: states.append((st, why)))
    device = s7_device(port, [{"name": "vw", "address": "VW102"}])
    engine.start_device(device)

    async def until(cond: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, (states, readings[-3:])
            await asyncio.sleep(0.02)

    try:
        await until(lambda: any(r.good for r in readings))
        await asyncio.to_thread(server.stop)
        await until(lambda: any(st == DeviceState.OFFLINE for st, _ in states))
        reason = next(why for st, why in states if st == DeviceState.OFFLINE)
        assert reason
        struct.pack_into(">H", areas[(SrvArea.DB, 1)], 102, 2024)  # the PLC comes back with a new value
        server = start_server(port, areas)
        await until(lambda: any(r.good and r.value == 2024 for r in readings))
    finally:
        await engine.stop()
        await asyncio.to_thread(server.stop)


async def test_pdu_packing_of_a_large_contiguous_db(plc: tuple[int, Server]) -> None:
    """A 2 kB DB of REALs: items of at most PDU - 18 bytes, requests within the PDU, values all right."""
    port = free_port()
    db = bytearray(2000)
    for k in range(500):
        struct.pack_into(">f", db, 4 * k, k + 0.5)
    server = start_server(port, {(SrvArea.DB, 20): db})
    adapter = S7Adapter(s7_device(port, [{"name": f"r{k}", "address": f"DB20.DBD{4 * k}", "type": "REAL"}
                                         for k in range(500)]))
    try:
        await adapter.connect()
        readings = await adapter.read()
        assert [r.value for r in readings] == [k + 0.5 for k in range(500)]
        assert all(r.good for r in readings)
        for packet in adapter.packets:
            assert sum(4 + c.size + (c.size & 1) for c in packet.chunks) + 14 <= 480 + 1
        assert len(adapter.packets) == 5  # 2000 bytes / 462 per item, one item per answer
    finally:
        await adapter.close()
        await asyncio.to_thread(server.stop)


class FewItemsServer(Server):  # type: ignore[misc]
    """A CPU that accepts at most 2 items per request and refuses any request for DB11 as a whole (an error
    class in the header, as S7-200 SMART and LOGO! do for what they do not support)."""

    def _handle_read_area(self, request: dict[str, Any], client_address: Any) -> bytes:
        params = request.get("parameters", {})
        specs = params.get("address_specs") or []
        if params.get("item_count", 1) > 2 or any(spec.get("db_number") == 11 for spec in specs):
            return bytes(self._build_error_response(request, 0x8500))
        if params.get("item_count", 1) == 1 and (self._parse_read_address(request) or (0, 0))[1] == 11:
            return bytes(self._build_error_response(request, 0x8500))
        result: bytes = super()._handle_read_area(request, client_address)
        return result


async def test_a_cpu_refusing_big_requests_is_asked_item_by_item() -> None:
    port = free_port()
    server = FewItemsServer(log=False)
    server.host = "127.0.0.1"
    for (area, index), buf in memory().items():
        server.register_area(area, index, buf)
    server.start(tcp_port=port)
    adapter = S7Adapter(s7_device(port, expected_tags()))
    try:
        await adapter.connect()
        assert adapter.stats()["requests_per_cycle"] == 1  # planned as one request of many items
        for _ in range(2):
            readings = by_name(await adapter.read())
            for n, address, _, v in EXPECTED:
                if address.startswith("DB11."):
                    assert (readings[n].value, readings[n].quality) == (None, Quality.BAD_DEVICE_EXCEPTION), n
                else:
                    assert (readings[n].value, readings[n].quality) == (v, Quality.GOOD), n
        assert adapter.stats()["requests_per_cycle"] == len(adapter.blocks) > 1  # one item per request now
        (reason,) = adapter.stats()["refused"].values()
        assert reason.startswith("request refused: ")
    finally:
        await adapter.close()
        await asyncio.to_thread(server.stop)


async def test_a_silent_peer_is_no_answer_within_the_timeout() -> None:
    """A port that accepts and never answers (a hung CP, a wrong device): connect fails after `timeout`."""
    held: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    adapter = S7Adapter(s7_device(port, [{"name": "vw", "address": "VW102"}]))
    started = time.monotonic()
    try:
        with pytest.raises(AdapterError, match=r"no answer from 127.0.0.1:\d+ within 1 s"):
            await adapter.connect()
        assert 0.9 <= time.monotonic() - started < 3.0
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


class StallingServer(Server):  # type: ignore[misc]
    stall = 0.0

    def _handle_read_area(self, request: dict[str, Any], client_address: Any) -> bytes:
        time.sleep(self.stall)  # the server's own client thread: the CPU is busy, the connection stays up
        result: bytes = super()._handle_read_area(request, client_address)
        return result


async def test_a_read_without_answer_in_time_drops_the_connection_and_the_next_one_reads_again() -> None:
    port = free_port()
    server = StallingServer(log=False)
    server.host = "127.0.0.1"
    for (area, index), buf in memory().items():
        server.register_area(area, index, buf)
    server.start(tcp_port=port)
    adapter = S7Adapter(s7_device(port, [{"name": "vw", "address": "VW102"}]))
    try:
        await adapter.connect()
        server.stall = 1.5
        with pytest.raises(AdapterError, match="no answer within 1 s"):
            await adapter.read()
        assert adapter.client is None  # its late answer must never be read as the next request's
        server.stall = 0.0
        await adapter.connect()
        assert [(r.value, r.quality) for r in await adapter.read()] == [(1000, Quality.GOOD)]
    finally:
        await adapter.close()
        await asyncio.to_thread(server.stop)
