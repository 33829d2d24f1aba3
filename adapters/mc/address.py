"""MC protocol device addresses as PLC programmers write them: `D100`, `D100.3`, `M10`, `X1F`, `ZR2000`.

A device code picks the memory (D data registers, M internal relays, X inputs, ...) and how its numbers are
written: X, Y, B and W in hexadecimal (`X1F` is point 31), the others in decimal; on FX5/iQ-F CPUs X and Y are
octal (`X17` is point 15), which a device says with `xy_notation: octal`. `D100.3` is bit 3 of the word D100
(the bit in hexadecimal, 0-F, as GX Works writes it).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["DEVICES", "EXPECTED_FORMS", "MAX_NUMBER", "DeviceCode", "McAddress", "parse_address"]


@dataclass(frozen=True)
class DeviceCode:
    """One device code of the 3E binary frame (Q/L series codes, which iQ-R and iQ-F also answer)."""

    name: str
    code: int
    base: int  # how its numbers are written: 10 or 16 (X/Y may be 8, see xy_notation)
    is_bit: bool  # a bit device (M, X, ...): one point is one bit; else a word device (D, W, ...)
    what: str


DEVICES: dict[str, DeviceCode] = {d.name: d for d in (
    DeviceCode("SM", 0x91, 10, True, "special relay"),
    DeviceCode("SD", 0xA9, 10, False, "special register"),
    DeviceCode("X", 0x9C, 16, True, "input"),
    DeviceCode("Y", 0x9D, 16, True, "output"),
    DeviceCode("M", 0x90, 10, True, "internal relay"),
    DeviceCode("L", 0x92, 10, True, "latch relay"),
    DeviceCode("B", 0xA0, 16, True, "link relay"),
    DeviceCode("D", 0xA8, 10, False, "data register"),
    DeviceCode("W", 0xB4, 16, False, "link register"),
    DeviceCode("R", 0xAF, 10, False, "file register (block)"),
    DeviceCode("ZR", 0xB0, 10, False, "file register (serial)"),
)}
BY_CODE = {d.code: d for d in DEVICES.values()}
MAX_NUMBER = 0xFFFFFF  # the 3-byte device number of the 3E frame

EXPECTED_FORMS = ("a device code and number: D100, W1A (hex), R0, ZR2000, SD210 (words), D100.3 (bit 3 of D100, "
                  "bit 0-F), M10, L5, SM400, X1F, Y20, B3F (bits; X/Y/B/W hexadecimal, X/Y octal with "
                  "xy_notation: octal)")

_FORM = re.compile(r"^(SM|SD|ZR|D|W|R|M|X|Y|B|L)([0-9A-F]+)(?:\.([0-9A-F]))?$")
_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789ABCDEF"}
_BASE_NAME = {8: "octal", 10: "decimal", 16: "hexadecimal"}


@dataclass(frozen=True)
class McAddress:
    """A parsed address: the device, the point number (as sent on the wire) and, for `D100.3`, the bit."""

    device: DeviceCode
    number: int
    bit: int | None = None

    @property
    def is_bit(self) -> bool:
        """The tag is one bit: a point of a bit device or a bit of a word."""
        return self.device.is_bit or self.bit is not None

    def word(self) -> int:
        """The word that holds the address, counted in words of its device (a bit device: 16 points a word)."""
        return self.number // 16 if self.device.is_bit else self.number

    def __str__(self) -> str:
        return f"{self.device.name}{self.number}" + (f".{self.bit:X}" if self.bit is not None else "")


@functools.lru_cache(maxsize=65536)
def parse_address(text: str, xy_base: int = 16) -> McAddress:
    """Parse `D100`, `D100.3`, `X1F`, ...; ValueError saying what is wrong and the expected forms."""
    raw = str(text).strip()
    m = _FORM.match(raw.upper())
    if m is None:
        raise ValueError(f"'{raw}' is not an MC device address; use {EXPECTED_FORMS}")
    name, digits, bit = m.groups()
    device = DEVICES[name]
    base = xy_base if name in ("X", "Y") else device.base
    if any(c not in _DIGITS[base] for c in digits):
        raise ValueError(f"'{raw}': {name} ({device.what}) numbers are {_BASE_NAME[base]}, '{digits}' is not; "
                         f"use {EXPECTED_FORMS}")
    number = int(digits, base)
    if number > MAX_NUMBER:
        raise ValueError(f"'{raw}': the device number is above {MAX_NUMBER} (the largest a 3E frame can carry)")
    if bit is not None and device.is_bit:
        raise ValueError(f"'{raw}': {name} is a bit device, its points have no bits; write {name}{digits} alone")
    return McAddress(device, number, int(bit, 16) if bit is not None else None)
