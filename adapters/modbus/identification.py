"""Identity evidence of a Modbus device: FC 43 / MEI 14 Read Device Identification, and the endpoint's MAC.

FC 43/14 (Modbus Application Protocol V1.1b3, 6.21) answers objects 0x00 VendorName, 0x01 ProductCode,
0x02 MajorMinorRevision (basic) and 0x03..0x06 (regular); a long list comes in parts ("more follows" with the
next object id). Many devices do not implement it and answer exception 01: that is a definite "no
identification", not a fault. The MAC comes from the OS neighbour table (`/proc/net/arp` on Linux) and exists
only for an endpoint on the same link; on loopback or behind a router there is none.

Pure functions here (parse, decode, the ARP table); the requests are sent by `adapters/modbus/tcp.py`
(`MbapClient.read_device_identification`) or pymodbus (`read_device_information`) for RTU lines.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["MEI_DEVICE_IDENTIFICATION", "OBJECT_NAMES", "MeiObjects", "arp_table", "decode_objects", "mac_of",
           "parse_device_identification", "read_identification"]

FUNCTION_CODE = 0x2B
MEI_DEVICE_IDENTIFICATION = 0x0E
READ_BASIC, READ_REGULAR = 0x01, 0x02
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3
MAX_PARTS = 8  # "more follows" answers taken for one identification (a device that never ends stops here)

OBJECT_NAMES = {0x00: "vendor", 0x01: "product_code", 0x02: "revision", 0x03: "vendor_url", 0x04: "product_name",
                0x05: "model_name", 0x06: "user_application_name"}
_HEAD = struct.Struct(">BBBBBB")  # MEI type, read code, conformity, more follows, next object id, count


@dataclass
class MeiObjects:
    """One FC 43/14 answer (the PDU after the function code)."""

    read_code: int
    conformity: int
    more_follows: bool
    next_object_id: int
    information: dict[int, bytes] = field(default_factory=dict)


def parse_device_identification(pdu: bytes) -> MeiObjects:
    """Parse an answer from its MEI type byte on; ValueError when it is not a well-formed 43/14 answer."""
    if len(pdu) < _HEAD.size:
        raise ValueError(f"device identification answer of {len(pdu)} bytes is too short")
    mei, read_code, conformity, more, next_id, count = _HEAD.unpack_from(pdu)
    if mei != MEI_DEVICE_IDENTIFICATION:
        raise ValueError(f"MEI type {mei:#x}, expected 0x0e")
    pos = _HEAD.size
    info: dict[int, bytes] = {}
    for _ in range(count):
        if pos + 2 > len(pdu):
            raise ValueError(f"{count} objects announced, the answer ends after {len(info)}")
        oid, length = pdu[pos], pdu[pos + 1]
        if pos + 2 + length > len(pdu):
            raise ValueError(f"object {oid:#x} of {length} bytes runs past the end of the answer")
        info[oid] = bytes(pdu[pos + 2:pos + 2 + length])
        pos += 2 + length
    if pos != len(pdu):
        raise ValueError(f"{len(pdu) - pos} bytes after the last of {count} objects")
    return MeiObjects(read_code, conformity, more == 0xFF, next_id, info)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").strip("\x00 \t\r\n")


def decode_objects(information: Mapping[int, Any]) -> dict[str, str]:
    """Object ids -> the names used in the identity record (`vendor`, `product_code`, ...; others `object_0x80`)."""
    out: dict[str, str] = {}
    for oid in sorted(information):
        raw = information[oid]
        if isinstance(raw, list):  # pymodbus: an object repeated in an answer
            raw = b"".join(raw)
        out[OBJECT_NAMES.get(oid, f"object_{oid:#04x}")] = _text(bytes(raw))
    return out


class _Answer(Protocol):
    """An FC 43 answer: pymodbus's ReadDeviceInformationResponse / ExceptionResponse or tcp.MeiAnswer."""

    @property
    def exception_code(self) -> int: ...
    def isError(self) -> bool: ...


Request = Callable[[int, int], Awaitable[Any]]  # (read code, object id) -> answer


async def read_identification(request: Request) -> dict[str, Any]:
    """Ask for the regular identification (a device at basic level answers its basic objects), follow "more
    follows", and return the identity keys: `fc43` ("ok" or "unsupported (exception NN)") and the objects.
    A device that refuses the regular level with exception 03 is asked for the basic one."""
    read_code, object_id = READ_REGULAR, 0
    info: dict[int, Any] = {}
    for _ in range(MAX_PARTS):
        answer = await request(read_code, object_id)
        if answer.isError():
            code = int(answer.exception_code)
            if code == ILLEGAL_VALUE and read_code == READ_REGULAR and not info:
                read_code = READ_BASIC
                continue
            if info:
                break  # keep what the first parts said
            return {"fc43": f"unsupported (exception {code:02d})"}
        info.update(answer.information)
        if not getattr(answer, "more_follows", 0) or answer.next_object_id <= object_id:
            break
        object_id = answer.next_object_id
    return {"fc43": "ok", **decode_objects(info)}


# ------------------------------------------------------------------------------------------- MAC

ARP_TABLE = Path("/proc/net/arp")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def arp_table(text: str) -> dict[str, str]:
    """IP -> MAC from the text of /proc/net/arp (complete entries only: flags 0x2, a real address)."""
    out: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 4:
            continue
        ip, flags, mac = cols[0], cols[2], cols[3].lower()
        try:
            complete = int(flags, 16) & 0x2
        except ValueError:
            continue
        if complete and _MAC.match(mac) and mac != "00:00:00:00:00:00":
            out[ip] = mac
    return out


def mac_of(ip: str, table: Path = ARP_TABLE) -> tuple[bool, str | None]:
    """(known, MAC) of an IPv4 address: (True, MAC) when the neighbour table has a complete entry, (True, None)
    for loopback (there is no MAC), (False, None) otherwise: off-link, an entry that expired, or an OS without
    the table. "Not found" is not evidence of anything, so it never reads as a change of device."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False, None
    if addr.is_loopback:
        return True, None
    try:
        text = table.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False, None
    mac = arp_table(text).get(str(addr))
    return mac is not None, mac
