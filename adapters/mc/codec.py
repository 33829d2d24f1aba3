"""Decode MC tag values from the words of a batch read: PLC types as GX Works stores them.

A 32-bit value keeps its low word at the lower address (D100 low, D101 high), a 64-bit one its lowest word
first; a string holds two characters a word, the first in the low byte, up to the first NUL. Scale, offset
and range apply to numbers as for every protocol (docs/config.md).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

from adapters.mc.config import McTag, string_length, tag_words
from collector.model import Quality, float32_shortest
from collector.transform import make_converter

__all__ = ["Converter", "compile_converter", "encode_write", "encode_words"]

Converter = Callable[[Sequence[int], int], tuple[Any, str]]
"""(words of the read, word offset of the tag) -> (value, quality)."""

_S32, _U32, _F32 = struct.Struct("<i"), struct.Struct("<I"), struct.Struct("<f")
_F64, _W2, _W4 = struct.Struct("<d"), struct.Struct("<2H"), struct.Struct("<4H")


def _decoder(type_: str, bit: int | None) -> Callable[[Sequence[int], int], Any]:
    if type_ == "BOOL":
        b = bit or 0
        return lambda w, o: bool(w[o] >> b & 1)
    if type_ in ("UINT", "WORD"):
        return lambda w, o: w[o]
    if type_ == "INT":
        return lambda w, o: w[o] - 0x10000 if w[o] & 0x8000 else w[o]
    if type_ in ("UDINT", "DWORD"):
        return lambda w, o: w[o] | w[o + 1] << 16
    if type_ == "DINT":
        return lambda w, o: _S32.unpack(_W2.pack(w[o], w[o + 1]))[0]
    if type_ == "REAL":
        return lambda w, o: float32_shortest(_F32.unpack(_W2.pack(w[o], w[o + 1]))[0])
    if type_ == "LREAL":
        return lambda w, o: _F64.unpack(_W4.pack(*w[o:o + 4]))[0]
    n = string_length(type_)
    assert n is not None, type_
    words = tag_words(type_)

    def dec_string(w: Sequence[int], o: int) -> str:
        raw = struct.pack(f"<{words}H", *w[o:o + words])[:n]
        return raw.split(b"\0", 1)[0].decode("utf-8")

    return dec_string


def compile_converter(tag: McTag, xy_base: int = 16) -> Converter:
    """One closure per tag: decode, then scale/offset, finite check and range check for numbers."""
    type_ = tag.value_type(xy_base)
    addr = tag.parsed(xy_base)
    bit = addr.number % 16 if addr.device.is_bit else addr.bit
    dec = _decoder(type_, bit)
    good, bad = Quality.GOOD, Quality.BAD_DECODE
    if type_ == "BOOL" or string_length(type_) is not None:
        def conv_plain(w: Sequence[int], o: int) -> tuple[Any, str]:
            try:
                return dec(w, o), good
            except (UnicodeDecodeError, IndexError):
                return None, bad
        return conv_plain
    # numbers: the core's value stage (collector/transform.py), the same for every protocol
    return make_converter(dec, tag.scale, tag.offset, tag.range, "float" if type_ in ("REAL", "LREAL") else "int")


_INT_LIMITS = {"INT": (-0x8000, 0x7FFF), "UINT": (0, 0xFFFF), "WORD": (0, 0xFFFF), "DINT": (-2**31, 2**31 - 1),
               "UDINT": (0, 2**32 - 1), "DWORD": (0, 2**32 - 1)}


def encode_words(type_: str, value: Any) -> list[int]:
    """Engineering value (before scale) -> words, the simulator's direction; integers clamp to the type."""
    if type_ == "BOOL":
        return [1 if value else 0]
    n = string_length(type_)
    if n is not None:
        raw = str(value).encode("utf-8")[:n].ljust(tag_words(type_) * 2, b"\0")
        return list(struct.unpack(f"<{len(raw) // 2}H", raw))
    if type_ == "REAL":
        return list(_W2.unpack(_F32.pack(float(value))))
    if type_ == "LREAL":
        return list(_W4.unpack(_F64.pack(float(value))))
    x = float(value)
    i = 0 if not math.isfinite(x) else round(x)
    lo, hi = _INT_LIMITS[type_]
    i = min(hi, max(lo, i)) & 0xFFFFFFFF
    return [i & 0xFFFF] if type_ in ("INT", "UINT", "WORD") else [i & 0xFFFF, i >> 16]


def encode_write(type_: str, value: Any, scale: float = 1.0, offset: float = 0.0) -> list[int]:
    """Engineering value -> the words a write sends (a BOOL: [0] or [1]), scale and offset undone. Unlike
    `encode_words` (the simulator's), a value the type cannot hold exactly raises ValueError instead of being
    clamped: a clamped setpoint is a wrong setpoint."""
    if type_ == "BOOL":
        if not isinstance(value, bool) and value not in (0, 1):
            raise ValueError(f"a BOOL tag takes true/false or 1/0, not {value!r}")
        return [1 if value else 0]
    n = string_length(type_)
    if n is not None:
        if not isinstance(value, str):
            raise ValueError(f"a {type_} tag takes a string, not {type(value).__name__}")
        raw = value.encode("utf-8")
        if len(raw) > n or b"\0" in raw:
            raise ValueError(f"{value!r} is {len(raw)} bytes in UTF-8, longer than {type_}" if len(raw) > n
                             else "a string with a NUL character cannot be read back whole")
        return encode_words(type_, value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"a {type_} tag takes a finite number, not {value!r}")
    x: int | float = value
    if scale != 1.0 or offset != 0.0:
        x = (value - offset) / scale
    if type_ == "REAL":
        if abs(x) > 3.4028234663852886e38:
            raise ValueError(f"{value!r} does not fit a REAL")
        return list(_W2.unpack(_F32.pack(x)))
    if type_ == "LREAL":
        return list(_W4.unpack(_F64.pack(x)))
    whole = round(x)
    if abs(x - whole) > 1e-9 * max(1.0, abs(x)):
        raise ValueError(f"{value!r} is not a whole step of scale {scale:g}: the PLC holds {type_} raw values"
                         if scale != 1.0 or offset != 0.0 else f"a {type_} tag takes a whole number, not {value!r}")
    lo, hi = _INT_LIMITS[type_]
    if not lo <= whole <= hi:
        raise ValueError(f"{value!r} is {whole} raw, outside {type_} ({lo}..{hi})")
    i = whole & 0xFFFFFFFF
    return [i & 0xFFFF] if type_ in ("INT", "UINT", "WORD") else [i & 0xFFFF, i >> 16]
