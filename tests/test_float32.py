"""float32 values travel as the shortest decimal that reads back as the same float32 (`230.0057`, not
`230.00572204589844`), checked against a reference written here with `struct` and `decimal` only."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import struct
import time
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import orjson
import pytest

from adapters.base import create_adapter
from adapters.modbus.codec import compile_tag, decode
from collector.config import ModbusTag
from collector.model import Batch, Reading, float32_shortest
from collector.sinks.influx import InfluxSettings, InfluxSink
from collector.sinks.mqtt import encode_data
from collector.sinks.sparkplug import DOUBLE, datatype_of, set_value
from collector.sinks.sparkplug_b_pb2 import Payload
from simulators.opcua import OpcUaMachineSim
from tests.test_opcua_sim import NS, free_port, make_device


def f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def shortest_reference(value: float) -> float:
    """The decimal d with the fewest significant digits such that float32(d) == value; of two such, the one
    nearer the value. Each precision tries the decimals just below and just above the exact value."""
    if value == 0 or not math.isfinite(value):
        return value
    exact = abs(Decimal(value))  # a float32 is exact in a float64, and a float64 in a Decimal
    sign = -1.0 if value < 0 else 1.0
    for digits in range(1, 10):
        quantum = Decimal(1).scaleb(exact.adjusted() - digits + 1)
        found = []
        for rounding in (ROUND_FLOOR, ROUND_CEILING):
            candidate = exact.quantize(quantum, rounding=rounding)
            try:
                if f32(sign * float(candidate)) == value:
                    found.append(candidate)
            except OverflowError:
                pass
        if found:  # the nearer; on a tie the even last digit (round half to even)
            return sign * float(min(found, key=lambda c: (abs(c - exact), int(c.scaleb(-quantum.adjusted())) % 2)))
    raise AssertionError(f"no decimal of up to 9 digits for {value!r}")


def random_float32(rng: random.Random) -> float:
    while True:
        x = struct.unpack(">f", struct.pack(">I", rng.getrandbits(32)))[0]
        if math.isfinite(x):
            return float(x)


EDGES = [f32(230.0057), f32(0.1), f32(1e-3), f32(1234.5678), 3.4028234663852886e38, -3.4028234663852886e38,
         1.401298464324817e-45, 1.1754943508222875e-38, f32(1.17549e-38), f32(3.3e-42), 16777216.0, 0.5, 1.0, 2.0, 1024.0, -2.5,
         f32(9.999999), f32(99999.99), f32(1e10), f32(-7.0e-20), 0.0, -0.0]


def test_the_field_value_is_published_short_by_every_sink() -> None:
    field = list(struct.unpack(">2H", bytes.fromhex("43660177")))  # published as 230.00572204589844
    assert decode(field, "float32") == 230.00572
    registers = list(struct.unpack(">2H", bytes.fromhex("43660176")))
    assert repr(struct.unpack(">f", bytes.fromhex("43660176"))[0]) == "230.00570678710938"  # what was published
    value = decode(registers, "float32")
    assert value == 230.0057 and f32(value) == f32(230.0057)
    now = 1_700_000_000.0
    batch = Batch("meter-01", 1, now, [Reading("meter-01", "voltage", value, "V", "good", now, now)])
    assert b'"value":230.0057,' in encode_data(batch)
    influx = InfluxSink(InfluxSettings(url="http://127.0.0.1:1", org="o", bucket="b", token=None,
                                       enterprise="e", workshop="w", measurements={}))
    assert 'voltage value=230.0057,quality="good"' in influx.encode(batch).decode()
    # Sparkplug: a float travels as a Double, so the host reads 230.0057 too (not a Float's 230.00572…)
    metric = Payload().metrics.add()
    assert datatype_of(value) == DOUBLE
    set_value(metric, DOUBLE, value)
    assert repr(Payload.FromString(_one(metric)).metrics[0].double_value) == "230.0057"


def _one(metric: object) -> bytes:
    p = Payload()
    p.metrics.append(metric)  # type: ignore[arg-type]
    return p.SerializeToString()


@pytest.mark.parametrize("value", EDGES)
def test_edge_values_match_the_reference(value: float) -> None:
    got = float32_shortest(value)
    assert got == shortest_reference(value) and f32(got) == value, (value, got)
    assert math.copysign(1, got) == math.copysign(1, value)


def test_random_float32_values_match_the_reference() -> None:
    rng = random.Random(13)
    values = [random_float32(rng) for _ in range(20_000)]
    written = [round(rng.uniform(-1000, 1000), rng.randint(0, 5)) for _ in range(20_000)]  # as a PLC computes
    values += [f32(w) for w in written]
    wrong = [(v, float32_shortest(v), shortest_reference(v)) for v in values
             if float32_shortest(v) != shortest_reference(v)]
    assert wrong == []
    digits = [len(Decimal(repr(float32_shortest(v))).normalize().as_tuple().digits) for v in values]
    assert max(digits) == 9
    # never longer than the decimal the device stored (which reads back as the same float32, too)
    assert all(d <= len(Decimal(repr(w)).normalize().as_tuple().digits) for d, w in zip(digits[20_000:], written, strict=True))


def test_the_codec_decodes_every_byte_order_short_and_keeps_nan_bad() -> None:
    for order in ("ABCD", "BADC", "CDAB", "DCBA"):
        tag = ModbusTag(name="v", table="holding_register", address=0, type="float32", byte_order=order)
        codec = compile_tag(tag)
        for value in (230.0057, -0.001, 1e-3, 42.0):
            words = codec.encode_value(value)
            assert codec.convert(words, 0) == (shortest_reference(f32(value)), "good"), (order, value)
        nan = codec.encode_raw(float("nan"))
        assert codec.convert(nan, 0) == (None, "bad_decode")
    scaled = compile_tag(ModbusTag(name="s", table="holding_register", address=0, type="float32", scale=10.0))
    assert scaled.convert(scaled.encode_raw(230.0057), 0)[0] == pytest.approx(2300.057, abs=1e-9)
    assert orjson.dumps(float32_shortest(f32(0.1))) == b"0.1"


async def test_an_opc_ua_float_node_reads_short_in_poll_and_subscribe_mode() -> None:
    """Over real TCP: the OPC UA simulator serves a Float (float32) and a Double node with 230.0057."""
    tags = [{"name": "volts", "node": f"nsu={NS};s=Volts", "type": "float", "sim": {"kind": "constant",
                                                                                      "value": 230.0057}},
            {"name": "volts64", "node": f"nsu={NS};s=Volts64", "type": "double", "sim": {"kind": "constant",
                                                                                         "value": 230.0057}}]
    port = free_port()
    sim = OpcUaMachineSim(make_device(port, tags, mode="poll"))
    await sim.start()
    try:
        for mode in ("poll", "subscribe"):
            adapter = create_adapter(make_device(port, tags, mode=mode, interval=0.1))
            try:
                await adapter.connect()
                if mode == "poll":
                    readings = await adapter.read()
                else:
                    readings = []
                    task = asyncio.create_task(adapter.subscribe(readings.extend))
                    deadline = time.monotonic() + 10
                    while {r.tag for r in readings} < {"volts", "volts64"} and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                values = {r.tag: r.value for r in readings}
                assert values["volts"] == 230.0057 and repr(values["volts"]) == "230.0057", (mode, values)
                assert values["volts64"] == 230.0057, (mode, values)  # a Double is left as it is
            finally:
                await adapter.close()
    finally:
        await sim.stop()
