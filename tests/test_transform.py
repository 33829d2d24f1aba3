"""The core value stage (collector/transform.py): one table of scale, offset, NaN/inf and range cases, run
through every protocol's real read path: the Modbus codec on registers written by `struct`, the OPC UA
adapter's DataValue handling, the S7 codec on big-endian bytes and the MC codec on little-endian words, both
written by `struct`, so no protocol can drift from the others again."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from asyncua import ua

from adapters.mc.codec import compile_converter as mc_converter
from adapters.modbus.codec import compile_tag
from adapters.opcua.adapter import OpcUaAdapter, _reading
from adapters.s7.address import parse_address as s7_address
from adapters.s7.codec import compile_converter as s7_converter
from collector.config import parse_config
from collector.model import Quality
from collector.transform import make_transform

GOOD, OUT, BAD = Quality.GOOD, Quality.BAD_OUT_OF_RANGE, Quality.BAD_DECODE
INF, NAN = math.inf, math.nan

# scale, offset, range, raw value, value of the reading, quality
TABLE: list[tuple[float, float, tuple[float, float] | None, float, float | None, str]] = [
    (1.0, 0.0, None, 12.5, 12.5, GOOD),
    (2.0, 1.0, None, 1.5, 4.0, GOOD),
    (0.1, -40.0, None, 650.0, 0.1 * 650.0 - 40.0, GOOD),
    (1.0, 0.0, None, NAN, None, BAD),  # OPC UA used to pass NaN as good
    (1.0, 0.0, None, INF, None, BAD),
    (1.0, 0.0, None, -INF, None, BAD),
    (10.0, 0.0, None, 1e308, None, BAD),  # finite on the wire, infinite once scaled
    (1.0, 0.0, (0.0, 10.0), NAN, None, BAD),
    (1.0, 0.0, (0.0, 10.0), -INF, None, BAD),
    (1.0, 0.0, (0.0, 10.0), 10.0, 10.0, GOOD),  # the range is inclusive
    (1.0, 0.0, (0.0, 10.0), 11.0, 11.0, OUT),  # out of range: the value is kept
    (2.0, 0.0, (0.0, 10.0), 6.0, 12.0, OUT),  # the range applies to the scaled value
    (1.0, 5.0, (0.0, 10.0), -4.0, 1.0, GOOD),
]
IDS = [f"{s}x+{o} in {r} of {raw}" for s, o, r, raw, *_ in TABLE]


def _tag(scale: float, offset: float, rng: tuple[float, float] | None) -> dict[str, Any]:
    tag: dict[str, Any] = {"name": "t", "scale": scale, "offset": offset}
    return tag | ({"range": list(rng)} if rng is not None else {})


def modbus(scale: float, offset: float, rng: tuple[float, float] | None, raw: float) -> tuple[Any, str]:
    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [
        {"id": "m", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:1",
         "tags": [_tag(scale, offset, rng) | {"table": "holding_register", "address": 0, "type": "float64"}]}]})
    words = list(struct.unpack(">4H", struct.pack(">d", raw)))  # float64 ABCD, written by struct
    return compile_tag(cfg.devices[0].tags[0]).convert(words, 0)


def opcua(scale: float, offset: float, rng: tuple[float, float] | None, raw: float) -> tuple[Any, str]:
    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [
        {"id": "o", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840", "mode": "poll",
         "tags": [_tag(scale, offset, rng) | {"node": "ns=2;s=T"}]}]})
    plan = OpcUaAdapter(cfg.devices[0])._plans[0]
    dv = ua.DataValue(ua.Variant(raw, ua.VariantType.Double))
    reading = _reading("o", plan, dv, 0.0)
    return reading.value, reading.quality


def s7(scale: float, offset: float, rng: tuple[float, float] | None, raw: float) -> tuple[Any, str]:
    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [
        {"id": "s", "protocol": "s7", "endpoint": "s7://127.0.0.1:1",
         "tags": [_tag(scale, offset, rng) | {"address": "DB1.DBB8", "type": "LREAL"}]}]})
    tag = cfg.devices[0].tags[0]
    convert = s7_converter(s7_address(tag.address, tag.type), tag.scale, tag.offset, tag.range)
    return convert(b"\0\0" + struct.pack(">d", raw), 2)  # LREAL as the CPU holds it, big-endian


def mc(scale: float, offset: float, rng: tuple[float, float] | None, raw: float) -> tuple[Any, str]:
    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [
        {"id": "q", "protocol": "mc", "endpoint": "mc://127.0.0.1:1",
         "tags": [_tag(scale, offset, rng) | {"address": "D100", "type": "LREAL"}]}]})
    words = [0, *struct.unpack("<4H", struct.pack("<d", raw))]  # LREAL in 4 words, low word first
    return mc_converter(cfg.devices[0].tags[0])(words, 1)


@pytest.mark.parametrize("read", [modbus, opcua, s7, mc], ids=["modbus", "opcua", "s7", "mc"])
@pytest.mark.parametrize(("scale", "offset", "rng", "raw", "value", "quality"), TABLE, ids=IDS)
def test_one_value_stage_for_every_protocol(read: Any, scale: float, offset: float,
                                            rng: tuple[float, float] | None, raw: float, value: float | None,
                                            quality: str) -> None:
    got_value, got_quality = read(scale, offset, rng, raw)
    assert (got_value, got_quality) == (value, quality)


def test_values_that_are_no_numbers_pass_and_lists_go_element_by_element() -> None:
    t = make_transform(2.0, 1.0, (0.0, 10.0))
    assert t is not None
    assert t(True, GOOD) == (True, GOOD)  # bools never scale
    assert t("run", GOOD) == ("run", GOOD)
    assert t([1, 2], GOOD) == ([3.0, 5.0], GOOD)
    assert t([1, 6], GOOD) == ([3.0, 13.0], OUT)
    assert t([1.0, NAN], GOOD) == (None, BAD)
    assert t(3, Quality.UNCERTAIN) == (7.0, Quality.UNCERTAIN)  # the device's quality is kept when in range
    assert make_transform(values="int") is None  # nothing to do: the Modbus codec skips the stage
    finite = make_transform(values="float")
    assert finite is not None and finite(NAN, GOOD) == (None, BAD)
