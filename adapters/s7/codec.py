"""S7 values <-> bytes: every `S7Location` type, big-endian as S7 stores them.

Each tag is compiled once into a `convert(buffer, offset) -> (value, quality)` closure (decode, scale/offset,
range check), so the hot path does no branching on the config. Numbers go through precompiled `struct`s;
STRING, WSTRING, DATE_AND_TIME and DTL through python-snap7's own getters and setters (`snap7.util`), which
know their headers and BCD. Times become POSIX seconds like every timestamp of the collector; the PLC's clock
has no zone, so it is read as UTC (docs/s7.md).
"""

from __future__ import annotations

import datetime as dt
import math
import struct
from collections.abc import Callable
from typing import Any

from snap7 import util

from adapters.s7.address import S7Location
from collector.model import Quality, float32_shortest
from collector.transform import make_transform

__all__ = ["Converter", "compile_converter", "decoder", "encode", "encode_write"]

Decoder = Callable[[bytes | bytearray | memoryview, int], Any]
Converter = Callable[[bytes | bytearray | memoryview, int], tuple[Any, str]]

_NUMBERS = {"BYTE": "B", "USINT": "B", "SINT": "b", "WORD": "H", "UINT": "H", "INT": "h", "DWORD": "I",
            "UDINT": "I", "DINT": "i", "REAL": "f", "LREAL": "d", "LINT": "q", "ULINT": "Q", "LWORD": "Q"}
_EPOCH = dt.datetime(1970, 1, 1)


def _posix(value: dt.datetime) -> float:
    return (value - _EPOCH).total_seconds()


def decoder(loc: S7Location, encoding: str = "gbk") -> Decoder:
    """A function (buffer, offset of the tag's first byte) -> raw value."""
    t = loc.type
    if t == "BOOL":
        mask = 1 << (loc.bit or 0)
        return lambda b, o: (b[o] & mask) != 0
    if t in _NUMBERS:
        unpack = struct.Struct(">" + _NUMBERS[t]).unpack_from
        if t == "REAL":
            return lambda b, o: float32_shortest(unpack(b, o)[0])
        return lambda b, o: unpack(b, o)[0]
    if t == "CHAR":
        return lambda b, o: bytes(b[o:o + 1]).decode(encoding)
    if t == "STRING":
        return lambda b, o: util.get_string(bytearray(b[o:o + loc.size]), 0, encoding)
    if t == "WSTRING":
        return lambda b, o: util.get_wstring(bytearray(b[o:o + loc.size]), 0)
    if t == "DATE_AND_TIME":
        return lambda b, o: _posix(util.get_date_time_object(bytearray(b[o:o + 8]), 0))
    if t == "DTL":
        return lambda b, o: _posix(util.get_dtl(bytearray(b[o:o + 12]), 0))
    raise ValueError(f"no decoder for S7 type {t}")


def compile_converter(loc: S7Location, scale: float = 1.0, offset: float = 0.0,
                      rng: tuple[float, float] | None = None, encoding: str = "gbk") -> Converter:
    """Decode, scale (numbers only) and check the range: (value, quality); a value that cannot be decoded
    (an invalid string header, a BCD date out of range, NaN) is None with `bad_decode`, never a guess."""
    dec = decoder(loc, encoding)
    good, bad = Quality.GOOD, Quality.BAD_DECODE
    numeric = loc.type in _NUMBERS
    # numbers: the core's value stage (collector/transform.py), the same for every protocol
    transform = make_transform(scale, offset, rng, "float" if loc.type in ("REAL", "LREAL") else "int") \
        if numeric else None
    if numeric and transform is None:
        return lambda b, o: (dec(b, o), good)

    def convert(b: bytes | bytearray | memoryview, o: int) -> tuple[Any, str]:
        try:
            v = dec(b, o)
        except (ValueError, TypeError, UnicodeDecodeError, struct.error, IndexError, OverflowError):
            return None, bad
        return (v, good) if transform is None else transform(v, good)

    return convert


def encode(loc: S7Location, value: Any, encoding: str = "gbk") -> bytes:
    """A value -> the tag's bytes (the simulator's direction; BOOL gives one byte with only its bit set).
    Numbers are clamped to the type's range; what cannot be encoded becomes zeros."""
    t = loc.type
    buf = bytearray(loc.size)
    try:
        if t == "BOOL":
            return bytes([(1 << (loc.bit or 0)) if value else 0])
        if t in _NUMBERS:
            code = _NUMBERS[t]
            if code in "fd":
                return struct.pack(">" + code, float(value))
            bits = struct.calcsize(code) * 8
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if code.islower() else (0, (1 << bits) - 1)
            return struct.pack(">" + code, min(hi, max(lo, round(float(value)))))
        if t == "CHAR":
            return str(value).encode(encoding)[:1].ljust(1, b"\0")
        if t == "STRING":
            raw = str(value).encode(encoding)[:loc.length or 0]
            return bytes([loc.length or 0, len(raw)]) + raw.ljust(loc.size - 2, b"\0")
        if t == "WSTRING":
            util.set_wstring(buf, 0, str(value)[:loc.length or 0], loc.length or 0)
            return bytes(buf)
        when = dt.datetime.fromtimestamp(float(value), dt.UTC).replace(tzinfo=None) \
            if not isinstance(value, dt.datetime) else value
        if t == "DATE_AND_TIME":
            util.set_dt(buf, 0, when)
        elif t == "DTL":
            util.set_dtl(buf, 0, when)
        return bytes(buf)
    except (TypeError, ValueError, OverflowError, struct.error):
        return bytes(loc.size)


_FLOAT32_MAX = 3.4028234663852886e38


def encode_write(loc: S7Location, value: Any, scale: float = 1.0, offset: float = 0.0,
                 encoding: str = "gbk") -> tuple[int, bytes]:
    """An engineering value -> (first byte, bytes) of a write; the tag's scale and offset undone. Unlike
    `encode` (the simulator's), a value the type cannot hold exactly raises ValueError: a clamped setpoint is
    a wrong setpoint. A BOOL gives one byte 0/1 for a bit write (the CPU sets that bit alone); a STRING and a
    WSTRING are written from their current-length field on, so the max-length header the DB declares stays."""
    t = loc.type
    if t == "BOOL":
        if not isinstance(value, bool) and value not in (0, 1):
            raise ValueError(f"a BOOL tag takes true/false or 1/0, not {value!r}")
        return loc.start, bytes([1 if value else 0])
    if t in _NUMBERS:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"a {t} tag takes a finite number, not {value!r}")
        raw: int | float = value
        if scale != 1.0 or offset != 0.0:
            raw = (value - offset) / scale
        code = _NUMBERS[t]
        if code == "f":
            if abs(raw) > _FLOAT32_MAX:
                raise ValueError(f"{value!r} does not fit a REAL")
            return loc.start, struct.pack(">f", raw)
        if code == "d":
            return loc.start, struct.pack(">d", raw)
        whole = round(raw)
        if abs(raw - whole) > 1e-9 * max(1.0, abs(raw)):
            raise ValueError(f"{value!r} is not a whole step of scale {scale:g}: the PLC holds {t} raw values"
                             if scale != 1.0 or offset != 0.0 else f"a {t} tag takes a whole number, not {value!r}")
        bits = struct.calcsize(code) * 8
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if code.islower() else (0, (1 << bits) - 1)
        if not lo <= whole <= hi:
            raise ValueError(f"{value!r} is {whole} raw, outside {t} ({lo}..{hi})")
        return loc.start, struct.pack(">" + code, whole)
    if t in ("CHAR", "STRING", "WSTRING") and not isinstance(value, str):
        raise ValueError(f"a {t} tag takes a string, not {type(value).__name__}")
    if t == "CHAR":
        raw_char = value.encode(encoding)
        if len(raw_char) != 1:
            raise ValueError(f"a CHAR holds one byte: {value!r} is {len(raw_char)} in {encoding}")
        return loc.start, raw_char
    if t == "STRING":
        text = value.encode(encoding)
        if len(text) > (loc.length or 0):
            raise ValueError(f"{value!r} is {len(text)} bytes in {encoding}, longer than STRING[{loc.length}]")
        return loc.start + 1, bytes([len(text)]) + text
    if t == "WSTRING":
        units = value.encode("utf-16-be")
        if len(units) // 2 > (loc.length or 0):
            raise ValueError(f"{value!r} is {len(units) // 2} UTF-16 characters, longer than WSTRING[{loc.length}]")
        return loc.start + 2, struct.pack(">H", len(units) // 2) + units
    raise ValueError(f"a {t} tag is not written (dates and times are read only)")
