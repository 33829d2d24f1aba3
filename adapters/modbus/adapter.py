"""The Modbus adapter: one device (unit id) on a shared line, read with a precomputed plan of coalesced requests.

Endpoints: `tcp://host:port` (Modbus TCP), `rtu+tcp://host:port` (RTU frames over TCP, serial servers) and
`serial:///dev/ttyUSB0?baudrate=9600&parity=N&stopbits=1` (RTU on RS-485 via pyserial). Devices naming the
same endpoint share one connection (`adapters.modbus.line`) and are polled one after another.

What the device says decides who pays:
- an exception answer is a fact about some tags: their quality names it. Exception 02 (illegal address) on a
  coalesced range splits the range to find the culprits; only their tags turn `bad_illegal_address`, and the
  split is remembered (per device, across reconnects) so later cycles read the good parts directly and ask
  for a known-illegal address only every `ILLEGAL_RECHECK_S`;
- no answer, a garbled answer or a closed connection is a fact about the device: `read()` raises
  `AdapterError` (the engine backs off and reconnects). A unit that stays silent `degrade_after` cycles in a
  row raises `DeviceSkipped` instead (state `degraded`, skipped `degrade_for` s) so that it stops costing its
  neighbours on the line a timeout every cycle.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from adapters.base import Adapter, AdapterContext, AdapterError, DeviceSkipped, WriteError, WriteOutcome
from adapters.modbus.codec import Converter, TagCodec, compile_tag
from adapters.modbus.config import ModbusDevice, ModbusTag
from adapters.modbus.errors import ConnectionLost, ModbusError, NoAnswer
from adapters.modbus.identification import mac_of, read_identification
from adapters.modbus.line import Line, LineKey, Lines, ModbusClient
from adapters.modbus.planner import ReadRequest, plan_device, span_request
from adapters.modbus.tcp import MbapClient, ReadBatch
from collector.model import Quality, Reading

log = logging.getLogger(__name__)

__all__ = ["ILLEGAL_RECHECK_S", "ModbusAdapter", "ModbusState"]

ILLEGAL_RECHECK_S = 300.0
"""A request answered with exception 02 for a single address is asked again only after this many seconds."""

# One entry per tag of a request: (index in device.tags, name, unit, converter, offset in the answer)
_Entry = tuple[int, str, str | None, Converter, int]


class Response(Protocol):
    """What the adapter reads of an answer: pymodbus's `ModbusPDU` or `adapters.modbus.tcp.Answer`."""

    @property
    def registers(self) -> Sequence[int]: ...
    @property
    def bits(self) -> Sequence[bool]: ...
    @property
    def exception_code(self) -> int: ...
    def isError(self) -> bool: ...


_ReadFn = Callable[..., Awaitable[Response]]


async def _mac(device: ModbusDevice) -> dict[str, Any]:
    """`mac` of a TCP endpoint from the neighbour table (None on loopback); nothing off-link, for serial lines
    or on an OS without the table."""
    ep = device.parsed_endpoint
    if ep.scheme == "serial":
        return {}
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(ep.host, None, family=socket.AF_INET)
    except OSError:
        return {}
    if not infos:
        return {}
    known, mac = mac_of(str(infos[0][4][0]))
    return {"mac": mac} if known else {}
_Span = tuple[str, int, int]
ILLEGAL_ADDRESS = 2


_EXCEPTION_NAMES = {1: "illegal function", 2: "illegal address", 3: "illegal value", 4: "device failure",
                    6: "device busy"}
FUNCTION_CODES = {"coil": 1, "discrete_input": 2, "holding_register": 3, "input_register": 4}


def _mismatch(req: ReadRequest, resp: Response) -> str | None:
    """Why an answer cannot be the answer to `req` (None if it can): another function code, or another size.

    Modbus RTU has no transaction id, so a late answer to an earlier request of the same unit would otherwise
    be decoded into the wrong tags. Bits come padded to whole bytes."""
    fc = FUNCTION_CODES[req.table]
    got = getattr(resp, "function_code", fc)
    if got not in (fc, fc | 0x80):
        return f"function code {got}, expected {fc}"
    if resp.isError():
        return None
    if req.is_bits:
        n = len(resp.bits)
        return None if req.count <= n < req.count + 8 else f"{n} bits for {req.count}"
    n = len(resp.registers)
    return None if n == req.count else f"{n} registers for {req.count}"


def exception_quality(code: int) -> str:
    """Modbus exception code -> tag quality: 02 means the tag's address does not exist on the device."""
    return Quality.BAD_ILLEGAL_ADDRESS if code == ILLEGAL_ADDRESS else Quality.BAD_DEVICE_EXCEPTION


def _span(req: ReadRequest) -> _Span:
    return (req.table, req.start, req.count)


@dataclass
class _PlanMemory:
    """What a device's earlier adapters learnt about its address map: the refined plan and the requests
    known to be illegal (span -> monotonic time of the next recheck)."""

    base: list[_Span]
    plan: list[list[str]]  # tag names per request, in order
    illegal: dict[_Span, float] = field(default_factory=dict)


@dataclass
class ModbusState:
    """What Modbus adapters learn, kept in the collector's adapter context (adapters/base.py), so it outlives
    an adapter (a reload builds new ones) and is shared by the devices of one collector: the shared lines with
    their timeout streaks, and each device's refined plan by (device id, endpoint, unit id), checked against
    the base plan so a changed tag map starts afresh."""

    lines: Lines = field(default_factory=Lines)
    plans: dict[tuple[str, str, int], _PlanMemory] = field(default_factory=dict)
    # endpoints found to take only one outstanding request (`max_outstanding` fell back to 1): line -> why
    one_at_a_time: dict[LineKey, str] = field(default_factory=dict)


def _halves(tags: list[ModbusTag]) -> tuple[list[ModbusTag], list[ModbusTag]]:
    """Cut tags (of at least two addresses) in two by address, never between tags at one address."""
    ordered = sorted(tags, key=lambda t: (t.address or 0, t.register_count()))
    addresses = sorted({t.address or 0 for t in ordered})
    cut = addresses[len(addresses) // 2]
    return [t for t in ordered if (t.address or 0) < cut], [t for t in ordered if (t.address or 0) >= cut]


class _Failure(Exception):
    """A request got no usable answer; `timeout` tells silence from a broken connection."""

    def __init__(self, reason: str, timeout: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout = timeout


class ModbusAdapter(Adapter):
    """Polls one Modbus unit and returns one `Reading` per configured tag, in tag order."""

    protocol: ClassVar[str] = "modbus"
    supports_write: ClassVar[bool] = True

    def __init__(self, device: ModbusDevice, context: AdapterContext | None = None) -> None:
        super().__init__(device, context)
        self.device: ModbusDevice = device
        self.codecs: list[TagCodec] = [compile_tag(t, device.byte_order) for t in device.tags]
        self._index = {t.name: i for i, t in enumerate(device.tags)}
        self._state = self.context.state("modbus", ModbusState)
        base = plan_device(device)
        key = (device.id, device.endpoint, device.unit_id)
        memory = self._state.plans.get(key)
        if memory is None or memory.base != [_span(r) for r in base]:
            memory = _PlanMemory([_span(r) for r in base], [[t.name for t, _ in r.tags] for r in base])
            self._state.plans[key] = memory
        self._memory = memory
        by_name = {t.name: t for t in device.tags}
        self.plan: list[ReadRequest] = [span_request(by_name[n] for n in names) for names in memory.plan]
        self._steps: list[tuple[ReadRequest, list[_Entry]]] = [(r, self._entries(r)) for r in self.plan]
        self._batches: dict[tuple[int, ...] | None, ReadBatch] = {}  # the plan's reads by the steps asked
        self.line: Line | None = None
        self._read_fns: dict[str, _ReadFn] = {}
        self._counters: dict[str, Any] = {
            "connects": 0, "cycles": 0, "requests": 0, "exception_responses": 0, "failures": 0, "splits": 0,
            "illegal_skipped": 0, "last_error": None, "last_cycle_s": None, "max_outstanding": 1,
        }

    def _entries(self, req: ReadRequest) -> list[_Entry]:
        out: list[_Entry] = []
        for tag, off in req.tags:
            i = self._index[tag.name]
            codec = self.codecs[i]
            out.append((i, codec.name, codec.unit, codec.convert, off))
        return out

    # -- connection

    @classmethod
    def import_libraries(cls, device: Any) -> None:
        """pymodbus for an RTU line (`rtu+tcp://`, `serial://`: adapters/modbus/rtu.py); `tcp://` needs none."""
        if device.parsed_endpoint.scheme != "tcp":
            import adapters.modbus.rtu  # noqa: F401

    async def connect(self) -> None:
        """Join the endpoint's line and open it if no neighbour has; AdapterError with a readable reason."""
        await self.close()
        line = self._state.lines.acquire(self.device, self)
        try:
            await line.open(self.device)
        except AdapterError:
            line.release(self)
            raise
        self.line = line
        self._counters["connects"] += 1

    def _bind(self, client: ModbusClient) -> None:
        self._read_fns = {"coil": client.read_coils, "discrete_input": client.read_discrete_inputs,
                          "input_register": client.read_input_registers,
                          "holding_register": client.read_holding_registers}

    async def close(self) -> None:
        """Leave the line (the last device on it closes the connection); never raises."""
        line, self.line = self.line, None
        self._read_fns = {}
        if line is not None:
            try:
                line.release(self)
            except Exception:  # close must not raise
                pass

    # -- reading

    async def read(self) -> list[Reading]:
        """One poll: every request of the plan, while holding the line; one Reading per tag (tag order)."""
        line = self.line
        if line is None or not line.connected or line.client is None:
            raise AdapterError("not connected")
        unit = self.device.unit_id
        async with line.session(self.device) as client:
            self._bind(client)
            started = time.perf_counter()
            try:
                out = await self._cycle(line)
            except _Failure as exc:
                self._counters["failures"] += 1
                self._counters["last_error"] = exc.reason
                if not exc.timeout:
                    line.drop()  # a broken connection is broken for every unit on it
                    raise AdapterError(exc.reason) from None
                streak = line.count_timeout(unit)
                if streak >= self.device.degrade_after:
                    raise DeviceSkipped(f"{exc.reason}; {streak} cycles in a row without an answer: skipped for "
                                        f"{self.device.degrade_for:g} s so the line keeps its pace") from None
                raise AdapterError(exc.reason) from None
            line.count_answer(unit)
        self._counters["cycles"] += 1
        self._counters["last_cycle_s"] = time.perf_counter() - started
        return out

    async def _cycle(self, line: Line) -> list[Reading]:
        client = line.client
        if isinstance(client, MbapClient) and not self.device.inter_request_delay:
            return await self._cycle_batch(line, client)
        device_id = self.device.id
        delay = self.device.inter_request_delay
        illegal = self._memory.illegal
        out: list[Reading | None] = [None] * len(self.codecs)
        replaced: dict[int, list[ReadRequest]] = {}
        for n, (req, entries) in enumerate(self._steps):
            if illegal:
                recheck = illegal.get(_span(req))
                if recheck is not None and time.monotonic() < recheck:
                    self._counters["illegal_skipped"] += 1
                    now = time.time()
                    for i, name, unit_name, _conv, _off in entries:
                        out[i] = Reading(device_id, name, None, unit_name, Quality.BAD_ILLEGAL_ADDRESS, now, now)
                    continue
            resp = await self._request(line, req, delay)
            await self._settle(line, n, req, entries, resp, out, replaced)
        if replaced:
            self._replan(replaced)
        return out  # type: ignore[return-value]  # every index is filled: the plan covers every tag

    async def _settle(self, line: Line, n: int, req: ReadRequest, entries: list[_Entry], resp: Response,
                      out: list[Reading | None], replaced: dict[int, list[ReadRequest]]) -> None:
        """One step's answer into `out`: decoded, or, refused as an illegal address, split into the pieces the
        device does serve (step `n` is replanned with them when they differ from the request)."""
        if resp.isError() and resp.exception_code == ILLEGAL_ADDRESS:
            pieces = await self._split(line, req, resp)
            if [_span(p) for p, _ in pieces] != [_span(req)]:
                replaced[n] = [p for p, _ in pieces]
            for piece, answer in pieces:
                self._decode(piece, self._entries(piece) if piece is not req else entries, answer, out)
            return
        self._decode(req, entries, resp, out)

    # -- Modbus TCP: the whole cycle as one batch (adapters/modbus/tcp.py), up to `max_outstanding` in flight

    def window(self, line: Line) -> int:
        """Requests in flight at once on this line: `max_outstanding`, or 1 once the endpoint refused more."""
        if self.device.max_outstanding > 1 and line.key not in self._state.one_at_a_time:
            return self.device.max_outstanding
        return 1

    def _batch(self, asked: tuple[int, ...] | None) -> ReadBatch:
        """The reads of the steps `asked` (None: every step), built once per plan and set of steps."""
        batch = self._batches.get(asked)
        if batch is None:
            steps = self._steps if asked is None else [self._steps[n] for n in asked]
            batch = ReadBatch(self.device.unit_id, [(FUNCTION_CODES[r.table], r.start, r.count) for r, _ in steps])
            self._batches[asked] = batch
        return batch

    def _one_at_a_time(self, line: Line, why: str) -> None:
        """The endpoint does not take several outstanding requests: 1 from now on, for every device on it
        (until the collector restarts), said once."""
        if line.key in self._state.one_at_a_time:
            return
        self._state.one_at_a_time[line.key] = why
        log.warning("device=%s endpoint=%s event=max_outstanding_fallback max_outstanding=%d: %s; polling one "
                    "request at a time from now on. Fix: set max_outstanding: 1 for this device (the device or "
                    "gateway accepts only one outstanding Modbus TCP request)",
                    self.device.id, self.device.endpoint, self.device.max_outstanding, why)

    async def _cycle_batch(self, line: Line, client: MbapClient) -> list[Reading]:
        device_id = self.device.id
        illegal = self._memory.illegal
        out: list[Reading | None] = [None] * len(self.codecs)
        asked: tuple[int, ...] | None = None
        if illegal:
            now_m = time.monotonic()
            keep = []
            for n, (req, entries) in enumerate(self._steps):
                recheck = illegal.get(_span(req))
                if recheck is not None and now_m < recheck:
                    self._counters["illegal_skipped"] += 1
                    now = time.time()
                    for i, name, unit_name, _conv, _off in entries:
                        out[i] = Reading(device_id, name, None, unit_name, Quality.BAD_ILLEGAL_ADDRESS, now, now)
                else:
                    keep.append(n)
            if len(keep) < len(self._steps):
                asked = tuple(keep)
        batch = self._batch(asked)
        steps = list(range(len(self._steps))) if asked is None else list(asked)
        window = self.window(line)
        self._counters["max_outstanding"] = window
        self._counters["requests"] += len(batch)
        try:
            answers = await client.read_batch(batch, window)
        except NoAnswer:  # window 1: a request and its retries unanswered
            req = self._steps[steps[client.failed_at]][0]
            raise _Failure(f"no answer from unit {self.device.unit_id} within {self.device.timeout:g} s "
                           f"({self.device.retries + 1} tries) reading {req.table} {req.start}+{req.count}",
                           timeout=True) from None
        except ModbusError as exc:  # ConnectionLost or a garbled answer
            if window > 1 and client.failed_in_flight > 1:
                self._one_at_a_time(line, f"{exc} with {client.failed_in_flight} requests outstanding")
            what = "connection lost" if isinstance(exc, ConnectionLost) else "request failed"
            raise _Failure(f"{what}: {exc}", timeout=False) from None
        finally:
            line.last_answer = time.monotonic()
        missing = [k for k, a in enumerate(answers) if a is None]
        if missing:  # window > 1 only: ask again one at a time on a new connection (tcp.py's docstring)
            answers = await self._ask_again(line, steps, answers, missing, client.holes)
        replaced: dict[int, list[ReadRequest]] = {}
        for k, resp in enumerate(answers):
            n = steps[k]
            req, entries = self._steps[n]
            if resp is None:  # unanswered even alone
                now = time.time()
                for i, name, unit_name, _conv, _off in entries:
                    out[i] = Reading(device_id, name, None, unit_name, Quality.BAD_TIMEOUT, now, now)
                continue
            await self._settle(line, n, req, entries, resp, out, replaced)
        if replaced:
            self._replan(replaced)
        return out  # type: ignore[return-value]  # every index is filled: the plan covers every tag

    async def _ask_again(self, line: Line, steps: list[int], answers: list[Any], missing: list[int],
                         holes: list[int]) -> list[Any]:
        """A window ended with a request unanswered (the client closed the connection): reconnect and ask
        every request without a trusted answer again, one at a time, with the device's retries. A request
        unanswered alone too leaves its tags `bad_timeout` (two in a row: the device went silent, the cycle
        fails as a timeout); one answered alone that was not answered in the window shows the device does
        not take several outstanding requests (-> one at a time from now on)."""
        line.drop()
        await line.open(self.device)
        client = line.client
        if client is None:
            raise _Failure("not connected", timeout=False)
        line.configure(self.device)
        self._bind(client)
        answers = list(answers)
        silent = 0
        rescued = 0
        for k in missing:
            req = self._steps[steps[k]][0]
            try:
                answers[k] = await self._request(line, req)
            except _Failure as exc:
                if not exc.timeout or silent:
                    raise
                silent += 1
                continue
            silent = 0
            rescued += k in holes
        if all(a is None for a in answers):  # nothing answered in the window nor alone: a silent device
            raise _Failure(f"no answer from unit {self.device.unit_id} within {self.device.timeout:g} s "
                           f"({self.device.retries + 1} tries)", timeout=True)
        if rescued:
            self._one_at_a_time(line, f"{rescued} of {len(holes)} requests unanswered with "
                                f"{self.window(line)} outstanding were answered one at a time")
        return answers

    def _decode(self, req: ReadRequest, entries: list[_Entry], resp: Response, out: list[Reading | None]) -> None:
        """Fill `out` for the tags of one answered request."""
        device_id = self.device.id
        now = time.time()
        if resp.isError():
            self._counters["exception_responses"] += 1
            quality = exception_quality(resp.exception_code)
            if resp.exception_code == ILLEGAL_ADDRESS:
                self._memory.illegal[_span(req)] = time.monotonic() + ILLEGAL_RECHECK_S
            for i, name, unit_name, _conv, _off in entries:
                out[i] = Reading(device_id, name, None, unit_name, quality, now, now)
            return
        self._memory.illegal.pop(_span(req), None)
        words = resp.bits if req.is_bits else resp.registers
        if len(words) < req.count:
            for i, name, unit_name, _conv, _off in entries:
                out[i] = Reading(device_id, name, None, unit_name, Quality.BAD_DECODE, now, now)
            return
        for i, name, unit_name, conv, off in entries:
            try:
                value, quality = conv(words, off)
            except Exception:  # a bad tag never fails the poll
                value, quality = None, Quality.BAD_DECODE
            out[i] = Reading(device_id, name, value, unit_name, quality, now, now)

    async def _split(self, line: Line, req: ReadRequest, resp: Response) -> list[tuple[ReadRequest, Response]]:
        """Exception 02 on a range: bisect it by tags until each part is answered or is one address that the
        device refuses, then join neighbouring good parts again where the device accepts the union.

        Costs about 2·log2(tags) requests once; returns the parts in address order with their answers."""
        tags = [t for t, _ in req.tags]
        if len({t.address for t in tags}) == 1:
            return [(req, resp)]
        self._counters["splits"] += 1
        failing: list[tuple[int, int]] = [(req.start, req.end)]

        async def bisect(group: list[ModbusTag]) -> list[tuple[ReadRequest, Response]]:
            part = span_request(group)
            answer = await self._request(line, part)
            if not (answer.isError() and answer.exception_code == ILLEGAL_ADDRESS):
                return [(part, answer)]
            failing.append((part.start, part.end))
            if len({t.address for t in group}) == 1:
                return [(part, answer)]
            left, right = _halves(group)
            return await bisect(left) + await bisect(right)

        left, right = _halves(tags)
        pieces = await bisect(left) + await bisect(right)

        # join neighbouring good parts unless their union covers a range already known to fail
        merged: list[tuple[ReadRequest, Response]] = []
        for part, answer in pieces:
            if merged and not answer.isError() and not merged[-1][1].isError():
                prev = merged[-1][0]
                union = span_request([t for t, _ in prev.tags] + [t for t, _ in part.tags])
                if not any(union.start <= a and b <= union.end for a, b in failing):
                    joined = await self._request(line, union)
                    if not joined.isError():
                        merged[-1] = (union, joined)
                        continue
                    failing.append((union.start, union.end))
            merged.append((part, answer))
        return merged

    def _replan(self, replaced: dict[int, list[ReadRequest]]) -> None:
        """Remember the split: the plan (and every later adapter of this device) reads the parts."""
        plan: list[ReadRequest] = []
        for n, req in enumerate(self.plan):
            plan.extend(replaced.get(n, [req]))
        self.plan = plan
        self._steps = [(r, self._entries(r)) for r in plan]
        self._batches = {}
        self._memory.plan = [[t.name for t, _ in r.tags] for r in plan]

    async def _request(self, line: Line, req: ReadRequest, delay: float = 0.0) -> Response:
        """One request with the client's retries (after `delay` s of quiet on the line); every way of getting
        no usable answer becomes `_Failure`. The hot path of a sparse map (one call per request): what
        `Line.exchange` does is written out here, since an async context manager per request cost ~10 % of
        the collector's CPU there (bench/profile.py)."""
        fn = self._read_fns.get(req.table)
        if fn is None:
            raise _Failure("not connected", timeout=False)
        if delay or line.settle_until:
            await line.wait_turn(delay)
        try:
            unit = self.device.unit_id
            self._counters["requests"] += 1
            try:
                if not line.unframed:  # Modbus TCP: the client matched the answer by transaction id, fc and size
                    return await fn(req.start, count=req.count, device_id=unit)
                sent = time.monotonic()
                resp = await fn(req.start, count=req.count, device_id=unit)
                later_tries = getattr(resp, "retries", 0)
                if later_tries:
                    # RTU: an earlier try was answered; the answers to the later tries are still on their way and,
                    # with no transaction id, would be taken for the next request. Let them land unheard: a unit
                    # that works one request after the other answers each try as late as it answered this one.
                    line.settle_for(min(5.0, later_tries * (time.monotonic() - sent) * 1.2 + 0.05))
                mismatch = _mismatch(req, resp)
                if mismatch:
                    raise _Failure(f"answer does not match the request ({mismatch}): a late answer to an earlier "
                                   f"request? the line is reset", timeout=False)
                return resp
            except (ModbusError, OSError) as exc:
                raise self._failure(exc, line, f"({self.device.retries + 1} tries) reading {req.table} "
                                    f"{req.start}+{req.count}", "request failed") from None
        finally:
            line.last_answer = time.monotonic()

    # -- write-back (collector/writes/ checks the guard rails before it calls this)

    async def write(self, tag: str, value: Any, readback: bool = True) -> WriteOutcome:
        """Write one tag with FC 5 (a coil), 6 (one register), 16 (more registers) or a read-modify-write
        FC 3 + 6 (a bit of a register), encoded by the tag's own codec in reverse. Holds the line's lock for
        the old-value read, the write and the readback: on an RTU line no poll of a neighbour comes between,
        and never two requests are in flight."""
        i = self._index.get(tag)
        if i is None:
            raise WriteError("unknown_tag", f"no tag '{tag}' on device {self.device.id}")
        codec, cfg = self.codecs[i], self.device.tags[i]
        if codec.table not in ("coil", "holding_register"):
            raise WriteError("not_writable", f"a {codec.table} is read-only in Modbus")
        try:
            words = codec.encode_write(value)
        except ValueError as exc:
            raise WriteError("type_mismatch", str(exc)) from None
        line = self.line
        if line is None or not line.connected or line.client is None:
            raise AdapterError("not connected")
        req = span_request([cfg])
        async with line.session(self.device) as client:
            self._bind(client)
            try:
                before = await self._request(line, req, self.device.inter_request_delay)
                old = self._value(codec, req, before)
                if codec.bit is not None and not codec.is_bits:  # one bit of a register: keep the others
                    if before.isError():
                        raise WriteError("device_refused", f"reading the register failed: exception "
                                         f"{before.exception_code}")
                    mask = 1 << codec.bit
                    words = [(before.registers[0] | mask) if words[0] else (before.registers[0] & ~mask)]
                answer = await self._write_request(line, client, codec, words)
                if answer.isError():
                    code = answer.exception_code
                    raise WriteError("device_refused", f"the device answered exception {code:02d} "
                                     f"({_EXCEPTION_NAMES.get(code, 'device failure')})")
                if not readback:
                    return WriteOutcome(old, None)
                after = await self._request(line, req, self.device.inter_request_delay)
            except _Failure as exc:
                if not exc.timeout:
                    line.drop()
                    raise AdapterError(exc.reason) from None
                raise WriteError("no_answer", f"{exc.reason}; the write may or may not have been applied "
                                 "(no retry, so it is never applied twice)") from None
        value_after, quality = self._convert(codec, req, after)
        return WriteOutcome(old, value_after, quality)

    def _convert(self, codec: TagCodec, req: ReadRequest, resp: Response) -> tuple[Any, str]:
        if resp.isError():
            return None, exception_quality(resp.exception_code)
        words = resp.bits if req.is_bits else resp.registers
        try:
            return codec.convert(words, 0)
        except Exception:
            return None, Quality.BAD_DECODE

    def _value(self, codec: TagCodec, req: ReadRequest, resp: Response) -> Any:
        value, quality = self._convert(codec, req, resp)
        return value if quality in (Quality.GOOD, Quality.BAD_OUT_OF_RANGE) else None

    async def _write_request(self, line: Line, client: ModbusClient, codec: TagCodec, words: list[int]) -> Any:
        """One write request, one try (`retries` are for reads: a write answered late must not be sent
        again); failures become `_Failure` as in `_request`."""
        unit, address = self.device.unit_id, codec.address
        fc = 5 if codec.is_bits else 6 if len(words) == 1 else 16
        self._counters["requests"] += 1
        self._counters["writes"] = self._counters.get("writes", 0) + 1
        client.retries = 0  # the lean TCP client's writes are one try anyway; pymodbus's RTU client retries
        try:
            async with line.exchange(self.device.inter_request_delay):
                if fc == 5:
                    resp = await client.write_coil(address, bool(words[0]), device_id=unit)
                elif fc == 6:
                    resp = await client.write_register(address, words[0], device_id=unit)
                else:
                    resp = await client.write_registers(address, words, device_id=unit)
            got = getattr(resp, "function_code", fc)
            if got not in (fc, fc | 0x80):
                raise _Failure(f"answer does not match the write (function code {got}, expected {fc}): the line "
                               "is reset", timeout=False)
            return resp
        except (ModbusError, OSError) as exc:
            raise self._failure(exc, line, "to the write", "write failed", settle=True) from None
        finally:
            client.retries = self.device.retries

    def _failure(self, exc: Exception, line: Line, unanswered: str, failed: str, settle: bool = False) -> _Failure:
        """What a read (`_request`) or a write (`_write_request`) that raised `exc` amounts to: one mapping, so
        both tell a lost connection from silence alike. `unanswered` ends the message of a request without
        an answer, `failed` starts that of any other error; `settle` (the write): on an RTU line, a late
        answer to the unanswered request is let land unheard."""
        unit = self.device.unit_id
        if isinstance(exc, ConnectionLost):
            return _Failure(f"connection lost: {exc}", timeout=False)
        if isinstance(exc, NoAnswer):
            if "CLOSING CONNECTION" in str(exc) or not line.connected:
                return _Failure(f"connection lost: {exc}", timeout=False)
            if settle and line.unframed:  # a late answer must not be taken for the next poll's
                line.settle_for(self.device.timeout)
            return _Failure(f"no answer from unit {unit} within {self.device.timeout:g} s {unanswered}",
                            timeout=True)
        if isinstance(exc, TimeoutError):
            return _Failure(f"no answer from unit {unit}: {exc}", timeout=True)
        return _Failure(f"{failed}: {exc}", timeout=False)

    # -- identity (evidence; the engine calls it beside the poll loop, after connect and once a day)

    async def identify(self) -> dict[str, Any]:
        """FC 43/14 device identification, the configured `identity:` tags (`tag.<name>`) and the endpoint's
        MAC (`mac`, TCP endpoints). A part without an answer in time is left out; exception 01 to FC 43 is a
        definite "unsupported" (many devices have no identification: that is never held against them)."""
        line = self.line
        if line is None or not line.connected or line.client is None:
            raise AdapterError("not connected")
        out: dict[str, Any] = {"protocol": "modbus"}
        unit = self.device.unit_id
        async with line.session(self.device) as client:
            self._bind(client)

            async def ask(read_code: int, object_id: int) -> Any:
                async with line.exchange(self.device.inter_request_delay):
                    return await client.read_device_identification(read_code, object_id, device_id=unit)

            try:
                out.update(await read_identification(ask))
            except (NoAnswer, TimeoutError) as exc:
                if line.unframed:  # a late answer must not be taken for the next poll's
                    line.settle_for(self.device.timeout)
                self._counters["last_error"] = f"identification: no answer: {exc}"
            except ConnectionLost as exc:
                raise AdapterError(f"connection lost: {exc}") from None
            except ModbusError as exc:  # a garbled identification answer: the connection is closed
                line.drop()
                raise AdapterError(f"identification answer garbled: {exc}") from None
            for tag in self.device.identity:
                try:
                    resp = await self._request(line, span_request([tag]))
                except _Failure as exc:
                    if not exc.timeout:
                        line.drop()
                        raise AdapterError(exc.reason) from None
                    continue
                if resp.isError():
                    out[f"tag.{tag.name}"] = None
                    continue
                words = resp.bits if tag.table in ("coil", "discrete_input") else resp.registers
                value, quality = compile_tag(tag, self.device.byte_order).convert(words, 0)
                out[f"tag.{tag.name}"] = value if quality == Quality.GOOD else None
        out.update(await _mac(self.device))
        return out

    def stats(self) -> dict[str, Any]:
        """Requests per cycle, request/exception/failure counters, last cycle duration."""
        line = self.line
        return {"requests_per_cycle": len(self.plan), "tags": len(self.codecs),
                "illegal_requests": len(self._memory.illegal),
                "line_shared_by": len(line.users) if line is not None else 0, **self._counters}
