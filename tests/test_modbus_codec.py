"""The tag codec against byte layouts written out by hand with `struct` (not through the codec)."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from adapters.modbus.codec import compile_tag, decode, encode
from collector.config import ModbusTag, parse_config
from collector.model import Quality
from tests.test_float32 import shortest_reference

FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
           "float32": "f", "float64": "d"}
SAMPLES: dict[str, list[Any]] = {
    "int16": [-12345, 0, 32767, -32768],
    "uint16": [54321, 0, 65535],
    "int32": [-123456789, 2**31 - 1, -(2**31)],
    "uint32": [3123456789, 0x01020304],
    "int64": [-1234567890123456789, 2**63 - 1],
    "uint64": [12345678901234567890, 0x0102030405060708],
    "float32": [12.5, -3.25, 1.0e-3],
    "float64": [math.pi, -2.5e300],
}


def wire_words(value: Any, type_: str, order: str) -> list[int]:
    """The registers a device sends for `value`, from the order's definition: A is the most significant byte,
    the order names the bytes as they appear on the wire."""
    be = struct.pack(">" + FORMATS[type_], value)  # A B C D ... big-endian
    pairs = [be[i:i + 2] for i in range(0, len(be), 2)]
    if order == "ABCD":
        wire = be
    elif order == "DCBA":
        wire = be[::-1]
    elif order == "BADC":
        wire = b"".join(p[::-1] for p in pairs)
    else:  # CDAB: registers in reverse order, bytes inside each as is
        wire = b"".join(reversed(pairs))
    return list(struct.unpack(f">{len(pairs)}H", wire))


def as_stored(value: Any, type_: str) -> Any:
    """A float32 comes back as the shortest decimal of the nearest single-precision value."""
    return shortest_reference(struct.unpack(">f", struct.pack(">f", value))[0]) if type_ == "float32" else value


CASES = [(t, o, v) for t, values in SAMPLES.items() for o in ("ABCD", "BADC", "CDAB", "DCBA") for v in values]


@pytest.mark.parametrize(("type_", "order", "value"), CASES)
def test_decode_every_type_and_order(type_: str, order: str, value: Any) -> None:
    assert decode(wire_words(value, type_, order), type_, order) == as_stored(value, type_)


@pytest.mark.parametrize(("type_", "order", "value"), CASES)
def test_encode_every_type_and_order(type_: str, order: str, value: Any) -> None:
    assert encode(value, type_, order) == wire_words(value, type_, order)


def test_known_layouts() -> None:
    # 0x11223344 as named in the usual device manuals
    assert encode(0x11223344, "uint32", "ABCD") == [0x1122, 0x3344]
    assert encode(0x11223344, "uint32", "BADC") == [0x2211, 0x4433]
    assert encode(0x11223344, "uint32", "CDAB") == [0x3344, 0x1122]
    assert encode(0x11223344, "uint32", "DCBA") == [0x4433, 0x2211]
    assert encode(0x1122334455667788, "uint64", "CDAB") == [0x7788, 0x5566, 0x3344, 0x1122]
    assert encode(0x1122334455667788, "uint64", "BADC") == [0x2211, 0x4433, 0x6655, 0x8877]
    assert decode([0x1234], "uint16", "BADC") == 0x3412
    assert decode([0x1234], "uint16", "CDAB") == 0x1234


def test_strings_and_raw() -> None:
    words_abcd = list(struct.unpack(">3H", b"AB-1\x00\x00"))
    words_badc = list(struct.unpack("<3H", b"AB-1\x00\x00"))
    assert words_abcd == [0x4142, 0x2D31, 0]
    assert decode(words_abcd, "string", "ABCD", count=3) == "AB-1"
    assert decode(words_badc, "string", "BADC", count=3) == "AB-1"
    assert decode(list(struct.unpack(">2H", b"OK  ")), "string", "ABCD", count=2) == "OK"
    assert encode("AB-1", "string", "ABCD", count=3) == words_abcd
    assert encode("AB-1", "string", "BADC", count=3) == words_badc
    assert encode("too long for two", "string", "ABCD", count=2) == list(struct.unpack(">2H", b"too "))
    assert decode([7, 8, 9, 10], "raw", count=3) == [7, 8, 9]
    assert encode([1, 2], "raw", count=3) == [1, 2, 0]


def test_bools() -> None:
    assert decode([0b1000_0000_0000_1000], "bool", bit=3) is True
    assert decode([0b1000_0000_0000_1000], "bool", bit=15) is True
    assert decode([0b1000_0000_0000_1000], "bool", bit=4) is False
    assert encode(True, "bool") == [1]
    assert encode(0, "bool") == [0]


def _device(tags: list[dict[str, Any]], **extra: Any) -> Any:
    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [
        {"id": "d", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:5020", "tags": tags, **extra}]})
    return cfg.devices[0]


def test_compiled_tags_scale_range_and_device_order() -> None:
    dev = _device([
        {"name": "temp", "table": "holding_register", "address": 0, "type": "int16", "scale": 0.1},
        {"name": "count", "table": "holding_register", "address": 1, "type": "uint32"},
        {"name": "press", "table": "input_register", "address": 0, "type": "uint16", "scale": 2,
         "offset": -10, "range": [0, 100]},
        {"name": "own", "table": "holding_register", "address": 3, "type": "uint32", "byte_order": "ABCD"},
        {"name": "lamp", "register": "00005", "type": "bool"},
        {"name": "flag", "register": 40010, "type": "bool", "bit": 2},
    ], byte_order="CDAB")
    codecs = {t.name: compile_tag(t, dev.byte_order) for t in dev.tags}
    assert codecs["temp"].convert([(-215) & 0xFFFF], 0) == (pytest.approx(-21.5), Quality.GOOD)
    value, quality = codecs["count"].convert([0, 0x0002, 0x0001], 1)  # device order CDAB
    assert (value, quality) == (0x00010002, Quality.GOOD) and isinstance(value, int)
    assert codecs["own"].convert([0x0001, 0x0002], 0) == (0x00010002, Quality.GOOD)
    assert codecs["press"].convert([30], 0) == (50.0, Quality.GOOD)
    assert codecs["press"].convert([70], 0) == (130.0, Quality.BAD_OUT_OF_RANGE)  # value still recorded
    assert codecs["lamp"].table == "coil" and codecs["lamp"].address == 4
    assert codecs["lamp"].convert([0, 0, 0, 0, 1], 4) == (True, Quality.GOOD)
    assert codecs["flag"].address == 9 and codecs["flag"].convert([0b100], 0) == (True, Quality.GOOD)
    # the simulator's direction undoes scale and offset
    assert codecs["temp"].encode_value(-21.5) == [(-215) & 0xFFFF]
    assert codecs["press"].encode_value(50.0) == [30]
    assert codecs["temp"].encode_value("not a number") == [0]
    assert codecs["temp"].encode_value(1e9) == [32767]  # clamped to int16


def test_nan_and_bad_strings_are_bad_decode() -> None:
    tag = ModbusTag(name="f", table="holding_register", address=0, type="float32")
    nan_words = list(struct.unpack(">2H", struct.pack(">f", float("nan"))))
    assert compile_tag(tag).convert(nan_words, 0) == (None, Quality.BAD_DECODE)
    text = ModbusTag(name="s", table="holding_register", address=0, type="string", count=1)
    assert compile_tag(text).convert([0xFFFE], 0) == (None, Quality.BAD_DECODE)


def test_unknown_byte_order_is_rejected() -> None:
    with pytest.raises(ValueError, match="byte order"):
        decode([1, 2], "uint32", "ACBD")
