"""The MC protocol adapter: polls a Mitsubishi PLC with 3E batch reads, one per planned range.

End codes are facts about the devices a read asks for, not about the PLC: an end code that says the device
code is unknown or the number out of range (`ADDRESS_END_CODES`) makes that read's tags `bad_illegal_address`,
any other end code `bad_device_exception`, and the rest of the poll goes on. A joined read that gets such an
end code is bisected by tags once, so only the tags the PLC refuses stay bad; the split is kept. No answer, a
garbled answer or a lost connection fails the poll (`AdapterError`): the engine backs off and reconnects
with a new connection (3E has no serial number, so a connection that lost its place is never reused).

`write()` (docs/writes.md) is a batch read, a batch write (1401) and a batch read back on the same connection;
the write's end code is the PLC's yes or no (`device_refused` with `WRITE_END_CODES`' hint).
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any, ClassVar

from adapters.base import Adapter, AdapterContext, AdapterError, WriteError, WriteOutcome
from adapters.mc.client import McAnswer, McClient, McError, McTimeout
from adapters.mc.codec import Converter, compile_converter, encode_write
from adapters.mc.config import McDevice, McTag
from adapters.mc.frame import Route
from adapters.mc.planner import Read, plan_reads, span
from collector.model import Quality, Reading

__all__ = ["ADDRESS_END_CODES", "READ_ONLY_DEVICES", "WRITE_END_CODES", "McAdapter"]

ADDRESS_END_CODES = {
    0x4030: "the device is not present in this CPU",
    0x4031: "the device number is out of range",
    0xC056: "the read exceeds the largest device number",
    0xC05B: "the CPU cannot read this device",
    0xC05C: "the request is wrong for this device",
    0xC05D: "the device cannot be read in word units",
}
"""End codes that say the devices asked for are wrong (unknown device code, number out of range)."""
WRITE_END_CODES = {
    0x0055: "the CPU is in RUN and online change is disabled: tick 'Enable online change' (write in RUN) in the "
            "PLC's Ethernet port settings, or write while the CPU is in STOP",
    0xC051: "the number of points is out of range",
    0xC060: "the bit data is wrong",
    0xC061: "the request's data length does not match its points",
    **ADDRESS_END_CODES,
}
"""End codes a write may get, with what to check (the CPU's manual lists them all)."""
READ_ONLY_DEVICES = {"X": "an input (X): the CPU refreshes it from the input modules every scan"}

_Entry = tuple[int, str, str | None, Converter, int]  # index, tag name, unit, converter, word offset


class McAdapter(Adapter):
    """One MC device: a `McClient` per connection and the plan of batch reads."""

    protocol: ClassVar[str] = "mc"
    supports_write: ClassVar[bool] = True

    def __init__(self, device: McDevice, context: AdapterContext | None = None) -> None:
        super().__init__(device, context)
        self.device: McDevice = device
        self.client: McClient | None = None
        self._index = {t.name: i for i, t in enumerate(device.tags)}
        self._convert = [compile_converter(t, device.xy_base) for t in device.tags]
        self.plan: list[Read] = plan_reads(device)
        self._steps = [(r, self._entries(r)) for r in self.plan]
        self._counters: dict[str, Any] = {"connects": 0, "cycles": 0, "requests": 0, "end_codes": 0,
                                          "splits": 0, "last_error": None, "last_cycle_s": None}

    def _entries(self, read: Read) -> list[_Entry]:
        out = []
        xy = self.device.xy_base
        for tag in read.tags:
            i = self._index[tag.name]
            out.append((i, tag.name, tag.unit, self._convert[i], tag.parsed(xy).word() - read.first))
        return out

    # -- connection

    async def connect(self) -> None:
        await self.close()
        dev = self.device
        ep = dev.parsed_endpoint
        client = McClient(ep.host, ep.port, route=Route(dev.network, dev.pc, dev.module_io, dev.station),
                          timeout=dev.timeout)
        if not await client.connect():
            raise AdapterError(f"cannot connect to {ep.host}:{ep.port} within {dev.timeout:g} s (is the PLC's "
                               "MC/SLMP port open for binary 3E frames over TCP?)")
        self.client = client
        self._counters["connects"] += 1

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()

    # -- reading

    async def read(self) -> list[Reading]:
        client = self.client
        if client is None or not client.connected:
            raise AdapterError("not connected" if client is None else f"connection lost: {client.closed_reason}")
        started = time.perf_counter()
        out: list[Reading | None] = [None] * len(self._convert)
        replaced: dict[int, list[Read]] = {}
        for n, (read, entries) in enumerate(self._steps):
            answer = await self._request(client, read)
            if answer.end_code and len(read.tags) > 1:
                pieces = await self._split(client, read.tags)
                replaced[n] = [p for p, _ in pieces]
                for piece, part in pieces:
                    self._decode(piece, self._entries(piece), part, out)
                continue
            self._decode(read, entries, answer, out)
        if replaced:
            self.plan = [p for n, r in enumerate(self.plan) for p in replaced.get(n, [r])]
            self._steps = [(r, self._entries(r)) for r in self.plan]
        self._counters["cycles"] += 1
        self._counters["last_cycle_s"] = time.perf_counter() - started
        return out  # type: ignore[return-value]  # the plan covers every tag

    async def _request(self, client: McClient, read: Read) -> McAnswer:
        self._counters["requests"] += 1
        try:
            return await client.read_words(read.device.code, read.number, read.points)
        except McTimeout as exc:
            self._counters["last_error"] = f"{exc} reading {read}"
            raise AdapterError(f"no answer from the PLC: {exc} reading {read}; reconnecting") from None
        except McError as exc:
            self._counters["last_error"] = str(exc)
            raise AdapterError(f"request failed: {exc}") from None

    async def _split(self, client: McClient, tags: list[McTag]) -> list[tuple[Read, McAnswer]]:
        """A joined read got an end code: bisect it by tags until each part is answered or is one tag."""
        self._counters["splits"] += 1
        out: list[tuple[Read, McAnswer]] = []

        async def bisect(group: list[McTag]) -> None:
            part = span(self.device, group)
            answer = await self._request(client, part)
            if not answer.end_code or len(group) == 1:
                out.append((part, answer))
                return
            half = len(group) // 2
            await bisect(group[:half])
            await bisect(group[half:])

        half = len(tags) // 2
        await bisect(tags[:half])
        await bisect(tags[half:])
        return out

    def _decode(self, read: Read, entries: list[_Entry], answer: McAnswer, out: list[Reading | None]) -> None:
        device_id = self.device.id
        now = time.time()
        if answer.end_code:
            self._counters["end_codes"] += 1
            code = answer.end_code
            quality = Quality.BAD_ILLEGAL_ADDRESS if code in ADDRESS_END_CODES else Quality.BAD_DEVICE_EXCEPTION
            self._counters["last_error"] = (f"end code 0x{code:04X} reading {read}: "
                                            f"{ADDRESS_END_CODES.get(code, 'see the CPU manual')}")
            for i, name, unit, _conv, _off in entries:
                out[i] = Reading(device_id, name, None, unit, quality, now, now)
            return
        words = answer.words()
        for i, name, unit, conv, off in entries:
            try:
                value, quality = conv(words, off)
            except Exception:  # a bad tag never fails the poll
                value, quality = None, Quality.BAD_DECODE
            out[i] = Reading(device_id, name, value, unit, quality, now, now)

    # -- write-back (collector/writes/ checks the guard rails before it calls this)

    async def write(self, tag: str, value: Any, readback: bool = True) -> WriteOutcome:
        """Write one tag: a batch read of its words (the audit's old value), a batch write (1401), a batch
        read back. A point of a bit device (M, Y, B, L) goes in bit units: that point alone changes. A bit of
        a word (`D100.3`) has no write of its own in the 3E frame: the word read just before is written back
        with only that bit changed. Inputs (X) are refused before anything is sent."""
        i = self._index.get(tag)
        if i is None:
            raise WriteError("unknown_tag", f"no tag '{tag}' on device {self.device.id}")
        cfg = self.device.tags[i]
        xy = self.device.xy_base
        addr, type_ = cfg.parsed(xy), cfg.value_type(xy)
        if addr.device.name in READ_ONLY_DEVICES:
            raise WriteError("not_writable", f"{cfg.address} is {READ_ONLY_DEVICES[addr.device.name]}")
        try:
            words = encode_write(type_, value, cfg.scale, cfg.offset)
        except ValueError as exc:
            raise WriteError("type_mismatch", str(exc)) from None
        client = self.client
        if client is None or not client.connected:
            raise AdapterError("not connected" if client is None else f"connection lost: {client.closed_reason}")
        read = span(self.device, [cfg])
        entries = self._entries(read)
        before = await self._write_step(client.read_words(read.device.code, read.number, read.points),
                                        f"reading {cfg.address} before the write (nothing was written)")
        old = self._value(entries, before)
        code = addr.device.code
        if addr.device.is_bit:
            request = client.write_bits(code, addr.number, [bool(words[0])])
        elif addr.bit is not None:  # one bit of a word: the word as just read, that bit changed
            if before.end_code:
                raise WriteError("device_refused", f"reading {addr.device.name}{addr.number} for its bit: end code "
                                 f"0x{before.end_code:04X} ({WRITE_END_CODES.get(before.end_code, 'see the CPU manual')})")
            word = before.words()[0]
            mask = 1 << addr.bit
            request = client.write_words(code, addr.number, [(word | mask) if words[0] else (word & ~mask)])
        else:
            request = client.write_words(code, addr.number, words)
        self._counters["writes"] = self._counters.get("writes", 0) + 1
        answer = await self._write_step(request, f"writing {cfg.address}; the write may or may not have been "
                                        "applied (no retry, so it is never applied twice)")
        if answer.end_code:
            raise WriteError("device_refused", f"end code 0x{answer.end_code:04X} writing {cfg.address}: "
                             f"{WRITE_END_CODES.get(answer.end_code, 'see the CPU manual')}")
        if not readback:
            return WriteOutcome(old, None)
        after = await self._write_step(client.read_words(read.device.code, read.number, read.points),
                                       f"reading {cfg.address} back (the write was acknowledged)")
        out: list[Reading | None] = [None] * len(self._convert)
        self._decode(read, entries, after, out)
        reading = out[i]
        assert reading is not None
        return WriteOutcome(old, reading.value, reading.quality)

    async def _write_step(self, request: Coroutine[Any, Any, McAnswer], what: str) -> McAnswer:
        """One request of a write: no answer in time is `no_answer` (the client has closed the connection,
        the engine reconnects); a lost or garbled connection an AdapterError."""
        self._counters["requests"] += 1
        try:
            return await request
        except McTimeout as exc:
            self._counters["last_error"] = f"{exc} {what}"
            raise WriteError("no_answer", f"{exc} {what}") from None
        except McError as exc:
            self._counters["last_error"] = str(exc)
            raise AdapterError(f"request failed: {exc}") from None

    def _value(self, entries: list[_Entry], answer: McAnswer) -> Any:
        """The one tag of `entries` from `answer`, None when it is not a good value."""
        if answer.end_code:
            return None
        (_i, _name, _unit, conv, off), = entries
        try:
            value, quality = conv(answer.words(), off)
        except Exception:
            return None
        return value if quality in (Quality.GOOD, Quality.BAD_OUT_OF_RANGE) else None

    # -- identity

    async def identify(self) -> dict[str, Any]:
        """The CPU model name and code (Read CPU model, 0101) where the PLC answers it: many MC modules
        and older CPUs refuse the command (an end code), which is a definite "none", never a failure."""
        client = self.client
        if client is None or not client.connected:
            raise AdapterError("not connected")
        out: dict[str, Any] = {"protocol": "mc"}
        try:
            end_code, name, code = await client.read_cpu_model()
        except McTimeout as exc:
            self._counters["last_error"] = f"identification: {exc}"
            raise AdapterError(f"no answer to Read CPU model: {exc}") from None
        except McError as exc:
            raise AdapterError(f"identification failed: {exc}") from None
        if end_code:
            out.update(cpu_model=None, cpu_model_code=None)
        else:
            out.update(cpu_model=name, cpu_model_code=f"{code:04X}")
        return out

    def stats(self) -> dict[str, Any]:
        return {"requests_per_cycle": len(self.plan), "tags": len(self._convert), **self._counters}
