"""Several outstanding Modbus TCP requests (`max_outstanding`), over real TCP.

The devices: the scripted server of test_modbus_tcp.py (one task per request, so it really holds several
requests at once; its answers are built with `struct`, independently of the client), and the simulator with
and without its pipelining mode (without it, pymodbus's server answers one frame per TCP segment: a device
that takes one request at a time). What is shown: answers out of order are matched by transaction id, requests
in flight together never look alike, a missing, cut-short or garbled answer never yields a wrong value marked
good, and a device that does not take several requests is detected and polled one at a time after one
WARNING.
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.base import AdapterContext, AdapterError
from adapters.modbus.adapter import ModbusAdapter, ModbusState
from adapters.modbus.errors import ModbusError
from adapters.modbus.tcp import ReadBatch
from collector.config import ConfigError, parse_config
from collector.model import Quality
from simulators.modbus import ModbusServerSim
from tests.adapters.modbus.test_modbus_sim import build_device, free_port
from tests.adapters.modbus.test_modbus_tcp import Device, Request, answer, connected, registers

pytestmark = pytest.mark.integration

# raw tags of 1, 2, 3, 4, 5, 1 and 2 registers, 10 apart: 7 requests with max_gap 0, two pairs alike
COUNTS = (1, 2, 3, 4, 5, 1, 2)
TAGS = [{"name": f"r{i}", "table": "holding_register", "address": 10 * i, "type": "raw", "count": c}
        for i, c in enumerate(COUNTS)]
BATCH = [(3, 10 * i, c) for i, c in enumerate(COUNTS)]


def right(address: int, count: int) -> list[int]:
    return registers(Request(0, 1, 3, address, count))


class Tracker:
    """What the device saw: the most requests it held at once, and whether two alike were held together."""

    def __init__(self) -> None:
        self.held: list[Request] = []
        self.most = 0
        self.alike = 0
        self.answered: list[int] = []

    def hold(self, req: Request) -> None:
        if any((r.fc, r.count) == (req.fc, req.count) for r in self.held):
            self.alike += 1
        self.held.append(req)
        self.most = max(self.most, len(self.held))

    def done(self, req: Request) -> None:
        self.held.remove(req)
        self.answered.append(req.tid)


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    dev = Device()
    await dev.start()
    yield dev
    await dev.stop()


def adapter_for(port: int, context: AdapterContext, **extra: Any) -> ModbusAdapter:
    dev = build_device(port, TAGS, max_gap=0, max_outstanding=extra.pop("max_outstanding", 4),
                       timeout=extra.pop("timeout", 0.3), **extra)
    return ModbusAdapter(dev, context)


def fill(sim: ModbusServerSim) -> None:
    """The simulated unit holds register n = 1000 + n, as the scripted device does (held: as if written, so
    the machine model's ticks leave them alone)."""
    unit = sim.unit("m1")
    for k, t in enumerate(TAGS):
        a = int(t["address"])
        unit.tables["holding_register"][a:a + COUNTS[k]] = array("H", right(a, COUNTS[k]))
        unit.held["holding_register"].update(range(a, a + COUNTS[k]))


def check_values(readings: list[Any], bad: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    for i, r in enumerate(readings):
        if i in bad:
            assert r.quality == Quality.BAD_TIMEOUT and r.value is None, r
        else:
            assert r.quality == Quality.GOOD, r
            assert r.value == right(10 * i, COUNTS[i]), r


# -- the client


async def test_answers_out_of_order_are_matched_by_transaction_id(device: Device) -> None:
    seen = Tracker()

    async def shuffled(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        seen.hold(req)
        await asyncio.sleep(0.03 if req.tid % 2 else 0.005)  # odd transactions answered after even ones
        seen.done(req)
        w.write(answer(req))

    device.handler = shuffled
    client = await connected(device)
    writes: list[bytes] = []
    transport: Any = client._transport
    write = transport.write
    transport.write = lambda data: (writes.append(bytes(data)), write(data))[-1]
    try:
        got = await client.read_batch(ReadBatch(1, BATCH), window=4)
        assert [list(a.registers) for a in got if a is not None] == [right(a, c) for _fc, a, c in BATCH]
        assert seen.most == 4  # four requests were held by the device at once
        assert seen.alike == 0  # never two alike (1 and 2 registers come twice in the batch)
        assert seen.answered != sorted(seen.answered)  # answers did come out of order
        assert len(writes[0]) == 4 * 12  # the first window went out in one write
        assert len(writes) < len(BATCH)
        assert client.connected and client.holes == []
    finally:
        client.close()


async def test_a_missing_answer_never_leaves_a_doubtful_value(device: Device) -> None:
    """The device never answers register 30: the window ends at its timeout, the connection is closed, and
    only answers taken before that request was written are kept."""
    async def no_30(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        if req.address != 30:
            w.write(answer(req))

    device.handler = no_30
    client = await connected(device, timeout=0.2)
    got = await client.read_batch(ReadBatch(1, BATCH), window=2)
    assert 3 in client.holes and got[3] is None
    assert not client.connected
    for k, a in enumerate(got):
        if a is not None:
            assert list(a.registers) == right(*BATCH[k][1:]) and k < 3


@pytest.mark.parametrize("kept", [1, 8, 9, 12, 20])
async def test_a_cut_answer_followed_by_the_others_is_never_spliced(device: Device, kept: int) -> None:
    """With several requests in flight, a device that cuts an answer short goes on with the next answers:
    the stale header would frame their first bytes. Nothing wrong may come out."""
    async def cut_first(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        if req.tid == 1:
            w.write(answer(req, words=[7] * req.count)[:kept])  # what would be spliced is not 1000 + n
        else:
            await asyncio.sleep(0.01)
            w.write(answer(req, words=[0x0003] * req.count))

    device.handler = cut_first
    wide = ReadBatch(1, [(3, 0, 10), (3, 20, 1), (3, 30, 2), (3, 40, 3)])
    client = await connected(device, timeout=0.2)
    try:
        got = await client.read_batch(wide, window=4)
    except ModbusError:
        return  # garbled or truncated: nothing returned
    finally:
        client.close()
    for k, a in enumerate(got):
        if a is not None:  # only an answer that came whole before any doubt
            assert list(a.registers) == ([7] * 10 if k == 0 else [3] * wide.counts[k])
    assert got[0] is None or list(got[0].registers) == [7] * 10


async def test_mixed_up_transaction_ids_are_caught_by_the_byte_count(device: Device) -> None:
    """A device that answers each request under the transaction id of the one before it: since requests in
    flight together differ in size, the first such answer is garbled instead of being taken."""
    last: list[Request] = []

    async def shifted(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        prev = last[-1] if last else req
        last.append(req)
        w.write(answer(req, tid=prev.tid))

    device.handler = shifted
    client = await connected(device)
    with pytest.raises(ModbusError, match="garbled answer.*byte count"):
        await client.read_batch(ReadBatch(1, BATCH), window=4)
    assert not client.connected


# -- the adapter


async def test_pipelined_polling_reads_right_values_and_keeps_the_window(device: Device) -> None:
    seen = Tracker()

    async def shuffled(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        seen.hold(req)
        await asyncio.sleep(0.02 if req.tid % 3 == 0 else 0.0)
        seen.done(req)
        w.write(answer(req))

    device.handler = shuffled
    context = AdapterContext()
    adapter = adapter_for(device.port, context)
    await adapter.connect()
    try:
        for _ in range(3):
            check_values(await adapter.read())
        assert seen.most == 4 and seen.alike == 0
        assert adapter.stats()["max_outstanding"] == 4
        assert adapter.line is not None and adapter.line.connects == 1
    finally:
        await adapter.close()


async def test_one_unanswered_request_leaves_only_its_tags_bad(device: Device,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A request the device never answers, in a window or alone: its tags `bad_timeout`, every other tag
    good (asked again one at a time on a new connection), and no fallback: it was not the window's fault."""
    async def no_30(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        if req.address != 30:
            w.write(answer(req))

    device.handler = no_30
    context = AdapterContext()
    adapter = adapter_for(device.port, context, timeout=0.1)
    await adapter.connect()
    try:
        with caplog.at_level(logging.WARNING, logger="adapters.modbus.adapter"):
            check_values(await adapter.read(), bad={3})
            check_values(await adapter.read(), bad={3})
        assert not [r for r in caplog.records if "max_outstanding" in r.getMessage()]
        assert adapter.window(adapter.line) == 4  # type: ignore[arg-type]
        assert adapter.line is not None and adapter.line.connected
    finally:
        await adapter.close()


async def test_a_silent_device_fails_the_cycle_as_a_timeout(device: Device) -> None:
    async def silent(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        return None

    device.handler = silent
    adapter = adapter_for(device.port, AdapterContext(), timeout=0.05)
    await adapter.connect()
    try:
        with pytest.raises(AdapterError, match="no answer from unit 1"):
            await adapter.read()
    finally:
        await adapter.close()


async def test_a_garbled_answer_with_several_outstanding_falls_back(device: Device,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    async def garble_second(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        good = answer(req)
        w.write(good[:8] + bytes([good[8] + 2]) + good[9:] if req.tid == 2 else good)

    device.handler = garble_second
    context = AdapterContext()
    adapter = adapter_for(device.port, context)
    await adapter.connect()
    try:
        with caplog.at_level(logging.WARNING, logger="adapters.modbus.adapter"), \
                pytest.raises(AdapterError, match="garbled answer"):
            await adapter.read()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "device=m1" in warnings[0].getMessage()
        assert "max_outstanding: 1" in warnings[0].getMessage()
        device.handler = garble_second  # tid 2 of the new connection is garbled again, now alone
        await adapter.connect()
        assert adapter.window(adapter.line) == 1  # type: ignore[arg-type]
        with pytest.raises(AdapterError, match="garbled answer"):
            await adapter.read()
    finally:
        await adapter.close()


async def test_a_device_that_drops_extra_requests_is_detected(device: Device,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Requests that arrive while the device works on one are dropped (a common gateway): the first cycle
    still reads every value (the dropped ones asked again alone), then one WARNING and one at a time."""
    busy: list[Request] = []

    async def one_at_a_time(dev: Device, req: Request, w: asyncio.StreamWriter) -> None:
        if busy:
            return  # dropped
        busy.append(req)
        await asyncio.sleep(0.005)
        busy.clear()
        w.write(answer(req))

    device.handler = one_at_a_time
    context = AdapterContext()
    adapter = adapter_for(device.port, context, timeout=0.1)
    await adapter.connect()
    try:
        with caplog.at_level(logging.WARNING, logger="adapters.modbus.adapter"):
            for _ in range(3):
                check_values(await adapter.read())
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "device=m1" in warnings[0] and "max_outstanding: 1" in warnings[0]
        assert adapter.stats()["max_outstanding"] == 1
        state = context.state("modbus", ModbusState)
        assert adapter.line is not None and adapter.line.key in state.one_at_a_time
    finally:
        await adapter.close()


# -- against the simulator: pipelining mode, and pymodbus's one frame per segment


async def test_the_simulator_in_pipelining_mode_answers_several_outstanding_requests(
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    tags = [{**t, "sim": {"kind": "constant", "value": 0}} for t in TAGS]
    dev = build_device(port, tags, max_gap=0, max_outstanding=4)
    async with ModbusServerSim(dev.endpoint, [dev]) as sim:
        assert sim.pipelining  # because the device asks for max_outstanding 4
        fill(sim)
        adapter = ModbusAdapter(dev, AdapterContext())
        await adapter.connect()
        try:
            with caplog.at_level(logging.WARNING, logger="adapters.modbus.adapter"):
                for _ in range(3):
                    check_values(await adapter.read())
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert adapter.stats()["max_outstanding"] == 4
            assert len(sim.unit("m1").requests) == 3 * len(TAGS)  # no request asked twice
        finally:
            await adapter.close()


async def test_a_device_added_to_a_shared_gateway_later_turns_pipelining_on(
        caplog: pytest.LogCaptureFixture) -> None:
    """The Workshop serves the devices of one gateway from one server, adding all but the first with
    `add_device`: a later unit that asks for max_outstanding 4 gets several outstanding requests answered."""
    port = free_port()
    tags = [{**t, "sim": {"kind": "constant", "value": 0}} for t in TAGS]
    first = build_device(port, tags, id="gw-first", unit_id=1, max_gap=0)
    dev = build_device(port, tags, unit_id=2, max_gap=0, max_outstanding=4)
    sim = ModbusServerSim(first.endpoint, [first])
    assert not sim.pipelining  # the first unit asks for one request at a time
    sim.add_device(dev)
    assert sim.pipelining
    async with sim:
        fill(sim)
        adapter = ModbusAdapter(dev, AdapterContext())
        await adapter.connect()
        try:
            with caplog.at_level(logging.WARNING, logger="adapters.modbus.adapter"):
                for _ in range(3):
                    check_values(await adapter.read())
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert adapter.stats()["max_outstanding"] == 4  # no fallback to one at a time
        finally:
            await adapter.close()


async def test_pymodbus_one_frame_per_segment_is_detected_and_polled_one_at_a_time(
        caplog: pytest.LogCaptureFixture) -> None:
    """pymodbus's own server (the simulator without pipelining) answers the first frame of a segment and
    keeps the rest until more bytes come: a real device stack that takes one request at a time."""
    port = free_port()
    tags = [{**t, "sim": {"kind": "constant", "value": 0}} for t in TAGS]
    dev = build_device(port, tags, max_gap=0, max_outstanding=4, timeout=0.2)
    async with ModbusServerSim(dev.endpoint, [dev], pipelining=False) as sim:
        fill(sim)
        adapter = ModbusAdapter(dev, AdapterContext())
        await adapter.connect()
        try:
            with caplog.at_level(logging.WARNING, logger="adapters.modbus.adapter"):
                for _ in range(3):
                    check_values(await adapter.read())
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1 and "max_outstanding_fallback" in warnings[0], warnings
            assert adapter.stats()["max_outstanding"] == 1
        finally:
            await adapter.close()


# -- config


@pytest.mark.parametrize("endpoint", ["rtu+tcp://127.0.0.1:5020", "serial:///dev/ttyUSB0"])
def test_max_outstanding_is_refused_on_rtu(endpoint: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"site": {"enterprise_id": "e"}, "devices": [{
            "id": "d", "protocol": "modbus", "endpoint": endpoint, "max_outstanding": 4,
            "tags": [{"name": "t", "register": 40001}]}]})
    assert len(info.value.lines) == 1
    assert info.value.lines[0].startswith("devices[0].max_outstanding: 4 needs a tcp:// endpoint")
    parse_config({"site": {"enterprise_id": "e"}, "devices": [{
        "id": "d", "protocol": "modbus", "endpoint": endpoint, "max_outstanding": 1,
        "tags": [{"name": "t", "register": 40001}]}]})


# -- issue 13's hostile simulator, now with several requests in flight


@pytest.mark.parametrize("kept", [5, 9, 15, 28])
async def test_a_cut_answer_among_pipelined_ones_never_publishes_a_wrong_value(kept: int) -> None:
    """The simulator (pipelining mode) cuts one answer after `kept` bytes and sends the next answers whole:
    every reading published good has its right value, and the next cycle reads all of them."""
    port = free_port()
    tags = [{"name": f"r{i}", "table": "holding_register", "address": 10 * i, "type": "raw", "count": c,
             "sim": {"kind": "constant", "value": 0}} for i, c in enumerate((10, 1, 2, 3))]
    dev = build_device(port, tags, max_gap=0, max_outstanding=4, timeout=0.2, retries=1)
    async with ModbusServerSim(dev.endpoint, [dev]) as sim:
        unit = sim.unit("m1")
        for t in tags:
            a, c = int(t["address"]), int(t["count"])
            unit.tables["holding_register"][a:a + c] = array("H", right(a, c))
            unit.held["holding_register"].update(range(a, a + c))
        adapter = ModbusAdapter(dev, AdapterContext())
        await adapter.connect()
        try:
            sim.truncate_answers("m1", keep=kept)
            try:
                got = await adapter.read()
            except AdapterError as exc:
                assert "truncated" in exc.reason or "garbled" in exc.reason, exc.reason
                await adapter.connect()
            else:
                for k, r in enumerate(got):
                    assert r.quality != Quality.GOOD or r.value == right(10 * k, int(tags[k]["count"])), r
            got = await adapter.read()
            assert [r.value for r in got] == [right(10 * k, int(t["count"])) for k, t in enumerate(tags)]
        finally:
            await adapter.close()


async def test_an_illegal_address_is_split_out_with_several_in_flight() -> None:
    port = free_port()
    tags = [{"name": f"t{i}", "table": "holding_register", "address": 2 * i, "sim": {"kind": "constant",
             "value": 100 + i}} for i in range(20)]
    tags.append({"name": "far", "table": "holding_register", "address": 500, "sim": {"kind": "constant", "value": 7}})
    dev = build_device(port, tags, max_outstanding=4, simulate={"exception_addresses": [14], "exception_code": 2})
    async with ModbusServerSim(dev.endpoint, [dev]):
        adapter = ModbusAdapter(dev, AdapterContext())
        await adapter.connect()
        try:
            for _ in range(2):
                got = {r.tag: r for r in await adapter.read()}
                assert (got["t7"].value, got["t7"].quality) == (None, Quality.BAD_ILLEGAL_ADDRESS)
                assert {n: r.value for n, r in got.items() if n != "t7"} == \
                    {**{f"t{i}": 100 + i for i in range(20) if i != 7}, "far": 7}
            assert [(r.start, r.count) for r in adapter.plan] == [(0, 13), (14, 1), (16, 23), (500, 1)]
            assert adapter.stats()["max_outstanding"] == 4 and adapter.stats()["illegal_skipped"] == 1
        finally:
            await adapter.close()
