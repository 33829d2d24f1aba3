"""Modbus tag codec: 16-bit registers <-> typed values, for every `ModbusType` and byte/word order.

Pure and fast: each tag is compiled once into a `TagCodec` whose `convert(words, offset)` closure does the
decode and the core's value stage (collector/transform.py: scale, finiteness, range) with no branching on the
config at read time.

Byte orders name the order of the value's bytes on the wire, A being the most significant byte:
`ABCD` big-endian, `BADC` bytes swapped inside each register, `CDAB` registers reversed, `DCBA` little-endian.
They apply alike to 32- and 64-bit values (for 64-bit `CDAB` reverses all four registers). The rule that
covers every width: pack the registers big-endian (`ABCD`, `DCBA`) or little-endian (`BADC`, `CDAB`), then
read the bytes big-endian (`ABCD`, `BADC`) or little-endian (`CDAB`, `DCBA`). For 16-bit values this means
`BADC` and `DCBA` swap the two bytes, `ABCD` and `CDAB` do not. Strings only know the order inside a register:
high byte first (`ABCD`, `CDAB`) or swapped (`BADC`, `DCBA`). A `bit` of a register counts from the least
significant bit of the register as transmitted (0..15), whatever the byte order.
"""

from __future__ import annotations

import math
import struct
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from adapters.modbus.config import BIT_TABLES, REGISTERS_PER_TYPE, ModbusTag
from collector.model import Quality, float32_shortest
from collector.transform import make_converter

__all__ = [
    "BYTE_ORDERS",
    "Converter",
    "Decoder",
    "TagCodec",
    "compile_tag",
    "decode",
    "encode",
    "make_decoder",
    "make_encoder",
    "type_limits",
]

BYTE_ORDERS = ("ABCD", "BADC", "CDAB", "DCBA")
# byte order -> (struct prefix for packing the registers, struct prefix for reading the value)
_ORDER_PREFIX: dict[str, tuple[str, str]] = {
    "ABCD": (">", ">"),
    "BADC": ("<", ">"),
    "CDAB": ("<", "<"),
    "DCBA": (">", "<"),
}
_NUM_FORMAT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
               "float32": "f", "float64": "d"}
_INT_LIMITS = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
               "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1)}

Decoder = Callable[[Sequence[int], int], Any]
"""(words, offset) -> raw value; `words` are the registers (or bits) of a whole request."""
Converter = Callable[[Sequence[int], int], tuple[Any, str]]
"""(words, offset) -> (engineering value, quality)."""


def type_limits(type_: str) -> tuple[int, int] | None:
    """The representable range of an integer type (None for the others); the simulator clamps to it."""
    return _INT_LIMITS.get(type_)


def _check_order(byte_order: str) -> None:
    if byte_order not in _ORDER_PREFIX:
        raise ValueError(f"byte order '{byte_order}' is not one of {', '.join(BYTE_ORDERS)}")


def make_decoder(type_: str, byte_order: str = "ABCD", count: int | None = None,
                 bit: int | None = None, bits: bool = False) -> Decoder:
    """Compile a decoder for one tag. `bits=True` for coils and discrete inputs (one bit per address)."""
    _check_order(byte_order)
    if type_ == "bool":
        if bits:
            return lambda w, o: bool(w[o])
        if bit is None:
            return lambda w, o: w[o] != 0
        mask = 1 << bit
        return lambda w, o: (w[o] & mask) != 0
    if type_ == "raw":
        n = count or 1
        return lambda w, o: list(w[o:o + n])
    word_prefix, value_prefix = _ORDER_PREFIX[byte_order]
    if type_ == "string":
        n = count or 1
        # Strings have no word order: only the order inside each register counts.
        pack_s = struct.Struct((">" if byte_order in ("ABCD", "CDAB") else "<") + f"{n}H").pack

        def dec_string(w: Sequence[int], o: int) -> str:
            return pack_s(*w[o:o + n]).rstrip(b"\x00 ").decode("utf-8")

        return dec_string
    if type_ not in _NUM_FORMAT:
        raise ValueError(f"unknown Modbus type '{type_}'")
    n = REGISTERS_PER_TYPE[type_]
    if n == 1 and word_prefix == value_prefix:
        # 16-bit without byte swap: plain arithmetic, no struct.
        if type_ == "uint16":
            return lambda w, o: w[o]
        return lambda w, o: w[o] - 0x10000 if w[o] & 0x8000 else w[o]
    if type_ in ("uint32", "int32") and byte_order in ("ABCD", "CDAB"):
        hi, lo = (0, 1) if byte_order == "ABCD" else (1, 0)
        if type_ == "uint32":
            return lambda w, o: (w[o + hi] << 16) | w[o + lo]

        def dec_i32(w: Sequence[int], o: int) -> int:
            v = (w[o + hi] << 16) | w[o + lo]
            return v - 0x100000000 if v & 0x80000000 else v

        return dec_i32
    pack_w = struct.Struct(f"{word_prefix}{n}H").pack
    unpack_v = struct.Struct(value_prefix + _NUM_FORMAT[type_]).unpack
    if type_ == "float32":  # the shortest decimal of the float32, not the float64's noise digits
        return lambda w, o: float32_shortest(unpack_v(pack_w(w[o], w[o + 1]))[0])
    if n == 2:
        return lambda w, o: unpack_v(pack_w(w[o], w[o + 1]))[0]
    if n == 4:
        return lambda w, o: unpack_v(pack_w(w[o], w[o + 1], w[o + 2], w[o + 3]))[0]
    return lambda w, o: unpack_v(pack_w(w[o]))[0]


def make_encoder(type_: str, byte_order: str = "ABCD", count: int | None = None) -> Callable[[Any], list[int]]:
    """Compile the inverse of `make_decoder` (value -> registers); ints are rounded and clamped to the type.

    A bool encodes to `[0]` or `[1]` (a coil, or the value of its bit: the caller merges it into the register).
    """
    _check_order(byte_order)
    if type_ == "bool":
        return lambda v: [1 if v else 0]
    if type_ == "raw":
        n = count or 1

        def enc_raw(v: Any) -> list[int]:
            words = [int(x) & 0xFFFF for x in (v if isinstance(v, list | tuple) else [v])][:n]
            return words + [0] * (n - len(words))

        return enc_raw
    word_prefix, value_prefix = _ORDER_PREFIX[byte_order]
    if type_ == "string":
        n = count or 1
        unpack_s = struct.Struct((">" if byte_order in ("ABCD", "CDAB") else "<") + f"{n}H").unpack

        def enc_string(v: Any) -> list[int]:
            data = str(v).encode("utf-8")[:2 * n]
            return list(unpack_s(data.ljust(2 * n, b"\x00")))

        return enc_string
    if type_ not in _NUM_FORMAT:
        raise ValueError(f"unknown Modbus type '{type_}'")
    n = REGISTERS_PER_TYPE[type_]
    pack_v = struct.Struct(value_prefix + _NUM_FORMAT[type_]).pack
    unpack_w = struct.Struct(f"{word_prefix}{n}H").unpack
    if type_ in _INT_LIMITS:
        lo, hi = _INT_LIMITS[type_]

        def enc_int(v: Any) -> list[int]:
            if isinstance(v, int):  # exact, also past 2**53 (64-bit counters)
                i = min(hi, max(lo, v))
            else:
                x = float(v)
                i = 0 if math.isnan(x) else int(min(hi, max(lo, round(x)))) if math.isfinite(x) else \
                    (hi if x > 0 else lo)
            return list(unpack_w(pack_v(i)))

        return enc_int
    return lambda v: list(unpack_w(pack_v(float(v))))


def decode(registers: Sequence[int], type_: str, byte_order: str = "ABCD", count: int | None = None,
           bit: int | None = None) -> Any:
    """Decode one value from its registers (convenience; the hot path uses compiled codecs)."""
    return make_decoder(type_, byte_order, count, bit)(registers, 0)


def encode(value: Any, type_: str, byte_order: str = "ABCD", count: int | None = None) -> list[int]:
    """Encode one value into registers (convenience for the simulator and tests)."""
    return make_encoder(type_, byte_order, count)(value)


def _make_converter(dec: Decoder, type_: str, scale: float, offset: float,
                    rng: tuple[float, float] | None) -> Converter:
    """Decode, then the core's value stage (collector/transform.py: scale, finiteness, range), in one closure.

    Only numeric types go through the stage; an undecodable string is `bad_decode`.
    """
    good, bad = Quality.GOOD, Quality.BAD_DECODE
    if type_ not in _NUM_FORMAT:
        if type_ == "string":

            def conv_string(w: Sequence[int], o: int) -> tuple[Any, str]:
                try:
                    return dec(w, o), good
                except UnicodeDecodeError:
                    return None, bad

            return conv_string
        return lambda w, o: (dec(w, o), good)
    return make_converter(dec, scale, offset, rng, "float" if type_ in ("float32", "float64") else "int")


class TagCodec:
    """A tag compiled for the hot path: where it lives, and how to turn its registers into a value."""

    __slots__ = ("convert", "decode", "encode_raw", "is_bits", "name", "scale", "offset", "size", "table",
                 "type", "unit", "address", "bit", "byte_order", "__weakref__")

    def __init__(self, tag: ModbusTag, default_byte_order: str = "ABCD") -> None:
        if tag.table is None or tag.address is None:
            raise ValueError(f"tag '{tag.name}' has no resolved table/address (validate it in a ModbusDevice)")
        self.name = tag.name
        self.unit = tag.unit
        self.type = tag.type
        self.table = tag.table
        self.address = tag.address
        self.size = tag.register_count()
        self.bit = tag.bit
        self.is_bits = tag.table in BIT_TABLES
        self.byte_order = tag.byte_order or default_byte_order
        self.scale = tag.scale
        self.offset = tag.offset
        self.decode = make_decoder(tag.type, self.byte_order, tag.count, tag.bit, self.is_bits)
        self.encode_raw = make_encoder(tag.type, self.byte_order, tag.count)
        self.convert = _make_converter(self.decode, tag.type, tag.scale, tag.offset, tag.range)

    def encode_value(self, value: Any) -> list[int]:
        """Engineering value -> registers: undo scale/offset, then encode (the simulator's direction)."""
        if self.type in _NUM_FORMAT and (self.scale != 1.0 or self.offset != 0.0):
            try:
                value = (float(value) - self.offset) / self.scale
            except (TypeError, ValueError, ZeroDivisionError):
                value = 0
        try:
            return self.encode_raw(value)
        except (TypeError, ValueError, OverflowError, struct.error):
            return [0] * self.size

    def encode_write(self, value: Any) -> list[int]:
        """Engineering value -> registers for a write: `encode_value`'s way, but a value the type cannot hold
        exactly raises ValueError instead of being clamped or zeroed (a clamped setpoint is a wrong setpoint).
        Integer types take a raw value within 1e-9 of a whole number only after undoing scale and offset."""
        if self.type == "bool":
            if not isinstance(value, bool) and value not in (0, 1):
                raise ValueError(f"a bool tag takes true/false or 1/0, not {value!r}")
            return self.encode_raw(bool(value))
        if self.type == "string":
            if not isinstance(value, str):
                raise ValueError(f"a string tag takes a string, not {type(value).__name__}")
            if len(value.encode("utf-8")) > 2 * self.size:
                raise ValueError(f"'{value}' is longer than the tag's {2 * self.size} bytes")
            return self.encode_raw(value)
        if self.type == "raw":
            words = value if isinstance(value, list) else [value]
            if len(words) > self.size or not all(isinstance(w, int) and not isinstance(w, bool) and
                                                 0 <= w <= 0xFFFF for w in words):
                raise ValueError(f"a raw tag takes up to {self.size} integers 0..65535")
            return self.encode_raw(words)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"a {self.type} tag takes a finite number, not {value!r}")
        raw: int | float = value
        if self.scale != 1.0 or self.offset != 0.0:
            raw = (value - self.offset) / self.scale
        if self.type in _INT_LIMITS:
            whole = round(raw)
            if abs(raw - whole) > 1e-9 * max(1.0, abs(raw)):
                raise ValueError(f"{value!r} is not a whole step of scale {self.scale:g}: the device holds "
                                 f"{self.type} raw values")
            lo, hi = _INT_LIMITS[self.type]
            if not lo <= whole <= hi:
                raise ValueError(f"{value!r} is {whole} raw, outside {self.type} ({lo}..{hi})")
            return self.encode_raw(int(whole))
        if self.type == "float32" and abs(raw) > 3.4028234663852886e38:
            raise ValueError(f"{value!r} does not fit a float32")
        return self.encode_raw(float(raw))

    def __repr__(self) -> str:
        return f"TagCodec({self.name!r}, {self.table}@{self.address}, {self.type}/{self.byte_order})"


_COMPILED: weakref.WeakValueDictionary[tuple[Any, ...], TagCodec] = weakref.WeakValueDictionary()


def compile_tag(tag: ModbusTag, default_byte_order: str = "ABCD") -> TagCodec:
    """Compile one tag; `default_byte_order` is the device's, used when the tag does not set its own.

    Equal tag definitions share one codec (a codec is immutable): a hundred devices of one template cost
    the memory of one, which is most of a gateway's per-tag memory (docs/BENCHMARKS.md, memory)."""
    key = (tag.name, tag.unit, tag.type, tag.table, tag.address, tag.count, tag.bit,
           tag.byte_order or default_byte_order, tag.scale, tag.offset, tag.range)
    codec = _COMPILED.get(key)
    if codec is None:
        codec = _COMPILED[key] = TagCodec(tag, default_byte_order)
    return codec
