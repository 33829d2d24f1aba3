"""S7 addresses as PLC programmers write them (STEP 7 / TIA Portal absolute addressing) and S7 data types.

python-snap7's own `parse_tag` takes only nodeS7 (`DB10,X0.3`) and PLC4X (`%DB10.DBD4:REAL`) syntax and
refuses the form users copy out of a symbol table (`DB10.DBD4`, `MW20`, `VD100`): that form is parsed here
and mapped onto the library's areas. Pure: no I/O.

Forms (case-insensitive, an optional leading `%` as TIA Portal shows it):
- `DB10.DBX0.3` (bit), `DB10.DBB1` (byte), `DB10.DBW2` (word), `DB10.DBD4` (double word);
- `M10.1`, `MB10`, `MW20`, `MD24` (flags / Merker);
- `I0.0` or `E0.0`, `IB0`/`EB0`, `IW0`/`EW0`, `ID0`/`ED0` (inputs, English or German mnemonics);
- `Q0.1` or `A0.1`, `QB`/`AB`, `QW`/`AW`, `QD`/`AD` (outputs);
- `V100.0`, `VB100`, `VW100`, `VD104` (S7-200 SMART's V memory, which is DB1 on the wire).

The operand size (X/B/W/D) gives the default type (BOOL/BYTE/WORD/DWORD); `type:` overrides it with a type
of the same width (`MW20` + INT, `DB10.DBD4` + REAL). Types without an operand size letter of their own (LREAL,
STRING[n] of any length, WSTRING[n], DATE_AND_TIME, DTL, LINT, ...) start at a byte address: `DB10.DBB20` + `type: LREAL`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ADDRESS_FORMS", "MAX_BYTE", "S7Location", "TYPE_NAMES", "parse_address", "parse_type", "type_size"]

MAX_BYTE = (1 << 21) - 1
"""The highest byte offset an S7 read can address (a 24-bit bit address)."""

ADDRESS_FORMS = ("DB<n>.DBX<byte>.<bit>, DB<n>.DBB/DBW/DBD<byte>, M<byte>.<bit>, MB/MW/MD<byte>, "
                 "I/E<byte>.<bit>, IB/IW/ID<byte>, Q/A<byte>.<bit>, QB/QW/QD<byte>, "
                 "V<byte>.<bit>, VB/VW/VD<byte> (e.g. DB10.DBD4, MW20, I0.0, VD104)")

# type -> width in bytes (strings: computed from their length); the width an operand size letter implies
_FIXED = {"BOOL": 0, "BYTE": 1, "CHAR": 1, "SINT": 1, "USINT": 1, "WORD": 2, "INT": 2, "UINT": 2,
          "DWORD": 4, "DINT": 4, "UDINT": 4, "REAL": 4, "LREAL": 8, "LINT": 8, "ULINT": 8, "LWORD": 8,
          "DATE_AND_TIME": 8, "DTL": 12}
_ALIASES = {"DT": "DATE_AND_TIME"}
TYPE_NAMES = (*_FIXED, "STRING[n]", "WSTRING[n]")
_LETTER_WIDTH = {"B": 1, "W": 2, "D": 4}
_AT_BYTE = frozenset({"LREAL", "LINT", "ULINT", "LWORD", "DATE_AND_TIME", "DTL", "STRING", "WSTRING"})
"""Types without an operand size letter of their own: they start at a byte address (DBB, MB, VB)."""
_DEFAULT_TYPE = {"X": "BOOL", "B": "BYTE", "W": "WORD", "D": "DWORD"}
_STRING = re.compile(r"^(W?STRING)(?:\s*\[\s*(\d+)\s*\])?$")
DEFAULT_STRING_LENGTH = 254

_DB = re.compile(r"^DB(\d+)\.DB(?:X(\d+)\.(\d+)|([BWD])(\d+))$")
_AREA = re.compile(r"^([MIEQAV])(?:(\d+)\.(\d+)|([BWD])(\d+))$")
_AREA_NAMES = {"M": "M", "I": "I", "E": "I", "Q": "Q", "A": "Q", "V": "DB"}


@dataclass(frozen=True, slots=True)
class S7Location:
    """Where a tag is read and how it is decoded: `area` is DB, M, I or Q; `db` the DB number (0 outside DBs);
    `start` the first byte; `bit` 0..7 for BOOL; `type` the canonical type name; `size` bytes read; `length`
    the declared characters of a STRING/WSTRING."""

    area: str
    db: int
    start: int
    bit: int | None
    type: str
    size: int
    length: int | None = None

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.start + self.size

    def describe(self) -> str:
        """Where the tag is read, as `check --tags` prints it: `DB10 bytes 4..7`."""
        where = f"DB{self.db}" if self.area == "DB" else self.area
        if self.bit is not None:
            return f"{where} byte {self.start} bit {self.bit}"
        return f"{where} byte {self.start}" if self.size == 1 else f"{where} bytes {self.start}..{self.end - 1}"


def parse_type(text: str) -> tuple[str, int, int | None]:
    """`REAL` -> ('REAL', 4, None); `STRING[20]` -> ('STRING', 22, 20); ValueError naming the known types."""
    name = text.strip().upper()
    name = _ALIASES.get(name, name)
    if name in _FIXED:
        return name, max(1, _FIXED[name]), None
    m = _STRING.match(name)
    if m:
        length = int(m.group(2)) if m.group(2) is not None else DEFAULT_STRING_LENGTH
        if m.group(1) == "STRING":
            if not 1 <= length <= 254:
                raise ValueError(f"STRING[{length}]: an S7 STRING holds 1..254 characters")
            return "STRING", length + 2, length
        if not 1 <= length <= 16382:
            raise ValueError(f"WSTRING[{length}]: an S7 WSTRING holds 1..16382 characters")
        return "WSTRING", 2 * length + 4, length
    raise ValueError(f"type '{text}' is not an S7 type; use one of {', '.join(TYPE_NAMES)}")


def type_size(type_name: str) -> int:
    """Bytes a value of `type_name` occupies."""
    return parse_type(type_name)[1]


def parse_address(address: str, type_text: str | None = None) -> S7Location:
    """Parse `address` (and an explicit `type`) into an `S7Location`; ValueError saying what is wrong and the
    accepted forms."""
    text = address.strip().upper().removeprefix("%").replace(" ", "")
    m = _DB.match(text)
    if m:
        area, db = "DB", int(m.group(1))
        bit_byte, bit, letter, byte = m.group(2), m.group(3), m.group(4), m.group(5)
        if not 1 <= db <= 65535:
            raise ValueError(f"address '{address}': DB numbers run from 1 to 65535")
    else:
        m = _AREA.match(text)
        if not m:
            raise ValueError(f"address '{address}' is not an S7 address; use {ADDRESS_FORMS}")
        area = _AREA_NAMES[m.group(1)]
        db = 1 if m.group(1) == "V" else 0
        bit_byte, bit, letter, byte = m.group(2), m.group(3), m.group(4), m.group(5)
    if bit_byte is not None:
        start, bit_no, letter = int(bit_byte), int(bit), "X"
        if bit_no > 7:
            raise ValueError(f"address '{address}': the bit after the byte is 0..7")
    else:
        start, bit_no = int(byte), None
    if start > MAX_BYTE:
        raise ValueError(f"address '{address}': byte {start} is past the last addressable byte {MAX_BYTE}")
    if type_text is None:
        type_name, size, length = _DEFAULT_TYPE[letter], _LETTER_WIDTH.get(letter, 1), None
    else:
        type_name, size, length = parse_type(type_text)
        _check_width(address, letter, bit_no, type_name, size)
    if type_name != "BOOL":
        bit_no = None
    if start + size - 1 > MAX_BYTE:
        raise ValueError(f"address '{address}': {type_name} of {size} bytes runs past byte {MAX_BYTE}")
    return S7Location(area, db, start, bit_no, type_name, size, length)


def _check_width(address: str, letter: str, bit: int | None, type_name: str, size: int) -> None:
    """The explicit type must fit the operand size the address names."""
    if type_name == "BOOL":
        if letter != "X":
            raise ValueError(f"address '{address}': a BOOL is one bit; write it as <byte>.<bit> "
                             "(e.g. DB10.DBX0.3, M10.1)")
        return
    if letter == "X":
        raise ValueError(f"address '{address}' is a bit; a {type_name} needs a byte address "
                         f"({_example(size)}) or type BOOL")
    width = _LETTER_WIDTH[letter]
    if type_name in _AT_BYTE:
        if letter != "B":
            raise ValueError(f"address '{address}': a {type_name} ({size} bytes) starts at a byte address: "
                             "write DBB/MB/VB<byte> (e.g. DB10.DBB20)")
        return
    if size != width:
        raise ValueError(f"address '{address}' names {width} byte(s) but a {type_name} is {size}: "
                         f"write {_example(size)}")


def _example(size: int) -> str:
    """The address forms for a value of `size` bytes."""
    letter = {1: "B", 2: "W", 4: "D"}.get(size, "B")
    return f"DB<n>.DB{letter}<byte>, M{letter}<byte>, V{letter}<byte> (e.g. DB10.DB{letter}4)"
