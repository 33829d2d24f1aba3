"""A simulated Siemens S7 CPU: python-snap7's `Server` serving one device's DBs, flags, inputs and outputs.

Every area (and DB) a tag of the device names is registered, from byte 0 to the end of its last tag; bytes
between tags read as 0, so coalesced reads work, and a read past the end answers 0x05 (address out of
range) and a DB no tag names 0x0A (object does not exist), as a real CPU does. A background task ticks the
device's `MachineModel` (the same `sim:` specs as the Modbus and OPC UA simulators) every
`simulate.update_interval` and writes the encoded values in place.

It identifies itself as a simulator in its SZL (what `S7Adapter.identify()` reads): module type
"shopfloor-collector simulator", order number "SIMULATOR", serial number "SIM-<device id>", so a
collector marks it 模拟设备 and never counts it as networked unless `indicators.allow_simulated`.

Writes land as on a CPU: a bit write (transport size BIT) changes that bit alone, a byte write its bytes; a
DB the CPU lacks answers item code 0x0A, a write past the end 0x05, and `refuse_writes(code)` answers every
write with `code` (0x03 access denied). Each write is logged (`writes`) and what a client wrote is held: the
machine model no longer overwrites it (a setpoint stays set).

The server runs its own threads (python-snap7's design); `start()`/`stop()` hand the blocking parts to a
worker thread so the event loop never waits on them. `remove_db()` takes a DB away (tests of a missing DB).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
from collections.abc import Callable
from typing import Any

from snap7.datatypes import S7Area
from snap7.server import Server
from snap7.type import SrvArea

from adapters.s7.codec import encode
from adapters.s7.config import S7Device
from simulators.machine import MachineModel
from simulators.tasks import cancel_tasks

__all__ = ["SIM_MODULE_TYPE", "SIM_ORDER_NUMBER", "S7MachineSim"]

log = logging.getLogger(__name__)
# the library's server warns for every read of an unregistered DB: a simulated missing DB is on purpose
logging.getLogger("snap7.server").setLevel(logging.ERROR)

SIM_MODULE_TYPE = "shopfloor-collector simulator"  # the SZL field holds 32 bytes
SIM_ORDER_NUMBER = "SIMULATOR"
_SRV_AREAS = {"DB": SrvArea.DB, "M": SrvArea.MK, "I": SrvArea.PE, "Q": SrvArea.PA}
_S7_AREAS = {"DB": S7Area.DB, "M": S7Area.MK, "I": S7Area.PE, "Q": S7Area.PA}
_AREA_NAMES = {a: n for n, a in _S7_AREAS.items()}


def _field(text: str, size: int) -> bytes:
    return text.encode("latin-1")[:size - 1].ljust(size, b"\0")


# a write request's one item: function, item count, then the address (spec, length, syntax, transport size,
# count, DB, area, bit address)
_WRITE_ITEM = struct.Struct(">BBBBBBHHB3s")
_BIT = 0x01
WriteHook = Callable[[S7Area, int, int, int, bytes], int]


class _SimServer(Server):
    """The library's server with our SZL identity (its own says a real "CPU 315-2 PN/DP") and writes as a CPU
    answers them (`on_write`): the library's server drops the bit number of a bit write (it would write the
    whole byte) and answers a missing DB with a header error, where a CPU answers an item return code."""

    def __init__(self, device_id: str) -> None:
        super().__init__(log=False)
        self.device_id = device_id
        self.on_write: WriteHook | None = None

    def _handle_write_area(self, request: dict[str, Any], client_address: tuple[str, int]) -> bytes:
        raw = request.get("raw_parameters") or b""
        data = (request.get("data") or {}).get("data", b"")
        if self.on_write is None or len(raw) != _WRITE_ITEM.size or raw[1] != 1:
            answer: bytes = super()._handle_write_area(request, client_address)  # several items: the library's
            return answer
        _fn, _n, _spec, _len, _syntax, size, _count, db, area, address = _WRITE_ITEM.unpack(raw)
        bit_address = int.from_bytes(address, "big")
        try:
            code = self.on_write(S7Area(area), db, bit_address, size, bytes(data))
        except ValueError:
            code = 0x05
        return struct.pack(">BBHHHHBBBBB", 0x32, 0x03, 0, request["sequence"], 2, 1, 0, 0, 0x05, 1, code)

    def _get_szl_data(self, szl_id: int, szl_index: int) -> bytes | None:
        if szl_id == 0x001C:  # component identification, at the offsets real CPUs use
            data = bytearray(210)
            data[6:30] = _field(f"sim {self.device_id}", 24)  # station (AS) name
            data[40:64] = _field(f"sim-{self.device_id}", 24)  # module name
            data[108:134] = _field("shopfloor-collector", 26)
            data[142:166] = _field(f"SIM-{self.device_id}", 24)  # serial number
            data[176:208] = _field(SIM_MODULE_TYPE, 32)
            return bytes(data)
        if szl_id == 0x0011:  # module identification: order number and version
            record = struct.pack(">H", 0x0001) + _field(SIM_ORDER_NUMBER, 20) + bytes([0, 1, 0, 0])
            return struct.pack(">HH", len(record), 1) + record
        result: bytes | None = super()._get_szl_data(szl_id, szl_index)
        return result


class S7MachineSim:
    """One S7 device of a config, served on its endpoint's host and port."""

    def __init__(self, device: S7Device, model: MachineModel | None = None) -> None:
        self.device = device
        self.model = model or MachineModel(device.id, device.simulate, device.tags)
        self.encoding = device.string_encoding
        sizes: dict[tuple[str, int], int] = {}
        for tag in device.tags:
            loc = tag.location
            key = (loc.area, loc.db)
            sizes[key] = max(sizes.get(key, 0), loc.end)
        self.areas: dict[tuple[str, int], bytearray] = {key: bytearray(n) for key, n in sizes.items()}
        self.server: _SimServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._removed: set[tuple[str, int]] = set()
        self._write_lock = threading.Lock()
        # what clients wrote: (area, db, first byte, bit or None, bytes), and the bytes and bits they hold (the
        # machine model no longer overwrites them: a setpoint stays set)
        self.writes: list[tuple[str, int, int, int | None, bytes]] = []
        self.held_bytes: set[tuple[str, int, int]] = set()
        self.held_bits: set[tuple[str, int, int, int]] = set()
        self.write_code: int | None = None  # `refuse_writes`: every write answered with this return code
        self.update()

    # -- values

    def update(self) -> None:
        """Advance the model one tick and write every tag's bytes into its area."""
        self.model.tick()
        value = self.model.value
        server = self.server
        held_bytes, held_bits = self.held_bytes, self.held_bits
        for tag in self.device.tags:
            loc = tag.location
            if (held_bytes or held_bits) and (
                    any((loc.area, loc.db, b) in held_bytes for b in range(loc.start, loc.end))
                    or (loc.bit is not None and (loc.area, loc.db, loc.start, loc.bit) in held_bits)):
                continue
            v = value(tag.name)
            if (tag.scale != 1.0 or tag.offset != 0.0) and isinstance(v, int | float) and not isinstance(v, bool):
                v = (v - tag.offset) / tag.scale  # the engineering value back to what the PLC holds
            raw = encode(loc, v, self.encoding)
            buf = self.areas[(loc.area, loc.db)]
            lock = server.area_locks.get((_S7_AREAS[loc.area], loc.db)) if server is not None else None
            with lock or self._write_lock:
                if loc.type == "BOOL":
                    mask = 1 << (loc.bit or 0)
                    buf[loc.start] = (buf[loc.start] | mask) if raw[0] else (buf[loc.start] & ~mask)
                else:
                    buf[loc.start:loc.end] = raw

    async def _ticker(self) -> None:
        interval = max(0.05, self.device.simulate.update_interval)
        while True:
            await asyncio.sleep(interval)
            try:
                self.update()
            except Exception:  # a bad value must not stop the machine
                log.exception("s7 simulator %s: update failed", self.device.id)

    def _client_write(self, area: S7Area, db: int, bit_address: int, size: int, data: bytes) -> int:
        """A client's write of one item (the server's thread): the return code a CPU answers with."""
        if self.write_code is not None:
            return self.write_code
        name = _AREA_NAMES.get(area)
        if name is None:
            return 0x0A  # an area this CPU does not hold (counters, timers): object does not exist
        key = (name, db if name == "DB" else 0)
        buf = self.areas.get(key)
        if buf is None or key in self._removed:
            return 0x0A  # object does not exist
        start = bit_address >> 3
        server = self.server
        lock = server.area_locks.get((area, key[1])) if server is not None else None
        with lock or self._write_lock:
            if size == _BIT:
                bit = bit_address & 7
                if len(data) != 1 or start >= len(buf):
                    return 0x05 if start >= len(buf) else 0x07
                mask = 1 << bit
                buf[start] = (buf[start] | mask) if data[0] & 1 else (buf[start] & ~mask)
                self.held_bits.add((*key, start, bit))
                self.writes.append((*key, start, bit, bytes(data)))
                return 0xFF
            if not data or start + len(data) > len(buf):
                return 0x05  # address out of range
            buf[start:start + len(data)] = data
            self.held_bytes.update((*key, b) for b in range(start, start + len(data)))
            self.writes.append((*key, start, None, bytes(data)))
        return 0xFF

    # -- control

    def refuse_writes(self, code: int | None = 0x03) -> None:
        """Answer every write with item return code `code` (0x03: access denied, a CPU without PUT/GET or a
        write-protected DB); None accepts writes again."""
        self.write_code = code

    def remove_db(self, db: int) -> None:
        """Take DB `db` away: reads of it answer 0x0A (object does not exist) from now on."""
        self._removed.add(("DB", db))
        if self.server is not None:
            self.server.unregister_area(SrvArea.DB, db)

    async def start(self) -> None:
        if self.server is not None:
            return
        ep = self.device.parsed_endpoint
        server = _SimServer(self.device.id)
        server.host = ep.host
        server.on_write = self._client_write
        for (area, db), buf in self.areas.items():
            if (area, db) not in self._removed:
                server.register_area(_SRV_AREAS[area], db, buf)
        await asyncio.to_thread(server.start, ep.port)
        self.server = server
        self._task = asyncio.create_task(self._ticker(), name=f"s7sim:{self.device.id}")

    async def stop(self) -> None:
        """Close the listener; the connections of collectors end within a fraction of a second."""
        task, self._task = self._task, None
        await cancel_tasks(task)
        server, self.server = self.server, None
        if server is not None:
            await asyncio.to_thread(server.stop)

    def stats(self) -> dict[str, Any]:
        return {"areas": len(self.areas), "running": self.server is not None}
