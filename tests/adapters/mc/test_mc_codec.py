"""The MC codec on its own: bad words become a bad quality, never a value marked good."""

from __future__ import annotations

import struct

from adapters.mc.codec import compile_converter, encode_words
from adapters.mc.config import McTag
from collector.model import Quality


def conv(address: str, type_: str | None = None, **kw: object):  # type: ignore[no-untyped-def]
    return compile_converter(McTag.model_validate({"name": "t", "address": address, "type": type_, **kw}))


def test_nan_and_inf_reals_are_bad_decode() -> None:
    nan = list(struct.unpack("<2H", struct.pack("<f", float("nan"))))
    inf = list(struct.unpack("<4H", struct.pack("<d", float("inf"))))
    assert conv("D0", "REAL")(nan, 0) == (None, Quality.BAD_DECODE)
    assert conv("D0", "LREAL")(inf, 0) == (None, Quality.BAD_DECODE)


def test_range_scale_and_strings() -> None:
    assert conv("D0", "INT", range=[0, 100])([0xFFFF], 0) == (-1, Quality.BAD_OUT_OF_RANGE)
    assert conv("D0", "UINT", scale=0.5, offset=1)([10], 0) == (6.0, Quality.GOOD)
    assert conv("D0", "STRING[3]")([0xFFFE, 0x41], 0) == (None, Quality.BAD_DECODE)  # not UTF-8
    assert conv("D0", "STRING[3]")(encode_words("STRING[3]", "ABCD"), 0) == ("ABC", Quality.GOOD)
    assert conv("D0", "DINT")(encode_words("DINT", -2**40), 0) == (-2**31, Quality.GOOD)  # the simulator clamps


def test_bits_of_words_and_bit_devices() -> None:
    assert conv("D7.F")([0x8000], 0) == (True, Quality.GOOD)
    assert conv("D7.E")([0x8000], 0) == (False, Quality.GOOD)
    assert conv("M33")([0, 0, 0b10], 2) == (True, Quality.GOOD)  # M33: word 2, bit 1
    assert conv("X1F")([0, 0x8000], 1) == (True, Quality.GOOD)
