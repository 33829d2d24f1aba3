"""The MC adapter against the MC simulator over real TCP, with pymcprotocol (not ours) on the other side.

pymcprotocol writes each value into the simulator as words or bits computed here with `struct`; the adapter
must read back exactly those values. A recording TCP proxy between adapter and simulator checks the
adapter's frames against the `struct` encoder of tests/adapters/mc/helpers.py.
"""

from __future__ import annotations

import asyncio
import math
import struct
from typing import Any

import pymcprotocol
import pytest

from adapters.base import create_adapter
from adapters.mc.adapter import McAdapter
from adapters.mc.frame import Route, encode_read, encode_write_bits, encode_write_words
from collector.engine import DeviceTask
from collector.model import DeviceState, Quality, Reading
from simulators.mc import McServerSim
from tests.adapters.mc.helpers import config, read_request, signed
from tests.support.broker import free_port

pytestmark = pytest.mark.integration


def _w(fmt: str, value: Any) -> list[int]:
    """Words of `value` packed little-endian as the PLC holds it (low word first)."""
    raw = struct.pack("<" + fmt, value)
    return list(struct.unpack(f"<{len(raw) // 2}H", raw))


def _s(text: str, n: int) -> list[int]:
    raw = text.encode().ljust((n + 1) // 2 * 2, b"\0")
    return list(struct.unpack(f"<{len(raw) // 2}H", raw))


# tag, words written by pymcprotocol (device, words) or bits (device, [0/1...]), expected value
WORD_CASES: list[tuple[dict[str, Any], str, list[int], Any]] = [
    ({"address": "D100", "type": "INT"}, "D100", _w("h", -1234), -1234),
    ({"address": "D101"}, "D101", _w("h", -2), -2),  # default type INT
    ({"address": "D102", "type": "UINT"}, "D102", _w("H", 65000), 65000),
    ({"address": "D103", "type": "word"}, "D103", _w("H", 0xBEEF), 0xBEEF),
    ({"address": "D104", "type": "DINT"}, "D104", _w("i", -123456789), -123456789),
    ({"address": "D106", "type": "UDINT"}, "D106", _w("I", 3_000_000_000), 3_000_000_000),
    ({"address": "D108", "type": "REAL"}, "D108", _w("f", 42.25), 42.25),
    ({"address": "D110", "type": "LREAL"}, "D110", _w("d", -1e-3), -1e-3),
    ({"address": "D114", "type": "STRING[7]"}, "D114", _s("AB-1234", 7), "AB-1234"),
    ({"address": "D118", "type": "STRING[10]"}, "D118", _s("short", 10), "short"),
    ({"address": "D130", "type": "INT", "scale": 0.1}, "D130", _w("h", 615), 61.5),
    ({"address": "W1A", "type": "INT"}, "W1A", _w("h", 26), 26),  # hex: word 26
    ({"address": "R200", "type": "REAL"}, "R200", _w("f", -0.5), -0.5),
    ({"address": "ZR1000", "type": "DINT"}, "ZR3E8", _w("i", 70000), 70000),  # pymcprotocol writes ZR in hex
    ({"address": "SD210", "type": "UINT"}, "SD210", _w("H", 2026), 2026),
]
BIT_OF_WORD = [("D140.0", 0, True), ("D140.3", 3, True), ("D140.4", 4, False), ("D140.F", 15, True)]
BIT_WORD = 1 << 0 | 1 << 3 | 1 << 15
BIT_CASES: list[tuple[str, str, bool]] = [  # address, pymcprotocol's name for it, value
    ("M0", "M0", True), ("M15", "M15", True), ("M16", "M16", False), ("M100", "M100", True),
    ("L5", "L5", True), ("SM400", "SM400", True), ("X0", "X0", True), ("X1F", "X1F", True),
    ("X10", "X10", False), ("Y20", "Y20", True), ("B3F", "B3F", True),
]


def _tags() -> list[dict[str, Any]]:
    tags = [{"name": f"w{i}", **spec} for i, (spec, _d, _w, _v) in enumerate(WORD_CASES)]
    tags += [{"name": f"b{i}", "address": a} for i, (a, _n, _v) in enumerate(BIT_OF_WORD)]
    tags += [{"name": f"x{i}", "address": a} for i, (a, _n, _v) in enumerate(BIT_CASES)]
    return tags


def _expected() -> dict[str, Any]:
    out = {f"w{i}": v for i, (_s, _d, _w, v) in enumerate(WORD_CASES)}
    out.update({f"b{i}": v for i, (_a, _n, v) in enumerate(BIT_OF_WORD)})
    out.update({f"x{i}": v for i, (_a, _n, v) in enumerate(BIT_CASES)})
    return out


def _write_with_pymcprotocol(port: int) -> list[int]:
    """Write every case with pymcprotocol (blocking; run in a thread); read D100.. back with it too."""
    plc = pymcprotocol.Type3E(plctype="Q")
    plc.connect("127.0.0.1", port)
    try:
        for _spec, device, words, _v in WORD_CASES:
            plc.batchwrite_wordunits(headdevice=device, values=signed(words))
        plc.batchwrite_wordunits(headdevice="D140", values=signed([BIT_WORD]))
        for _a, name, value in BIT_CASES:
            plc.batchwrite_bitunits(headdevice=name, values=[1 if value else 0])
        return [w & 0xFFFF for w in plc.batchread_wordunits(headdevice="D100", readsize=14)]
    finally:
        plc.close()


class Proxy:
    """A TCP proxy that records what the client sends (to check frames against the struct encoder)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.sent = b""
        self.server: asyncio.Server | None = None
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)

            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
                while data := await src.read(65536):
                    if record:
                        self.sent += data
                    dst.write(data)
                dst.close()

            await asyncio.gather(pump(reader, up_w, True), pump(up_r, writer, False), return_exceptions=True)

        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_every_type_and_address_form_reads_what_pymcprotocol_wrote() -> None:
    port = free_port()
    cfg = config(port, _tags())
    dev = cfg.devices[0]
    async with McServerSim(dev):
        read_back = await asyncio.to_thread(_write_with_pymcprotocol, port)
        assert read_back == [w for _s, d, words, _v in WORD_CASES[:8] for w in words][:14]
        proxy = Proxy(port)
        await proxy.start()
        adapter = McAdapter(cfg.devices[0].model_copy(update={"endpoint": f"mc://127.0.0.1:{proxy.port}"}))
        await adapter.connect()
        try:
            readings = await adapter.read()
        finally:
            await adapter.close()
            await proxy.stop()
    got = {r.tag: r.value for r in readings}
    assert {r.tag: r.quality for r in readings} == dict.fromkeys(got, Quality.GOOD)
    want = _expected()
    for name, value in want.items():
        if isinstance(value, float):
            assert math.isclose(got[name], value, rel_tol=1e-12), name
        else:
            assert got[name] == value, name
    assert got == pytest.approx(want)
    # the wire: exactly the planned reads, each as the manual's struct encoding has it
    expected = b"".join(read_request(r.number, r.device.code, r.points, timer=8) for r in adapter.plan)
    assert proxy.sent == expected
    assert len(adapter.plan) == 11  # one per device code: D (one joined read), W, R, ZR, SD, M, L, SM, X, Y, B
    # the reads are the ones a person works out: D100..D140 in one, X0..X2F (hex) in words 0..2
    by_device = {r.device.name: (r.number, r.points) for r in adapter.plan}
    assert by_device["D"] == (100, 41)
    assert by_device["X"] == (0, 2)
    assert by_device["M"] == (0, 7)  # M0..M111: words 0..6


def test_frames_match_pymcprotocol_and_the_struct_encoder() -> None:
    """Our request encoder against two that are not ours: the struct one and pymcprotocol's."""
    plc = pymcprotocol.Type3E(plctype="Q")
    plc.setaccessopt(timer_sec=2)
    for code, name, number, points in [(0xA8, "D", 100, 41), (0x9C, "X", 0x20, 3), (0xB0, "ZR", 4096, 960)]:
        ours = encode_read(Route(), code, number, points, timer=8)
        assert ours == read_request(number, code, points, timer=8)
        theirs = plc._make_senddata(plc._make_commanddata(0x0401, 0) + plc._make_devicedata(
            f"{name}{number:X}" if name in ("X", "ZR") else f"{name}{number}") + plc._encode_value(points))
        assert ours == theirs


def test_write_frames_match_pymcprotocol() -> None:
    """Batch write in word and bit units (1401/0000, 1401/0001) as pymcprotocol (not ours) builds them."""
    plc = pymcprotocol.Type3E(plctype="Q")
    plc.setaccessopt(timer_sec=2)

    def theirs(sub: int, device: str, points: int, data: bytes) -> bytes:
        return bytes(plc._make_senddata(plc._make_commanddata(0x1401, sub) + plc._make_devicedata(device)
                                        + plc._encode_value(points) + data))

    words = [0x1234, 0xFFFF, 0, 0x8000]
    values = b"".join(plc._encode_value(w - 0x10000 if w & 0x8000 else w, isSigned=True) for w in words)
    assert encode_write_words(Route(), 0xA8, 100, words, timer=8) == theirs(0, "D100", 4, values)
    assert encode_write_words(Route(), 0xB4, 0x1A, [7], timer=8) == theirs(0, "W1A", 1, plc._encode_value(7))
    for bits in ([True], [True, False, True], [False, True, True, False]):
        nibbles = [1 if b else 0 for b in bits] + [0]
        data = bytes(nibbles[i] << 4 | nibbles[i + 1] for i in range(0, len(bits), 2))
        assert encode_write_bits(Route(), 0x90, 10, bits, timer=8) == theirs(1, "M10", len(bits), data)
    with pytest.raises(ValueError):
        encode_write_words(Route(), 0xA8, 0, [])


async def test_bad_device_and_out_of_range_mark_only_their_tags() -> None:
    port = free_port()
    tags = [
        {"name": "ok_low", "address": "D7990", "type": "INT", "sim": {"kind": "constant", "value": 7}},
        {"name": "past_end", "address": "D7999", "type": "DINT"},  # D8000 does not exist (FX5U: D0-D7999)
        {"name": "far", "address": "D9000"},
        {"name": "last", "address": "D7998", "type": "INT", "sim": {"kind": "constant", "value": -8}},
        {"name": "zr", "address": "ZR10", "sim": {"kind": "constant", "value": 3}},
        {"name": "flag", "address": "M1", "sim": {"kind": "constant", "value": True}},
    ]
    dev = config(port, tags, max_gap=960).devices[0]
    async with McServerSim(dev) as sim:
        sim.set_capacity("ZR", 0)  # a CPU without ZR (an FX5U): its device code answers C05B
        adapter = create_adapter(dev)
        await adapter.connect()
        try:
            first = {r.tag: (r.value, r.quality) for r in await adapter.read()}
            second = {r.tag: (r.value, r.quality) for r in await adapter.read()}
        finally:
            await adapter.close()
    want = {"ok_low": (7, Quality.GOOD), "past_end": (None, Quality.BAD_ILLEGAL_ADDRESS),
            "far": (None, Quality.BAD_ILLEGAL_ADDRESS), "last": (-8, Quality.GOOD),
            "zr": (None, Quality.BAD_ILLEGAL_ADDRESS), "flag": (True, Quality.GOOD)}
    assert first == want
    assert second == want  # the split plan keeps giving the same
    assert adapter.stats()["splits"] == 1


async def test_identity_is_the_cpu_model_and_says_simulator() -> None:
    from collector.indicators.identity import simulator_reason

    port = free_port()
    dev = config(port, [{"name": "a", "address": "D0"}]).devices[0]
    async with McServerSim(dev) as sim:
        adapter = create_adapter(dev)
        await adapter.connect()
        ident = await adapter.identify()
        assert ident == {"protocol": "mc", "cpu_model": "MC-SIMULATOR", "cpu_model_code": "0001"}
        assert simulator_reason(ident) == "cpu_model = MC-SIMULATOR"
        # pymcprotocol reads the same model name
        name, code = await asyncio.to_thread(_cputype, port)
        assert (name, code) == ("MC-SIMULATOR", "0001")
        sim.set_cpu_model(None)  # a module without Read CPU model: end code, a definite "none"
        assert await adapter.identify() == {"protocol": "mc", "cpu_model": None, "cpu_model_code": None}
        assert [r.quality for r in await adapter.read()] == [Quality.GOOD]  # the connection is still fine
        await adapter.close()


def _cputype(port: int) -> tuple[str, str]:
    plc = pymcprotocol.Type3E(plctype="Q")
    plc.connect("127.0.0.1", port)
    try:
        name, code = plc.read_cputype()
        return name, code
    finally:
        plc.close()


async def test_a_server_restart_recovers_without_restarting_the_collector() -> None:
    port = free_port()
    dev = config(port, [{"name": "count", "address": "D10", "type": "DINT", "sim": {"kind": "counter", "rate": 5}},
                        {"name": "run", "address": "M5", "sim": {"kind": "running"}}],
                 interval=0.05, timeout=0.5, simulate={"update_interval": 0.05}).devices[0]
    got: list[list[Reading]] = []
    states: list[DeviceState] = []
    task = DeviceTask(dev, lambda _d, rs: got.append(rs), lambda _d, s, _r: states.append(s), backoff_cap=0.2)
    sim = McServerSim(dev)
    await sim.start()
    task.start()
    try:
        await _until(lambda: len(got) >= 3)
        await sim.stop()  # the PLC powers off
        await _until(lambda: DeviceState.OFFLINE in states)
        before = len(got)
        await asyncio.sleep(0.3)
        assert len(got) == before  # nothing while it is off
        await sim.start()  # ... and on again
        await _until(lambda: len(got) >= before + 3)
        assert task.sessions >= 2
        assert all(r.quality == Quality.GOOD for r in got[-1])
        assert got[-1][1].value is True
    finally:
        await task.stop()
        await sim.stop()


async def _until(cond: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


async def test_a_cut_answer_over_tcp_is_never_spliced_with_the_next() -> None:
    """A PLC that cuts its first answer short and sends the rest late, glued to the next answer: the adapter
    fails that poll (the connection closed on the timeout), and the next connection reads the right values."""
    from adapters.base import AdapterError
    from tests.adapters.mc.helpers import answer

    good = answer([7, 8])
    wrong = answer([0xDEAD, 0xBEEF])
    connections = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        first = connections[0] == 1
        try:
            while True:
                await reader.readexactly(21)  # one batch read request
                if first:
                    writer.write(wrong[:13])  # cut short ...
                    await writer.drain()
                    await asyncio.sleep(0.3)  # ... past the client's timeout, then the rest and more
                    writer.write(wrong[13:] + wrong)
                else:
                    writer.write(good)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    dev = config(port, [{"name": "a", "address": "D0"}, {"name": "b", "address": "D1"}], timeout=0.1).devices[0]
    try:
        adapter = McAdapter(dev)
        await adapter.connect()
        with pytest.raises(AdapterError, match="no answer"):
            await adapter.read()
        await asyncio.sleep(0.4)  # the rest arrives: on a closed connection
        with pytest.raises(AdapterError):
            await adapter.read()
        await adapter.connect()  # what the engine does after the failure
        assert [(r.value, r.quality) for r in await adapter.read()] == [(7, Quality.GOOD), (8, Quality.GOOD)]
        await adapter.close()
    finally:
        server.close()


async def test_a_plc_that_hangs_goes_offline_and_comes_back() -> None:
    """The simulator stops answering (connection open): no answer within timeout -> offline, reconnect with
    backoff; a late answer (delay > timeout) is never taken; answering again brings the data back."""
    port = free_port()
    dev = config(port, [{"name": "v", "address": "D0", "sim": {"kind": "constant", "value": 42}}],
                 interval=0.05, timeout=0.2).devices[0]
    got: list[list[Reading]] = []
    states: list[tuple[DeviceState, str | None]] = []
    task = DeviceTask(dev, lambda _d, rs: got.append(rs), lambda _d, s, r: states.append((s, r)), backoff_cap=0.2)
    async with McServerSim(dev) as sim:
        task.start()
        try:
            await _until(lambda: len(got) >= 2)
            sim.set_delay("plc", 0.5)  # later than the timeout: its answers land on a closed connection
            await _until(lambda: any(s == DeviceState.OFFLINE for s, _r in states))
            reason = next(r for s, r in states if s == DeviceState.OFFLINE)
            assert reason is not None and "no answer" in reason
            sim.set_delay("plc", 0.0)
            sim.set_silent("plc", True)
            before = len(got)
            await asyncio.sleep(0.6)
            assert len(got) == before
            sim.set_silent("plc", False)
            await _until(lambda: len(got) >= before + 2)
            assert all(r.value == 42 and r.quality == Quality.GOOD for rs in got for r in rs)
        finally:
            await task.stop()
