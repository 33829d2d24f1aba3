"""The lean Modbus TCP client (adapters/modbus/tcp.py) against a scripted device on real TCP.

The device is a tiny asyncio server whose answers each test decides: late, split byte by byte, coalesced
with stray frames, with a wrong transaction id, unit or function, garbled, an exception, or a closed socket.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from adapters.base import AdapterContext, AdapterError
from adapters.modbus.adapter import ModbusAdapter
from adapters.modbus.errors import ConnectionLost, ModbusError, NoAnswer
from adapters.modbus.line import Line
from adapters.modbus.tcp import Answer, MbapClient
from collector.model import Quality
from tests.adapters.modbus.test_modbus_sim import build_device, const

pytestmark = pytest.mark.integration

CONTEXT = AdapterContext()

@pytest.fixture(autouse=True)
def _fresh_context() -> None:
    """What one test's adapters share, like one collector's (its plans, lines and timeout streaks)."""
    global CONTEXT
    CONTEXT = AdapterContext()


@dataclass
class Request:
    tid: int
    unit: int
    fc: int
    address: int
    count: int


def registers(req: Request) -> list[int]:
    """What the device holds: register n = 1000 + n; bit n = n % 3 == 0."""
    return [(1000 + req.address + i) & 0xFFFF for i in range(req.count)]


def answer(req: Request, *, tid: int | None = None, unit: int | None = None, fc: int | None = None,
           words: list[int] | None = None) -> bytes:
    """A correct answer to `req` unless told otherwise."""
    if req.fc in (1, 2):
        bits = [(req.address + i) % 3 == 0 for i in range(req.count)]
        body = bytes(sum(1 << j for j, b in enumerate(bits[k:k + 8]) if b) for k in range(0, len(bits), 8))
    else:
        regs = registers(req) if words is None else words
        body = struct.pack(f">{len(regs)}H", *regs)
    pdu = bytes([req.fc if fc is None else fc, len(body)]) + body
    return frame(req.tid if tid is None else tid, req.unit if unit is None else unit, pdu)


def exception(req: Request, code: int) -> bytes:
    return frame(req.tid, req.unit, bytes([req.fc | 0x80, code]))


def frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


Handler = Callable[["Device", Request, asyncio.StreamWriter], Coroutine[Any, Any, None]]


async def correct(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
    w.write(answer(req))


@dataclass
class Device:
    """A Modbus TCP device whose answers are written by `handler`, one task per request (so a late answer
    can overtake nothing and be overtaken by nothing but what the test arranges)."""

    handler: Handler = correct
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: set[asyncio.Future[None]] = set()
        self.writers.append(writer)
        try:
            while True:
                raw = await reader.readexactly(12)
                tid, _proto, _len, unit, fc, address, count = struct.unpack(">HHHBBHH", raw)
                req = Request(tid, unit, fc, address, count)
                self.requests.append(req)
                task = asyncio.create_task(self.handler(self, req, writer))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for pending in tasks:
                pending.cancel()
            writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    dev = Device()
    await dev.start()
    yield dev
    await dev.stop()


async def connected(dev: Device, timeout: float = 0.5, retries: int = 0) -> MbapClient:
    client = MbapClient("127.0.0.1", dev.port, timeout=timeout, retries=retries)
    assert await client.connect()
    assert client.connected
    return client


async def test_every_function_code_and_bit_order(device: Device) -> None:
    client = await connected(device)
    try:
        got = await client.read_holding_registers(10, count=3, device_id=7)
        assert isinstance(got, Answer) and not got.isError()
        assert list(got.registers) == [1010, 1011, 1012]
        assert list((await client.read_input_registers(0, count=125, device_id=7)).registers) == \
            [1000 + i for i in range(125)]
        coils = await client.read_coils(1, count=10, device_id=7)  # two bytes on the wire, cut to 10
        assert coils.bits == [(1 + i) % 3 == 0 for i in range(10)]
        inputs = await client.read_discrete_inputs(0, count=8, device_id=7)
        assert inputs.bits == [i % 3 == 0 for i in range(8)]
        assert [(r.fc, r.unit) for r in device.requests] == [(3, 7), (4, 7), (1, 7), (2, 7)]
        assert [r.tid for r in device.requests] == [1, 2, 3, 4]
        with pytest.raises(ValueError):
            await client.read_holding_registers(0, count=126, device_id=1)
    finally:
        client.close()
    assert not client.connected


async def test_transaction_ids_wrap_from_65535_to_1(device: Device) -> None:
    client = await connected(device)
    try:
        client._tid = 65534
        for _ in range(3):
            await client.read_holding_registers(0, count=1, device_id=1)
        assert [r.tid for r in device.requests] == [65535, 1, 2]
    finally:
        client.close()


async def test_an_answer_split_byte_by_byte(device: Device) -> None:
    async def dribble(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        for b in answer(req):
            w.write(bytes([b]))
            await w.drain()
            await asyncio.sleep(0.002)

    device.handler = dribble
    client = await connected(device)
    chunks = []
    feed = client.data_received

    def counting(data: bytes) -> None:
        chunks.append(len(data))
        feed(data)

    client.data_received = counting  # type: ignore[method-assign]
    try:
        got = await client.read_holding_registers(5, count=4, device_id=1)
        assert list(got.registers) == [1005, 1006, 1007, 1008]
        assert len(chunks) > 8  # it did arrive in pieces (a 17-byte frame)
    finally:
        client.close()


async def test_stray_frames_coalesced_with_the_answer_are_dropped(device: Device) -> None:
    async def noisy(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        stray = [answer(req, tid=req.tid ^ 0x100, words=[1] * req.count),  # another transaction
                 answer(req, unit=req.unit + 1, words=[2] * req.count),  # another unit
                 exception(Request(req.tid, req.unit, 4, 0, 1), 2)]  # another function
        whole = b"".join(stray) + answer(req) + answer(req, tid=req.tid ^ 0x200)
        w.write(whole[:-5])  # the last (stray) frame split over two writes
        await w.drain()
        await asyncio.sleep(0.01)
        w.write(whole[-5:])

    device.handler = noisy
    client = await connected(device)
    try:
        for address in (0, 50, 100):
            got = await client.read_holding_registers(address, count=2, device_id=3)
            assert list(got.registers) == [1000 + address, 1001 + address]
            await asyncio.sleep(0.02)  # the split stray frame ends
        assert client.connected
    finally:
        client.close()


async def test_a_late_answer_is_never_taken_for_the_next_request(device: Device) -> None:
    async def late(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        if len(dev.requests) == 1:  # answered after the client gave up, with other values
            await asyncio.sleep(0.25)
            w.write(answer(req, words=[999] * req.count))
        else:  # the second request is answered after the first one's late answer arrived
            await asyncio.sleep(0.3)
            w.write(answer(req))

    device.handler = late
    client = await connected(device, timeout=0.1)
    try:
        started = time.monotonic()
        with pytest.raises(NoAnswer, match="No response received after 0 retries"):
            await client.read_holding_registers(0, count=2, device_id=1)
        assert 0.09 < time.monotonic() - started < 0.2
        client.timeout = 1.0
        got = await client.read_holding_registers(0, count=2, device_id=1)
        assert list(got.registers) == [1000, 1001]  # not the late [999, 999]
        assert client.connected
    finally:
        client.close()


@pytest.mark.parametrize("wrong", ["tid", "unit", "fc"])
async def test_an_answer_to_something_else_is_dropped(device: Device, wrong: str) -> None:
    async def mismatched(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        if wrong == "tid":
            w.write(answer(req, tid=req.tid + 1))
        elif wrong == "unit":
            w.write(answer(req, unit=req.unit + 1))
        else:
            w.write(answer(req, fc=4))

    device.handler = mismatched
    client = await connected(device, timeout=0.1)
    try:
        with pytest.raises(NoAnswer):
            await client.read_holding_registers(0, count=1, device_id=1)
        assert client.connected
    finally:
        client.close()


async def test_retries_send_again_with_new_transaction_ids(device: Device) -> None:
    async def silent(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        return None

    device.handler = silent
    client = await connected(device, timeout=0.1, retries=2)
    try:
        started = time.monotonic()
        with pytest.raises(NoAnswer, match="after 2 retries"):
            await client.read_input_registers(7, count=1, device_id=9)
        assert 0.29 < time.monotonic() - started < 0.5
        assert [(r.tid, r.fc, r.address) for r in device.requests] == [(1, 4, 7), (2, 4, 7), (3, 4, 7)]
        client.retries = 0  # settable between requests
        with pytest.raises(NoAnswer, match="after 0 retries"):
            await client.read_input_registers(7, count=1, device_id=9)
        assert len(device.requests) == 4
    finally:
        client.close()


async def test_an_answer_to_an_earlier_try_is_dropped(device: Device) -> None:
    """Only the pending try's answer counts: an earlier try's answer may have been cut short, and its stale
    header would then frame the start of the retry's answer (tests/adapters/modbus/test_modbus_tcp_property.py)."""
    async def slow_first(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        if req.tid == 1:
            await asyncio.sleep(0.4)  # after the first try's timeout, during the second try
            w.write(answer(req, words=[999]))
        elif req.tid == 2:
            await asyncio.sleep(0.15)  # after the late answer to try 1
            w.write(answer(req))

    device.handler = slow_first
    client = await connected(device, timeout=0.3, retries=3)
    try:
        late = client.data_received
        frames: list[bytes] = []
        client.data_received = lambda data: (frames.append(data), late(data))[-1]  # type: ignore[method-assign]
        got = await client.read_holding_registers(0, count=1, device_id=1)
        assert list(got.registers) == [1000]  # not the late 999
        assert [r.tid for r in device.requests] == [1, 2]
        assert frames[0][:2] == b"\x00\x01"  # the late answer did arrive first
        assert client.connected  # a whole late frame leaves the stream aligned
    finally:
        client.close()


@pytest.mark.parametrize("kept", [1, 7, 8, 9, 15, 28])
async def test_a_cut_answer_and_the_retry_answer_are_never_spliced(device: Device, kept: int) -> None:
    """The field trial: 10 registers, the first answer cut after `kept` bytes, the try times out, the retry is
    answered in full. The client used to append the retry's answer to the stale partial frame and return
    [1000, 1001, 768, 512, 0, 5889, 788, 1000, 1001, 1002] for 1000..1009."""
    async def cut_first(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        w.write(answer(req)[:kept] if len(dev.requests) == 1 else answer(req))

    device.handler = cut_first
    client = await connected(device, timeout=0.15, retries=2)
    started = time.monotonic()
    with pytest.raises(ModbusError, match=f"truncated answer .*: {kept} bytes") as info:
        await client.read_holding_registers(0, count=10, device_id=1)
    assert not isinstance(info.value, NoAnswer | ConnectionLost)
    assert 0.14 < time.monotonic() - started < 0.5
    assert not client.connected  # the stream cannot be realigned: the line reconnects
    assert [r.tid for r in device.requests] == [1]  # no retry on a broken stream
    fresh = await connected(device, timeout=0.15, retries=2)
    try:
        assert list((await fresh.read_holding_registers(0, count=10, device_id=1)).registers) == \
            [1000 + i for i in range(10)]
    finally:
        fresh.close()


@pytest.mark.parametrize("kept", [7, 15, 28])
async def test_a_late_cut_answer_before_the_retry_answer_is_never_spliced(device: Device, kept: int) -> None:
    """The same cut, but the first answer's piece arrives during the second try, just before its answer."""
    first: list[Request] = []

    async def late_cut(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        if req.tid == 1:
            first.append(req)
        elif req.tid == 2:
            w.write(answer(first[0])[:kept] + answer(req))
        else:
            w.write(answer(req))

    device.handler = late_cut
    client = await connected(device, timeout=0.15, retries=2)
    try:
        got = await client.read_holding_registers(0, count=10, device_id=1)
    except ModbusError:
        pass  # garbled or truncated: the request failed, nothing wrong was returned
    else:
        assert list(got.registers) == [1000 + i for i in range(10)]
    finally:
        client.close()


async def test_cancelling_mid_frame_closes_the_connection(device: Device) -> None:
    """A request cancelled while part of its answer is buffered: the rest would frame the next answer."""
    async def dribble(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        w.write(answer(req)[:5])

    device.handler = dribble
    client = await connected(device, timeout=5.0)
    task = asyncio.create_task(client.read_holding_registers(0, count=2, device_id=1))
    while not client._buffer:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not client.connected


async def test_exception_answer(device: Device) -> None:
    async def illegal(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        w.write(exception(req, 2))

    device.handler = illegal
    client = await connected(device)
    try:
        got = await client.read_holding_registers(0, count=10, device_id=1)
        assert got.isError() and got.exception_code == 2 and got.function_code == 0x83
        assert client.connected
    finally:
        client.close()


async def test_peer_closing_mid_request_fails_it_at_once(device: Device) -> None:
    async def hang_up(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        w.close()

    device.handler = hang_up
    client = await connected(device, timeout=5.0, retries=3)
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="closed by the device"):
        await client.read_holding_registers(0, count=1, device_id=1)
    assert time.monotonic() - started < 1.0  # not the timeout
    assert not client.connected
    with pytest.raises(ConnectionLost, match="not connected"):
        await client.read_holding_registers(0, count=1, device_id=1)
    assert not await client.connect()  # one connection per client: the line builds a new one


@pytest.mark.parametrize("garble", ["byte count", "short frame", "protocol id", "length"])
async def test_a_garbled_answer_fails_the_request_and_closes(device: Device, garble: str) -> None:
    async def garbled(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        good = answer(req)
        if garble == "byte count":  # claims one register less than the frame carries
            w.write(good[:8] + bytes([good[8] - 2]) + good[9:])
        elif garble == "short frame":  # consistent byte count, but fewer registers than asked
            w.write(answer(req, words=registers(req)[:-1]))
        elif garble == "protocol id":
            w.write(good[:2] + b"\x00\x01" + good[4:])
        else:
            w.write(good[:4] + b"\x01\x00" + good[6:])  # length 256

    device.handler = garbled
    client = await connected(device, retries=2)
    with pytest.raises(ModbusError, match="garbled answer") as info:
        await client.read_holding_registers(0, count=3, device_id=1)
    assert not isinstance(info.value, NoAnswer | ConnectionLost)
    assert not client.connected
    assert len(device.requests) == 1  # not retried


async def test_cancelling_the_request_drops_its_answer(device: Device) -> None:
    async def slow(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.1 if len(dev.requests) == 1 else 0)
        w.write(answer(req, words=[len(dev.requests)] * req.count))

    device.handler = slow
    client = await connected(device, timeout=1.0)
    try:
        task = asyncio.create_task(client.read_holding_registers(0, count=1, device_id=1))
        await asyncio.sleep(0.03)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client._waiter is None
        await asyncio.sleep(0.15)  # the answer to the cancelled request arrives and is dropped
        got = await client.read_holding_registers(0, count=1, device_id=1)
        assert list(got.registers) == [2]
        assert client.connected
    finally:
        client.close()


async def test_a_cancellation_is_not_lost_when_the_answer_lands_in_the_same_step(device: Device) -> None:
    """The Python 3.11 `wait_for` race does not exist here: cancel and answer together -> cancelled."""
    async def silent(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        return None

    device.handler = silent
    client = await connected(device, timeout=1.0)
    try:
        task = asyncio.create_task(client.read_holding_registers(0, count=1, device_id=1))
        while not device.requests:
            await asyncio.sleep(0.005)
        client.data_received(answer(device.requests[0]))  # the answer is in ...
        task.cancel()  # ... and the cancellation comes in the same loop step
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client._waiter is None
    finally:
        client.close()


async def test_requests_from_several_tasks_go_one_at_a_time(device: Device) -> None:
    async def slowish(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.01)
        w.write(answer(req))

    device.handler = slowish
    client = await connected(device)
    try:
        got = await asyncio.gather(*(client.read_holding_registers(a, count=1, device_id=1) for a in range(5)))
        assert [list(g.registers) for g in got] == [[1000 + a] for a in range(5)]
    finally:
        client.close()


async def test_connect_refused_returns_false() -> None:
    dev = Device()
    await dev.start()
    port = dev.port
    await dev.stop()
    client = MbapClient("127.0.0.1", port, timeout=0.5)
    started = time.monotonic()
    assert not await client.connect()
    assert not client.connected and time.monotonic() - started < 0.5


async def test_connect_gives_up_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def never(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(10)

    monkeypatch.setattr(loop, "create_connection", never)
    client = MbapClient("127.0.0.1", 1, timeout=0.1)
    started = time.monotonic()
    assert not await client.connect()
    assert not client.connected and 0.09 < time.monotonic() - started < 0.5


# -- through the adapter and the line


async def test_tcp_lines_use_the_lean_client_and_a_garbled_answer_is_a_device_error(device: Device) -> None:
    dev = build_device(device.port, [{"name": "x", "register": 40001, "sim": const(5)}], timeout=0.3)
    adapter = ModbusAdapter(dev, CONTEXT)
    await adapter.connect()
    try:
        line = adapter.line
        assert isinstance(line, Line) and isinstance(line.client, MbapClient)
        assert [r.value for r in await adapter.read()] == [1000]

        async def garbled(d: Device, req: Request, w: asyncio.StreamWriter) -> None:
            w.write(answer(req, words=[]))

        device.handler = garbled
        with pytest.raises(AdapterError, match="request failed: .*garbled answer"):
            await adapter.read()
        assert not line.connected  # dropped: the engine reconnects
        device.handler = correct
        await adapter.connect()
        assert [r.value for r in await adapter.read()] == [1000]

        async def illegal(d: Device, req: Request, w: asyncio.StreamWriter) -> None:
            w.write(exception(req, 2))

        device.handler = illegal
        assert [r.quality for r in await adapter.read()] == [Quality.BAD_ILLEGAL_ADDRESS]
    finally:
        await adapter.close()
