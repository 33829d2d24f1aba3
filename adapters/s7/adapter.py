"""The S7 adapter: one Siemens CPU over ISO-on-TCP, read with a plan of coalesced, PDU-packed requests.

python-snap7's `AsyncClient` (asyncio streams, no thread) opens the connection and negotiates the PDU; each
poll then sends our own "read multiple variables" requests (built by the library's protocol module) through
`iso_exchange_buffer` and reads the answer item by item. The library's `read_multi_vars` is not used: it
raises when any one item fails (LIBRARY-FACTS.md), and one missing DB must cost only its own tags.

What the CPU says decides who pays:
- an item answered with an error code is a fact about its tags: 0x0A (object does not exist: the DB is
  missing) and 0x05 (address out of range: the DB is shorter, or it has optimized block access) give
  `bad_illegal_address`, 0x03 (access denied: PUT/GET not permitted) `bad_device_exception`; the reason, with
  the fix, is logged once per change and shown in `stats()["refused"]`. A coalesced block refused with 0x05
  is split into its tags (once, remembered for the connection) to find the culprits;
- no answer in `timeout`, a closed connection or an answer that does not belong to the request is a fact
  about the device: `read()` raises `AdapterError` and the engine backs off and reconnects.

`write()` (docs/writes.md) sends one "write variable" request built by the same protocol module, a BOOL as a
bit write; the item's return code is the CPU's yes or no (`device_refused` with the fix).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import Any, ClassVar

import snap7
from snap7.datatypes import S7Area, S7WordLen
from snap7.error import S7Error, S7ProtocolError

from adapters.base import Adapter, AdapterContext, AdapterError, WriteError, WriteOutcome
from adapters.s7.address import S7Location
from adapters.s7.codec import Converter, compile_converter, encode_write
from adapters.s7.config import S7Device
from adapters.s7.planner import Block, Packet, chunks_of, pack, plan_reads
from collector.model import Quality, Reading

__all__ = ["RETURN_CODES", "S7Adapter", "item_problem"]

log = logging.getLogger(__name__)

_AREAS = {"DB": S7Area.DB, "M": S7Area.MK, "I": S7Area.PE, "Q": S7Area.PA}
OK = 0xFF
RETURN_CODES = {
    0x01: "hardware fault",
    0x03: "access denied: in TIA Portal tick 'Permit access with PUT/GET communication from remote partner' "
          "(CPU properties > Protection & Security > Connection mechanisms) and download the hardware config",
    0x05: "address out of range: the DB is shorter than the tag, or it has optimized block access (in TIA "
          "Portal untick 'Optimized block access' in the DB's properties and download it)",
    0x06: "data type not supported",
    0x07: "data type inconsistent",
    0x0A: "object does not exist: the CPU has no such DB (check the DB number, or download the DB)",
}


_WRITE_VAR = 0x05  # the function code of "write variable"
_WRITE_OVERHEAD = 28  # a write request: header 10, parameters 14, data item head 4

REQUEST_REFUSED = 0x100
"""Not an item code: the CPU refused a one-item request as a whole (an error class in the header)."""


class _RequestRefused(Exception):
    """A well-formed answer that refuses the whole request (header error class/code): the connection is fine."""


class _Lost(Exception):
    """No usable answer (the connection is closed by now); `timeout`: none came in time."""

    def __init__(self, reason: str, timeout: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout = timeout


def item_problem(code: int, detail: str = "") -> tuple[str, str]:
    """An item's return code -> (quality of its tags, reason with the fix)."""
    if code == REQUEST_REFUSED:
        return Quality.BAD_DEVICE_EXCEPTION, f"request refused: {detail}"
    reason = RETURN_CODES.get(code, "refused")
    quality = Quality.BAD_ILLEGAL_ADDRESS if code in (0x05, 0x0A) else Quality.BAD_DEVICE_EXCEPTION
    return quality, f"0x{code:02X} {reason}"


def _parse_items(raw: bytes, sizes: list[int]) -> list[tuple[int, bytes]]:
    """The data section of a read answer -> (return code, data) per item; S7ProtocolError if it does not
    match the items asked for (a wrong count, a short or long item)."""
    out: list[tuple[int, bytes]] = []
    off = 0
    last = len(sizes) - 1
    for i, size in enumerate(sizes):
        if off + 4 > len(raw):
            raise S7ProtocolError(f"answer cut short at item {i + 1} of {len(sizes)}")
        code, transport, length = raw[off], raw[off + 1], int.from_bytes(raw[off + 2:off + 4], "big")
        off += 4
        if code != OK:
            out.append((code, b""))
            continue
        n = length // 8 if transport in (0x03, 0x04, 0x05) else length
        if n != size or off + n > len(raw):
            raise S7ProtocolError(f"item {i + 1}: {n} bytes for {size} asked")
        out.append((OK, raw[off:off + n]))
        off += n + (n & 1 if i < last else 0)
    return out


class S7Adapter(Adapter):
    """Polls one S7 CPU and returns one `Reading` per configured tag, in tag order."""

    protocol: ClassVar[str] = "s7"
    supports_write: ClassVar[bool] = True

    def __init__(self, device: S7Device, context: AdapterContext | None = None) -> None:
        super().__init__(device, context)
        self.device: S7Device = device
        self.converters: list[Converter] = [
            compile_converter(t.location, t.scale, t.offset, t.range, device.string_encoding) for t in device.tags]
        self._index = {t.name: i for i, t in enumerate(device.tags)}
        self.client: snap7.AsyncClient | None = None
        self.pdu = 0
        self.blocks: list[Block] = []
        self.packets: list[Packet] = []
        self._split: set[int] = set()  # tag indexes read one by one (their block was refused with 0x05)
        self._max_items = 0  # 1 once the CPU refused a multi-item request as a whole (0: the protocol's limit)
        self._refusal = ""  # the text of the last whole-request refusal
        self._refused: dict[str, str] = {}  # block -> reason, as last answered
        self._counters: dict[str, Any] = {"connects": 0, "cycles": 0, "requests": 0, "refused_items": 0,
                                          "last_error": None, "last_cycle_s": None}

    # -- connection

    async def connect(self) -> None:
        """Open the ISO-on-TCP connection and negotiate the PDU; AdapterError with a readable reason."""
        await self.close()
        dev = self.device
        ep = dev.parsed_endpoint
        local, remote, _rack, _slot = dev.connection  # rack and slot are in the remote TSAP
        client = snap7.AsyncClient()
        client.local_tsap = local
        client.connection_type = remote >> 8  # the library builds the remote TSAP from these three
        client.pdu_length = dev.pdu_size
        try:
            await asyncio.wait_for(client.connect(ep.host, (remote >> 5) & 0x07, remote & 0x1F, ep.port),
                                   dev.timeout)
        except (TimeoutError, S7Error, OSError) as exc:
            await self._disconnect(client)
            raise AdapterError(self._connect_reason(exc, local, remote)) from None
        self.client = client
        self.pdu = client.pdu_length
        self._plan()
        self._counters["connects"] += 1

    def _connect_reason(self, exc: BaseException, local: int, remote: int) -> str:
        text = str(exc) or type(exc).__name__
        ep = self.device.parsed_endpoint
        if isinstance(exc, TimeoutError) or "timeout" in text.lower():
            return f"no answer from {ep.host}:{ep.port} within {self.device.timeout:g} s"
        if isinstance(exc, OSError) or "Connect call failed" in text or "Errno" in text:
            return f"cannot connect to {ep.host}:{ep.port}: {text.removeprefix('Connection failed: ')}"
        return (f"{text} (TSAPs 0x{local:04X}/0x{remote:04X}: check rack/slot for the {self.device.family} — "
                "S7-300 0/2, S7-1200/1500 0/1 — or give local_tsap/remote_tsap)")

    def _plan(self) -> None:
        tags = [(i, t.location) for i, t in enumerate(self.device.tags) if i not in self._split]
        self.blocks, self.packets = plan_reads(tags, self.pdu, self.device.max_gap, self.device.coalesce)
        if self._max_items:
            self.packets = pack(chunks_of(self.blocks, self.pdu), self.pdu, self._max_items)
        if self._split:
            singles = [(i, self.device.tags[i].location) for i in sorted(self._split)]
            extra, _ = plan_reads(singles, self.pdu, coalesce=False)
            base = len(self.blocks)
            self.blocks += extra
            self.packets += pack([c.__class__(c.block + base, c.part, c.area, c.db, c.start, c.size)
                                  for c in chunks_of(extra, self.pdu)], self.pdu)

    @staticmethod
    async def _disconnect(client: snap7.AsyncClient) -> None:
        try:
            await asyncio.wait_for(client.disconnect(), 1.0)
        except Exception:  # close must not raise
            pass

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await self._disconnect(client)

    # -- reading

    async def _roundtrip(self, request: bytes) -> dict[str, Any]:
        """One request, the parsed answer that belongs to it. A whole-request refusal (an error class in the
        header) is `_RequestRefused`: the connection is in step. Any way of getting no usable answer closes
        the connection (a late answer must never be read as the next request's) and raises `_Lost`."""
        client = self.client
        if client is None:
            raise _Lost("not connected", timeout=False)
        self._counters["requests"] += 1
        try:
            raw = await asyncio.wait_for(client.iso_exchange_buffer(bytearray(request)), self.device.timeout)
            answer: dict[str, Any] = client.protocol.parse_response(bytes(raw))
            if answer.get("sequence") != struct.unpack_from(">H", request, 4)[0]:
                raise S7ProtocolError("answer to another request")
            return answer
        except S7ProtocolError as exc:
            if exc.error_code:  # the CPU answered, refusing the request as a whole
                raise _RequestRefused(str(exc)) from None
            reason, timeout = f"bad answer: {exc}", False
        except TimeoutError:
            reason, timeout = f"no answer within {self.device.timeout:g} s", True
        except (S7Error, OSError, asyncio.IncompleteReadError) as exc:
            reason, timeout = f"connection lost: {exc}", False
        self._counters["last_error"] = reason
        await self.close()
        raise _Lost(reason, timeout)

    async def _exchange(self, packet: Packet) -> list[tuple[int, bytes]]:
        """One read request; the answer's items. No usable answer is an AdapterError (the connection is
        closed)."""
        client = self.client
        if client is None:
            raise AdapterError("not connected")
        items = [(int(_AREAS[c.area]), c.db, c.start, c.size) for c in packet.chunks]
        request = client.protocol.build_multi_read_request(items)
        try:
            answer = await self._roundtrip(request)
            params = answer.get("parameters") or {}
            if params.get("item_count") != len(items):
                raise S7ProtocolError(f"{params.get('item_count')} items answered for {len(items)}")
            return _parse_items(answer.get("raw_data", b""), [c.size for c in packet.chunks])
        except _Lost as exc:
            raise AdapterError(exc.reason) from None
        except S7ProtocolError as exc:
            reason = f"bad answer: {exc}"
        self._counters["last_error"] = reason
        await self.close()
        raise AdapterError(reason)

    async def read(self) -> list[Reading]:
        """One poll: every request of the plan; one Reading per tag (tag order)."""
        if self.client is None:
            raise AdapterError("not connected")
        started = time.perf_counter()
        out: list[Reading | None] = [None] * len(self.converters)
        split = await self._read_packets(self.packets, out)
        if split:  # a coalesced block was out of range: read its tags one by one to find the culprits
            self._split |= split
            self._plan()
            singles = {n for n, b in enumerate(self.blocks) if b.tags[0][0] in split and len(b.tags) == 1}
            await self._read_packets([p for p in self.packets if any(c.block in singles for c in p.chunks)], out)
        self._counters["cycles"] += 1
        self._counters["last_cycle_s"] = time.perf_counter() - started
        return out  # type: ignore[return-value]  # every index is filled: the plan covers every tag

    async def _read_packets(self, packets: list[Packet], out: list[Reading | None]) -> set[int]:
        """Read `packets` into `out`; the tags of coalesced blocks refused as out of range (to split)."""
        blocks = self.blocks
        parts: dict[int, list[bytes]] = {}
        failed: dict[int, int] = {}
        for packet in packets:
            for chunk, (code, data) in zip(packet.chunks, await self._answers(packet), strict=True):
                if code != OK:
                    failed.setdefault(chunk.block, code)
                else:
                    parts.setdefault(chunk.block, []).append(data)
        now = time.time()
        device_id = self.device.id
        tags = self.device.tags
        convs = self.converters
        split: set[int] = set()
        done = {c.block for p in packets for c in p.chunks}
        for n in sorted(done):
            block = blocks[n]
            refused = failed.get(n)
            if refused is None:
                buf = b"".join(parts[n])
                base = block.start
                for i, loc in block.tags:
                    value, quality = convs[i](buf, loc.start - base)
                    out[i] = Reading(device_id, tags[i].name, value, tags[i].unit, quality, now, now)
                if self._refused:
                    self._note(block, None)
                continue
            if refused == 0x05 and len(block.tags) > 1:
                split.update(i for i, _ in block.tags)
                continue
            quality, reason = item_problem(refused, self._refusal)
            self._counters["refused_items"] += 1
            self._note(block, reason)
            for i, _ in block.tags:
                out[i] = Reading(device_id, tags[i].name, None, tags[i].unit, quality, now, now)
        return split

    async def _answers(self, packet: Packet) -> list[tuple[int, bytes]]:
        """The items of one request. A CPU that refuses a multi-item request as a whole (some accept fewer
        items than the protocol allows) is asked item by item, now and for the rest of the connection; a
        one-item request it refuses marks that item's tags."""
        try:
            return await self._exchange(packet)
        except _RequestRefused as exc:
            self._refusal = str(exc)
            if len(packet.chunks) == 1:
                return [(REQUEST_REFUSED, b"")]
        if not self._max_items:
            log.warning("device %s: the CPU refused a request of %d items (%s); reading one item per request",
                        self.device.id, len(packet.chunks), self._refusal)
            self._max_items = 1
            self._plan()
        out: list[tuple[int, bytes]] = []
        for chunk in packet.chunks:
            out += await self._answers(Packet([chunk]))
        return out

    def _note(self, block: Block, reason: str | None) -> None:
        """Log a block's refusal once, and when it is answered again."""
        where = block.describe()
        before = self._refused.get(where)
        if reason == before:
            return
        names = ", ".join(self.device.tags[i].name for i, _ in block.tags[:5])
        if reason is None:
            self._refused.pop(where, None)
            log.info("device %s: %s answered again (%s)", self.device.id, where, names)
        else:
            self._refused[where] = reason
            log.warning("device %s: %s refused: %s; tags %s%s", self.device.id, where, reason, names,
                        " …" if len(block.tags) > 5 else "")

    # -- write-back (collector/writes/ checks the guard rails before it calls this)

    async def write(self, tag: str, value: Any, readback: bool = True) -> WriteOutcome:
        """Write one tag: read it (the audit's old value), one "write variable" request, read it back. A BOOL
        goes as a bit write (transport size BIT): the CPU changes that bit alone, so a neighbour bit the PLC
        program sets in the same byte is never written back stale. Inputs (I/E) are refused before anything
        is sent. Polls share the connection: the library's lock keeps each request and its answer together."""
        i = self._index.get(tag)
        if i is None:
            raise WriteError("unknown_tag", f"no tag '{tag}' on device {self.device.id}")
        cfg = self.device.tags[i]
        loc = cfg.location
        if loc.area == "I":
            raise WriteError("not_writable", "an input (I/E) is read-only: the CPU refreshes its input image from "
                             "the input modules every cycle")
        try:
            start, data = encode_write(loc, value, cfg.scale, cfg.offset, self.device.string_encoding)
        except ValueError as exc:
            raise WriteError("type_mismatch", str(exc)) from None
        step = self.pdu - _WRITE_OVERHEAD
        if len(data) > step:  # two requests: one failing between them leaves the new length over old text
            raise WriteError("type_mismatch", f"{len(data)} bytes (the value with its length field) need more than "
                             f"one write request at this CPU's PDU of {self.pdu} bytes ({step} per request), and "
                             "a failure between two would leave a STRING half written that reads as good: write "
                             "a shorter value")
        if self.client is None:
            raise AdapterError("not connected")
        old, old_quality = await self._read_tag(i, "reading the old value (nothing was written)")
        if old_quality not in (Quality.GOOD, Quality.BAD_OUT_OF_RANGE):
            old = None
        self._counters["writes"] = self._counters.get("writes", 0) + 1
        await self._write_item(loc, start, data)
        if not readback:
            return WriteOutcome(old, None)
        after, quality = await self._read_tag(i, "reading back (the write was acknowledged)")
        return WriteOutcome(old, after, quality)

    async def _read_tag(self, i: int, what: str) -> tuple[Any, str]:
        """One tag by a one-item read: (value, quality); a refused item is its tags' bad quality."""
        loc = self.device.tags[i].location
        client = self.client
        if client is None:
            raise AdapterError("not connected")
        request = client.protocol.build_multi_read_request([(int(_AREAS[loc.area]), loc.db, loc.start, loc.size)])
        try:
            answer = await self._roundtrip(request)
            ((code, data),) = _parse_items(answer.get("raw_data", b""), [loc.size])
        except _RequestRefused as exc:
            return None, item_problem(REQUEST_REFUSED, str(exc))[0]
        except _Lost as exc:
            if exc.timeout:
                raise WriteError("no_answer", f"{exc.reason} {what}") from None
            raise AdapterError(exc.reason) from None
        except (S7ProtocolError, ValueError) as exc:
            await self.close()
            raise AdapterError(f"bad answer {what}: {exc}") from None
        if code != OK:
            return None, item_problem(code)[0]
        return self.converters[i](data, 0)

    async def _write_item(self, loc: S7Location, start: int, data: bytes) -> None:
        """One "write variable" request of one item; WriteError("device_refused") with the CPU's return code
        and its fix, WriteError("no_answer") when none came in time (the write may have been applied)."""
        client = self.client
        if client is None:
            raise AdapterError("not connected")
        area = _AREAS[loc.area]
        if loc.type == "BOOL":
            request = client.protocol.build_write_request(area, loc.db, start * 8 + (loc.bit or 0), S7WordLen.BIT,
                                                          data)
        else:
            request = client.protocol.build_write_request(area, loc.db, start, S7WordLen.BYTE, data)
        try:
            answer = await self._roundtrip(request)
        except _RequestRefused as exc:
            raise WriteError("device_refused", f"the CPU refused the request: {exc}") from None
        except _Lost as exc:
            if exc.timeout:
                raise WriteError("no_answer", f"{exc.reason}; the write may or may not have been applied (no "
                                 "retry, so it is never applied twice)") from None
            raise AdapterError(exc.reason) from None
        params = answer.get("parameters") or {}
        raw = answer.get("raw_data", b"")
        if params.get("function_code") != _WRITE_VAR or params.get("item_count") != 1 or len(raw) != 1:
            await self.close()
            raise AdapterError(f"bad answer to the write: {params}, {len(raw)} data bytes")
        if raw[0] != OK:
            where = loc.describe()
            raise WriteError("device_refused", f"{where}: {item_problem(raw[0])[1]}")

    # -- identity (evidence; beside the poll loop, after connect and once a day)

    async def identify(self) -> dict[str, Any]:
        """From the SZL: order number and firmware (0x0011), module type, serial number, module and station
        names (0x001C). A part the CPU refuses is None (many 1200s answer 0x001C only in part); a part without
        an answer in time is left out and the connection dropped (its late answer would confuse the poll)."""
        client = self.client
        if client is None:
            raise AdapterError("not connected")
        out: dict[str, Any] = {"protocol": "s7"}
        order: dict[str, Any] = {"order_number": None, "firmware": None}
        try:
            code = await asyncio.wait_for(client.get_order_code(), self.device.timeout)
            version = (code.V1, code.V2, code.V3)
            order = {"order_number": _text(code.OrderCode),
                     "firmware": "V{}.{}.{}".format(*version) if any(version) else None}
        except TimeoutError:
            await self.close()
            return out
        except (S7ProtocolError, RuntimeError, ValueError):
            pass  # refused: the CPU has no such SZL
        except (S7Error, OSError) as exc:
            raise AdapterError(f"connection lost: {exc}") from None
        out.update(order)
        info: dict[str, Any] = {"module_type": None, "serial_number": None, "module_name": None,
                                "station_name": None}
        try:
            cpu = await asyncio.wait_for(client.get_cpu_info(), self.device.timeout)
            info = {"module_type": _text(cpu.ModuleTypeName), "serial_number": _text(cpu.SerialNumber),
                    "module_name": _text(cpu.ModuleName), "station_name": _text(cpu.ASName)}
        except TimeoutError:
            await self.close()
            return out
        except (S7ProtocolError, RuntimeError, ValueError):
            pass
        except (S7Error, OSError) as exc:
            raise AdapterError(f"connection lost: {exc}") from None
        out.update(info)
        return out

    def stats(self) -> dict[str, Any]:
        """Requests per cycle, the negotiated PDU, refused blocks with their reasons, counters."""
        return {"requests_per_cycle": len(self.packets), "blocks": len(self.blocks), "tags": len(self.converters),
                "pdu": self.pdu, "refused": dict(self._refused), **self._counters}


def _text(raw: bytes | str) -> str | None:
    """A fixed-size SZL text field -> str (None when empty)."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    text = text.strip("\x00 ").strip()
    return text or None
