"""The MC protocol 3E binary frame: encode requests and answers, decode their headers. Pure; no I/O.

Request:  50 00 | network | PC | module I/O (LE16) | station | length (LE16) | timer (LE16) | command (LE16) |
          subcommand (LE16) | data...            (length counts from the timer to the end)
Answer:   D0 00 | network | PC | module I/O (LE16) | station | length (LE16) | end code (LE16) | data...
          (length counts from the end code; an error answer's data is 9 bytes of error information)

Batch read (0401, subcommand 0000 = word units) data: device number (LE24) | device code | points (LE16);
the answer's data is `points` words, little-endian. Batch write (1401) data: the same head, then the values:
in word units (0000) `points` words little-endian, in bit units (0001) one nibble a point, the first point in
the high nibble (an odd count padded with a 0 nibble); the answer has no data. Read CPU model (0101/0000): no data; the answer holds the
model name (16 ASCII bytes, space padded) and the model code (LE16). The 3E frame has no serial number: an
answer can only be told from another by its place in the stream (see client.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ANSWER_HEADER", "BATCH_READ", "BATCH_WRITE", "CPU_MODEL", "HEADER_SIZE", "MAX_WORDS", "Route", "encode_answer",
           "encode_cpu_model", "encode_read", "encode_write_bits", "encode_write_words", "decode_request"]

BATCH_READ = 0x0401
BATCH_WRITE = 0x1401
BIT_UNITS = 0x0001
MAX_BITS = 7168  # batch write in bit units
CPU_MODEL = 0x0101
WORD_UNITS = 0x0000
MAX_WORDS = 960  # batch read in word units, Q/L/iQ-R/iQ-F
REQUEST_SUBHEADER = b"\x50\x00"
ANSWER_SUBHEADER = b"\xd0\x00"

_REQUEST = struct.Struct("<2sBBHBHHHH")  # subheader, net, pc, io, station, length, timer, command, subcommand
_READ = struct.Struct("<2sBBHBHHHHHBBH")  # + device number low 16, high 8, device code, points
ANSWER_HEADER = struct.Struct("<2sBBHBHH")  # subheader, net, pc, io, station, length, end code
HEADER_SIZE = 9  # up to and with the length field: the length counts what follows
CPU_MODEL_DATA = 18  # model name 16 + model code 2


@dataclass(frozen=True)
class Route:
    """Where a request goes (the answer echoes it): the connected station by default."""

    network: int = 0
    pc: int = 0xFF
    module_io: int = 0x03FF
    station: int = 0


def timer_units(timeout: float) -> int:
    """The monitoring timer (units of 250 ms): how long the PLC may take before it answers an error itself."""
    return max(1, min(0xFFFF, int(timeout * 4)))


def encode_read(route: Route, code: int, number: int, points: int, timer: int = 8) -> bytes:
    """Batch read in word units (0401/0000) of `points` words from `number` of device `code`."""
    if not 1 <= points <= MAX_WORDS:
        raise ValueError(f"1 <= points {points} <= {MAX_WORDS}")
    if not 0 <= number <= 0xFFFFFF:
        raise ValueError(f"device number {number} does not fit 3 bytes")
    return _READ.pack(REQUEST_SUBHEADER, route.network, route.pc, route.module_io, route.station, 12, timer,
                      BATCH_READ, WORD_UNITS, number & 0xFFFF, number >> 16, code, points)


def _write_head(route: Route, subcommand: int, code: int, number: int, points: int, size: int, timer: int) -> bytes:
    if not 0 <= number <= 0xFFFFFF:
        raise ValueError(f"device number {number} does not fit 3 bytes")
    return _READ.pack(REQUEST_SUBHEADER, route.network, route.pc, route.module_io, route.station, 12 + size, timer,
                      BATCH_WRITE, subcommand, number & 0xFFFF, number >> 16, code, points)


def encode_write_words(route: Route, code: int, number: int, words: list[int], timer: int = 8) -> bytes:
    """Batch write in word units (1401/0000) of `words` (each 0..65535) from `number` of device `code`."""
    if not 1 <= len(words) <= MAX_WORDS:
        raise ValueError(f"1 <= points {len(words)} <= {MAX_WORDS}")
    data = struct.pack(f"<{len(words)}H", *words)
    return _write_head(route, WORD_UNITS, code, number, len(words), len(data), timer) + data


def encode_write_bits(route: Route, code: int, number: int, bits: list[bool], timer: int = 8) -> bytes:
    """Batch write in bit units (1401/0001) of `bits` from point `number` of bit device `code`."""
    if not 1 <= len(bits) <= MAX_BITS:
        raise ValueError(f"1 <= points {len(bits)} <= {MAX_BITS}")
    padded = [1 if b else 0 for b in bits] + [0]
    data = bytes(padded[i] << 4 | padded[i + 1] for i in range(0, len(bits), 2))
    return _write_head(route, BIT_UNITS, code, number, len(bits), len(data), timer) + data


def encode_cpu_model(route: Route, timer: int = 8) -> bytes:
    return _REQUEST.pack(REQUEST_SUBHEADER, route.network, route.pc, route.module_io, route.station, 6, timer,
                         CPU_MODEL, 0)


def encode_answer(route: Route, end_code: int, data: bytes = b"") -> bytes:
    """An answer (the simulator's side); an error answer's `data` is its 9 bytes of error information."""
    return ANSWER_HEADER.pack(ANSWER_SUBHEADER, route.network, route.pc, route.module_io, route.station,
                              2 + len(data), end_code) + data


@dataclass(frozen=True)
class Request:
    """A decoded request (the simulator's side)."""

    route: Route
    timer: int
    command: int
    subcommand: int
    data: bytes


def decode_request(frame: bytes) -> Request:
    """One whole request frame (its length field already checked by the caller); ValueError if garbled."""
    if len(frame) < _REQUEST.size or frame[:2] != REQUEST_SUBHEADER:
        raise ValueError("not a 3E binary request")
    _sub, net, pc, io, station, length, timer, command, sub = _REQUEST.unpack_from(frame)
    if length != len(frame) - HEADER_SIZE:
        raise ValueError(f"length field {length} for {len(frame) - HEADER_SIZE} bytes")
    return Request(Route(net, pc, io, station), timer, command, sub, frame[_REQUEST.size:])


def request_length(buffer: bytes) -> int | None:
    """The size of the whole frame that starts `buffer`, once its header is in (None before)."""
    if len(buffer) < HEADER_SIZE:
        return None
    return HEADER_SIZE + int.from_bytes(buffer[7:9], "little")


def error_info(route: Route, command: int, subcommand: int) -> bytes:
    """The 9 bytes an error answer carries: the route and the command that failed."""
    return struct.pack("<BBHBHH", route.network, route.pc, route.module_io, route.station, command, subcommand)
