"""Test helpers for the MC adapter: a 3E request encoder written from the manual with `struct` (not ours),
and a device config builder."""

from __future__ import annotations

import struct
from typing import Any

from collector.config import parse_config


def read_request(number: int, code: int, points: int, timer: int = 8, network: int = 0, pc: int = 0xFF,
                 io: int = 0x03FF, station: int = 0) -> bytes:
    """Batch read, word units (0401/0000), 3E binary, as the MELSEC Communication Protocol manual draws it."""
    body = struct.pack("<HHH", timer, 0x0401, 0x0000) + number.to_bytes(3, "little") + bytes([code]) \
        + struct.pack("<H", points)
    return b"\x50\x00" + struct.pack("<BBHB", network, pc, io, station) + struct.pack("<H", len(body)) + body


def answer(words: list[int], end_code: int = 0, network: int = 0, pc: int = 0xFF, io: int = 0x03FF,
           station: int = 0) -> bytes:
    """An answer frame: good (`words`) or an error (9 bytes of error information)."""
    data = struct.pack(f"<{len(words)}H", *words) if end_code == 0 else \
        struct.pack("<BBHBHH", network, pc, io, station, 0x0401, 0)
    return b"\xd0\x00" + struct.pack("<BBHBHH", network, pc, io, station, 2 + len(data), end_code) + data


def config(port: int, tags: list[dict[str, Any]], **device: Any) -> Any:
    return parse_config({"site": {"enterprise_id": "t"}, "devices": [
        {"id": "plc", "protocol": "mc", "endpoint": f"mc://127.0.0.1:{port}", "tags": tags, **device}]})


def signed(words: list[int]) -> list[int]:
    """pymcprotocol writes signed 16-bit values."""
    return [w - 0x10000 if w & 0x8000 else w for w in words]
