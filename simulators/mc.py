"""A simulated Mitsubishi PLC speaking the MC protocol 3E binary frame over TCP, for `protocol: mc` devices.

The memory of each device code (D, W, R, ZR, M, X, Y, B, L, SM, SD) is sized like an FX5U's (`CAPACITY`; ZR,
which an FX5U lacks, as a Q CPU's), so a read past the end answers end code C056 like the real CPU, and a
device code the simulated CPU does not have answers C05B (`set_capacity(name, 0)` removes one). A background
task ticks the device's `MachineModel` and writes the tags that have a `sim:` spec; the other tags' memory is
left to clients, so a test can write values with an independent client (pymcprotocol) and read them back.

Commands: batch read and batch write (0401 / 1401) in word units (subcommand 0000) and bit units (0001), and
Read CPU model (0101), whose model name says it is a simulator (`SIM_CPU_MODEL`): a collector marks the
device 模拟设备 and never counts it as networked unless `indicators.allow_simulated`. `set_cpu_model(None)`
makes it answer C059 (command not supported) instead, like the many MC modules without it. Other commands
answer C059. A batch write is logged (`writes`) and what it wrote is held: the machine model no longer
overwrites it (a setpoint stays set); `refuse_writes(end_code)` answers every write with an end code (0055:
a CPU in RUN with online change disabled). `simulate: {delay: s, silent: true}` (or `set_delay`,
`set_silent` at run time) answer late or never. `stop()` closes the listener and every connection; `start()`
serves again (a power cycle).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from array import array
from typing import Any

from adapters.mc.address import BY_CODE, DEVICES, McAddress
from adapters.mc.codec import encode_words
from adapters.mc.config import McDevice, tag_words
from adapters.mc.frame import (
    BATCH_READ,
    CPU_MODEL,
    MAX_WORDS,
    Route,
    decode_request,
    encode_answer,
    error_info,
    request_length,
)
from simulators.machine import MachineModel
from simulators.tasks import cancel_tasks

__all__ = ["CAPACITY", "SIM_CPU_MODEL", "McServerSim"]

log = logging.getLogger(__name__)

BATCH_WRITE = 0x1401
CAPACITY = {"D": 8000, "W": 512, "R": 32768, "ZR": 65536, "SD": 12000, "M": 7680, "L": 7680, "B": 256,
            "X": 1024, "Y": 1024, "SM": 10000}
"""Points per device code (an FX5U's, plus ZR)."""
SIM_CPU_MODEL = ("MC-SIMULATOR", 0x0001)
"""What Read CPU model answers: the name says simulator (collector/indicators/identity.py)."""
END_OUT_OF_RANGE = 0xC056
END_NO_DEVICE = 0xC05B
END_NOT_SUPPORTED = 0xC059
END_POINTS = 0xC051
END_LENGTH = 0xC061
END_BIT_UNITS = 0xC05C  # bit units for a word device
_MAX_BITS = 7168
_MAX_REQUEST = 9 + 12 + max(2 * MAX_WORDS, (_MAX_BITS + 1) // 2)  # the largest batch write served


class McMemory:
    """The device memory: words (array of uint16) for word devices, one byte 0/1 per point for bit devices."""

    def __init__(self, capacity: dict[str, int]) -> None:
        self.capacity = dict(capacity)
        self.words: dict[str, array[int]] = {}
        self.bits: dict[str, bytearray] = {}
        for name, n in capacity.items():
            if DEVICES[name].is_bit:
                self.bits[name] = bytearray(n)
            else:
                self.words[name] = array("H", bytes(2 * n))

    def check(self, code: int, number: int, points: int, in_words: bool) -> tuple[str, int]:
        """(device name, 0) when the range may be served, else (name or "", end code)."""
        device = BY_CODE.get(code)
        if device is None or not self.capacity.get(device.name):
            return "", END_NO_DEVICE
        size = points * 16 if in_words and device.is_bit else points
        if number + size > self.capacity[device.name]:
            return device.name, END_OUT_OF_RANGE
        return device.name, 0

    def read_words(self, name: str, number: int, points: int) -> bytes:
        if name in self.words:
            return self.words[name][number:number + points].tobytes()
        bits = self.bits[name]
        out = array("H", bytes(2 * points))
        for w in range(points):
            base = number + 16 * w
            v = 0
            for i, b in enumerate(bits[base:base + 16]):
                v |= b << i
            out[w] = v
        return out.tobytes()

    def write_words(self, name: str, number: int, words: array[int]) -> None:
        if name in self.words:
            self.words[name][number:number + len(words)] = words
            return
        bits = self.bits[name]
        for w, v in enumerate(words):
            for i in range(16):
                bits[number + 16 * w + i] = v >> i & 1

    def read_bits(self, name: str, number: int, points: int) -> list[int]:
        if name in self.bits:
            return list(self.bits[name][number:number + points])
        raise KeyError(name)

    def write_bits(self, name: str, number: int, values: list[int]) -> None:
        self.bits[name][number:number + len(values)] = bytes(values)


class _Connection(asyncio.Protocol):
    def __init__(self, sim: McServerSim) -> None:
        self.sim = sim
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sim.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sim.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            size = request_length(self.buffer)
            if size is not None and (size > _MAX_REQUEST or self.buffer[:2] != b"\x50\x00"):
                log.debug("mc-sim: not a 3E binary request: %s", self.buffer[:16].hex())
                if self.transport is not None:
                    self.transport.close()  # a real CPU drops such a connection too
                return
            if size is None or len(self.buffer) < size:
                return
            frame, self.buffer = self.buffer[:size], self.buffer[size:]
            try:
                answer = self.sim.answer(frame)
            except ValueError as exc:
                log.debug("mc-sim: garbled request %s: %s", frame.hex(), exc)
                if self.transport is not None:
                    self.transport.close()
                return
            sim = self.sim
            if sim.silent or self.transport is None:
                continue  # a PLC that hangs: the request is never answered
            if sim.delay:
                asyncio.get_running_loop().call_later(sim.delay, self._send, answer)
            else:
                self.transport.write(answer)

    def _send(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)


class McServerSim:
    """Serve one MC device on its endpoint (`mc://host:port`); `model` is its MachineModel."""

    def __init__(self, device: McDevice, *, capacity: dict[str, int] | None = None) -> None:
        self.device = device
        self.endpoint = device.parsed_endpoint
        self.model = MachineModel(device.id, device.simulate, device.tags)
        self.memory = McMemory(capacity or CAPACITY)
        self.cpu_model: tuple[str, int] | None = SIM_CPU_MODEL
        self.delay = device.simulate.delay  # s before each answer (`simulate: {delay: ...}`)
        self.silent = device.simulate.silent  # answer nothing (`simulate: {silent: true}`)
        self.connections: set[_Connection] = set()
        self.requests = 0
        # client writes: (subcommand, device name, head number, points), and the points and words they hold:
        # the machine model no longer overwrites them (a setpoint stays set)
        self.writes: list[tuple[int, str, int, int]] = []
        self.held: set[tuple[str, int]] = set()
        self.write_end_code = 0  # `refuse_writes`: every write answered with this end code
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        xy = device.xy_base
        self._writers = []
        for t in device.tags:
            if t.sim is not None:
                addr, type_ = t.parsed(xy), t.value_type(xy)
                self._writers.append((t.name, addr, type_, t.scale, t.offset, self._cells(addr, type_)))

    @staticmethod
    def _cells(addr: McAddress, type_: str) -> list[tuple[str, int]]:
        """The points (bit devices) or words a tag occupies, as `held` counts them."""
        if addr.device.is_bit:
            return [(addr.device.name, addr.number)]
        return [(addr.device.name, addr.number + k) for k in range(tag_words(type_))]

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- memory

    def set_capacity(self, name: str, points: int) -> None:
        """Resize a device code (0: the CPU has no such device, reads answer C05B)."""
        self.memory.capacity[name] = points
        if DEVICES[name].is_bit:
            self.memory.bits[name] = (self.memory.bits.get(name, bytearray()) + bytearray(points))[:points]
        else:
            old = self.memory.words.get(name, array("H"))
            self.memory.words[name] = (old + array("H", bytes(2 * points)))[:points]

    def set_cpu_model(self, model: tuple[str, int] | None) -> None:
        self.cpu_model = model

    def set_silent(self, device_id: str, silent: bool = True) -> None:
        """Stop (or resume) answering; the connections stay open (the Workshop's signature)."""
        self.silent = silent

    def set_delay(self, device_id: str, seconds: float) -> None:
        self.delay = seconds

    def refuse_writes(self, end_code: int = 0x0055) -> None:
        """Answer every batch write with `end_code` (0x0055: a CPU in RUN with online change disabled); 0
        accepts writes again."""
        self.write_end_code = end_code

    def update(self) -> None:
        """Tick the model and write every `sim:` tag's value (scale and offset undone) into memory."""
        self.model.tick()
        mem = self.memory
        held = self.held
        for name, addr, type_, scale, offset, cells in self._writers:
            if held and any(c in held for c in cells):
                continue
            value = self.model.value(name)
            if type_ not in ("BOOL",) and not type_.startswith("STRING") and (scale != 1.0 or offset != 0.0):
                with contextlib.suppress(TypeError, ValueError, ZeroDivisionError):
                    value = (float(value) - offset) / scale
            words = encode_words(type_, value)
            dev = addr.device.name
            if not mem.capacity.get(dev):
                continue
            if addr.device.is_bit:
                if addr.number < mem.capacity[dev]:
                    mem.bits[dev][addr.number] = words[0]
            elif addr.bit is not None:
                store = mem.words[dev]
                if addr.number < len(store):
                    mask = 1 << addr.bit
                    store[addr.number] = (store[addr.number] | mask) if words[0] else (store[addr.number] & ~mask)
            elif addr.number + len(words) <= mem.capacity[dev]:
                mem.words[dev][addr.number:addr.number + len(words)] = array("H", words)

    # -- requests

    def answer(self, frame: bytes) -> bytes:
        req = decode_request(frame)
        self.requests += 1
        route = req.route
        if req.command == BATCH_READ and req.subcommand in (0, 1):
            return self._read(route, req.data, req.subcommand == 0)
        if req.command == BATCH_WRITE and req.subcommand in (0, 1):
            return self._write(route, req.data, req.subcommand == 0)
        if req.command == CPU_MODEL and req.subcommand == 0 and self.cpu_model is not None:
            name, code = self.cpu_model
            return encode_answer(route, 0, name.encode("ascii").ljust(16, b" ")[:16] + struct.pack("<H", code))
        return self._error(route, END_NOT_SUPPORTED, req.command, req.subcommand)

    @staticmethod
    def _error(route: Route, end_code: int, command: int, subcommand: int) -> bytes:
        return encode_answer(route, end_code, error_info(route, command, subcommand))

    @staticmethod
    def _head(data: bytes) -> tuple[int, int, int]:
        if len(data) < 6:
            raise ValueError("batch request without device and points")
        return int.from_bytes(data[0:3], "little"), data[3], int.from_bytes(data[4:6], "little")

    def _read(self, route: Route, data: bytes, in_words: bool) -> bytes:
        number, code, points = self._head(data)
        sub = 0 if in_words else 1
        if len(data) != 6:
            return self._error(route, END_LENGTH, BATCH_READ, sub)
        if not 1 <= points <= (MAX_WORDS if in_words else _MAX_BITS):
            return self._error(route, END_POINTS, BATCH_READ, sub)
        name, end = self.memory.check(code, number, points, in_words)
        if end:
            return self._error(route, end, BATCH_READ, sub)
        if in_words:
            return encode_answer(route, 0, self.memory.read_words(name, number, points))
        if name not in self.memory.bits:
            return self._error(route, END_NO_DEVICE, BATCH_READ, sub)
        bits = self.memory.read_bits(name, number, points) + [0]
        return encode_answer(route, 0, bytes(bits[i] << 4 | bits[i + 1] for i in range(0, points, 2)))

    def _write(self, route: Route, data: bytes, in_words: bool) -> bytes:
        number, code, points = self._head(data)
        sub = 0 if in_words else 1
        if self.write_end_code:
            return self._error(route, self.write_end_code, BATCH_WRITE, sub)
        if not 1 <= points <= (MAX_WORDS if in_words else _MAX_BITS):
            return self._error(route, END_POINTS, BATCH_WRITE, sub)
        name, end = self.memory.check(code, number, points, in_words)
        if end:
            return self._error(route, end, BATCH_WRITE, sub)
        body = data[6:]
        if in_words:
            if len(body) != 2 * points:
                return self._error(route, END_LENGTH, BATCH_WRITE, sub)
            self.memory.write_words(name, number, array("H", body))
            cells = range(number, number + points) if name in self.memory.words else \
                range(number, number + 16 * points)
        else:
            if name not in self.memory.bits:
                return self._error(route, END_BIT_UNITS, BATCH_WRITE, sub)
            if len(body) != (points + 1) // 2:
                return self._error(route, END_LENGTH, BATCH_WRITE, sub)
            values = [b >> s & 1 for b in body for s in (4, 0)][:points]
            self.memory.write_bits(name, number, values)
            cells = range(number, number + points)
        self.held.update((name, c) for c in cells)
        self.writes.append((sub, name, number, points))
        return encode_answer(route, 0)

    # -- lifecycle

    async def start(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self.update()
        self._server = await loop.create_server(lambda: _Connection(self), self.endpoint.host, self.endpoint.port,
                                                reuse_address=True)
        self._task = asyncio.create_task(self._run(), name=f"mc-sim:{self.device.id}")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.device.simulate.update_interval)
            try:
                self.update()
            except Exception:  # a failing tick must not end the simulator
                log.exception("mc-sim %s: update failed", self.device.id)

    def drop_connections(self) -> int:
        conns = list(self.connections)
        for c in conns:
            if c.transport is not None:
                c.transport.abort()
        return len(conns)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_tasks(task)
        server, self._server = self._server, None
        if server is not None:
            server.close()
            self.drop_connections()
            await server.wait_closed()

    async def __aenter__(self) -> McServerSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "connections": len(self.connections)}
