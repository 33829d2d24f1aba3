"""A lean Modbus TCP client (MBAP framing, function codes 1-4, 5/6/15/16 for write-back, and 43/14 for identity
evidence) for `tcp://`

Why not pymodbus here: its client spends ~50-90 µs of CPU per request (transaction manager, `wait_for`, framer,
PDU objects, log formatting), which dominates a collector polling sparse maps. This one is an
`asyncio.Protocol` that reads a device's whole poll cycle as one `ReadBatch`: the next request is written from
`data_received` as soon as an answer is in, so the polling task wakes once per cycle, not once per request, and
one `call_at` timer watches the oldest request instead of one timer per try. With `window` > 1 (the device's
`max_outstanding`) up to that many requests are in flight, written with one `write` and matched by transaction
id; the answers of one segment are parsed in one pass. `rtu+tcp://` and `serial://` stay on pymodbus
(adapters/modbus/line.py).

What it guarantees, and how the adapter (adapters/modbus/adapter.py) reads it:
- an answer is taken only if its transaction id is a pending try's, and its unit id and function code
  match; anything else (a late answer after a timeout, a stray frame) is dropped. Each try gets a new
  transaction id (1..65535, wrapping), and an answer to an earlier try of the same request is dropped too:
  if that answer was cut short, its stale header would claim the first bytes of the retry's answer (MBAP
  has no checksum), so a splice of two answers could pass as one;
- no answer within `timeout`: resend up to `retries` times, then `NoAnswer` (-> timeout);
- framing is kept across tries only at a frame boundary: a try that ends without its answer (timeout or
  cancellation) while part of a frame is buffered closes the connection, since no byte received before the
  try ended may be joined to bytes received after it. A timeout then fails the request with `ModbusError`
  (a truncated answer is a protocol error, not silence) instead of retrying on a broken stream;
- the peer closes the connection: the pending request fails at once with `ConnectionLost`, and so
  does every later request (no reconnect here: the line decides);
- a garbled answer (bad MBAP header, byte count not matching the request or the frame) is a protocol error:
  the pending request fails with `ModbusError` and the connection is closed, since after a bad
  length the byte stream cannot be trusted. The adapter maps it to "request failed" (`AdapterError`, the line
  is dropped and reconnected), i.e. a fact about the device, not about the tags;
- an exception response gives an `Answer` with `isError()` true and its `exception_code`;
- cancelling the awaiting task clears the pending request, so its answer is dropped when it comes.

With several requests in flight (`window` > 1) a cut-short answer is no longer the last thing of its try: the
device goes on with the answers to the other requests, and the stale header would frame their first bytes.
Such a splice always swallows the header of another pending answer, so that request never gets its answer.
Hence, on top of the above:
- requests in flight together differ in function code or byte count, so a device that mixes up transaction
  ids gives itself away by a byte count that does not match (a garbled answer) instead of passing one
  request's registers off as another's;
- no retries inside a window: the first request that gets no answer in `timeout` ends the batch and closes
  the connection (the device may still hold requests and answer them in place of later ones). The answers
  accepted before that request was written are kept; every later one may hold its swallowed bytes and is
  dropped (None in the result, like the unanswered ones). `holes` lists the requests that got no answer, for
  the adapter, which asks the dropped ones again one at a time on a new connection.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from adapters.base import OneConnectionClient
from adapters.modbus.errors import ConnectionLost, ModbusError, NoAnswer
from adapters.modbus.identification import FUNCTION_CODE as _MEI_FC
from adapters.modbus.identification import MEI_DEVICE_IDENTIFICATION, parse_device_identification

__all__ = ["Answer", "MbapClient", "MeiAnswer", "ReadBatch"]

log = logging.getLogger(__name__)

_REQUEST = struct.Struct(">HHHBBHH")  # tid, protocol 0, length 6, unit, function, address, count
_HEADER = struct.Struct(">HHHBB")  # tid, protocol, length, unit, function
_MAX_LENGTH = 254  # MBAP length field: unit + PDU (at most 253 bytes)
_WRITE_FCS = (5, 6, 15, 16)
_ECHO = struct.Struct(">I")  # address << 16 | value (5, 6) or quantity (15, 16)
_MAX_COUNT = {1: 2000, 2: 2000, 3: 125, 4: 125}
_REGISTERS = [struct.Struct(f">{n}H") for n in range(126)]
_BITS = [tuple(bool(b >> i & 1) for i in range(8)) for b in range(256)]  # LSB first


class Answer:
    """A read answer, shaped like the parts of pymodbus's `ModbusPDU` that the adapter uses."""

    __slots__ = ("bits", "exception_code", "function_code", "registers")

    def __init__(self, function_code: int, registers: Sequence[int], bits: Sequence[bool],
                 exception_code: int) -> None:
        self.function_code = function_code
        self.registers = registers
        self.bits = bits
        self.exception_code = exception_code

    def isError(self) -> bool:  # pymodbus's name
        return self.function_code > 0x80

    def __repr__(self) -> str:
        if self.isError():
            return f"Answer(fc={self.function_code:#x}, exception_code={self.exception_code})"
        return f"Answer(fc={self.function_code}, registers={list(self.registers)}, bits={list(self.bits)})"


class MeiAnswer(Answer):
    """An FC 43/14 Read Device Identification answer (attribute names as pymodbus's response has them)."""

    __slots__ = ("conformity", "information", "more_follows", "next_object_id", "read_code")

    def __init__(self, pdu: bytes) -> None:
        super().__init__(_MEI_FC, (), (), 0)
        parsed = parse_device_identification(pdu)
        self.read_code = parsed.read_code
        self.conformity = parsed.conformity
        self.more_follows = parsed.more_follows
        self.next_object_id = parsed.next_object_id
        self.information = parsed.information


class ReadBatch:
    """The read requests of one unit's poll cycle, checked and prepared once (the adapter keeps one per plan):
    `(function code, address, count)` each."""

    __slots__ = ("addresses", "byte_counts", "counts", "fcs", "sigs", "unit")

    def __init__(self, unit: int, requests: Sequence[tuple[int, int, int]]) -> None:
        if not 0 <= unit <= 0xFF:
            raise ValueError(f"bad unit id {unit}")
        for fc, address, count in requests:
            if fc not in _MAX_COUNT or not 1 <= count <= _MAX_COUNT[fc]:
                raise ValueError(f"function code {fc}: 1 <= count {count} <= {_MAX_COUNT.get(fc, 0)} !")
            if not 0 <= address <= 0xFFFF:
                raise ValueError(f"bad address {address}")
        self.unit = unit
        self.fcs = [r[0] for r in requests]
        self.addresses = [r[1] for r in requests]
        self.counts = [r[2] for r in requests]
        self.byte_counts = [c * 2 if fc > 2 else (c + 7) >> 3 for fc, _a, c in requests]
        # what tells two answers apart when their transaction ids are mixed up
        self.sigs = [fc << 8 | bc for fc, bc in zip(self.fcs, self.byte_counts, strict=True)]

    def __len__(self) -> int:
        return len(self.fcs)


class _Run:
    """A batch being read: per request its transaction id, send time and answer."""

    __slots__ = ("accepted", "answers", "batch", "deadline_at", "done", "future", "in_flight", "order",
                 "queue", "retries", "sent", "seq", "sigs", "tids", "timeout", "timer", "tries", "window")

    def __init__(self, batch: ReadBatch, window: int, timeout: float, retries: int,
                 future: asyncio.Future[None]) -> None:
        n = len(batch)
        self.batch = batch
        self.window = window
        self.timeout = timeout
        self.retries = retries if window == 1 else 0
        self.future = future
        self.answers: list[Answer | None] = [None] * n
        self.tids = [0] * n
        self.deadline_at = [0.0] * n
        self.seq = [0] * n  # position in send order
        self.accepted = [0] * n  # requests written when the answer was taken
        self.tries = [0] * n
        self.queue: list[int] = list(range(n - 1, -1, -1))  # unsent, next at the end
        self.order: deque[int] = deque()  # in flight, in send order
        self.sigs: dict[int, int] = {}  # signature -> requests in flight with it
        self.in_flight = 0
        self.sent = 0
        self.done = 0
        self.timer: asyncio.TimerHandle | None = None


_Read = Coroutine[Any, Any, Answer]
_MEI_REQUEST = struct.Struct(">HHHBBBBB")  # tid, protocol 0, length 5, unit, 0x2B, 0x0E, read code, object id


def _expire(waiter: asyncio.Future[Answer | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)  # None = no answer in time


class MbapClient(OneConnectionClient):
    """One Modbus TCP connection (build a new client to reconnect); `timeout` (also for connecting) and
    `retries` may be changed between requests."""

    def __init__(self, host: str, port: int, *, timeout: float = 1.0, retries: int = 0) -> None:
        super().__init__(host, port, timeout)
        self.retries = retries
        self.holes: list[int] = []  # the requests of the last batch that got no answer in a window > 1
        self.failed_at = 0  # the request of the last batch whose tries all went unanswered (window 1)
        self.failed_in_flight = 0  # requests in flight when the last batch failed
        # a batch being read (reads), or the pending single request (writes, identification)
        self._run: _Run | None = None
        self._pending: dict[int, int] = {}  # transaction id -> request of the batch
        self._waiter: asyncio.Future[Any] | None = None
        self._tid = 0
        self._unit = 0
        self._fc = 0
        self._count = 0

    def __str__(self) -> str:
        return f"MbapClient({self.host}:{self.port})"

    # -- connection

    def close(self) -> None:
        transport, self._transport = self._transport, None
        self._buffer = b""
        if transport is not None:
            transport.close()
        self._fail(ConnectionLost("connection closed"))

    def _lost(self, exc: Exception | None) -> Exception:
        return ConnectionLost("connection closed by the device" if exc is None else f"connection lost: {exc}")

    # -- reads

    def read_coils(self, address: int, *, count: int = 1, device_id: int = 1) -> _Read:
        return self._request(1, address, count, device_id)

    def read_discrete_inputs(self, address: int, *, count: int = 1, device_id: int = 1) -> _Read:
        return self._request(2, address, count, device_id)

    def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> _Read:
        return self._request(3, address, count, device_id)

    def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> _Read:
        return self._request(4, address, count, device_id)

    async def _request(self, fc: int, address: int, count: int, device_id: int) -> Answer:
        answer = (await self.read_batch(ReadBatch(device_id, [(fc, address, count)])))[0]
        assert answer is not None  # window 1: no answer raises
        return answer

    async def read_batch(self, batch: ReadBatch, window: int = 1) -> list[Answer | None]:
        """Read every request of `batch`, up to `window` in flight; the answers in batch order.

        Window 1: each request with `retries`, and every failure raises as for one request (the first one
        ends the batch). Window > 1: a garbled or truncated answer or a lost connection raises; a request
        without an answer ends the batch, closes the connection and leaves None for it and for every answer
        that may hold its bytes (see the module docstring); `holes` names the unanswered ones."""
        if window < 1:
            raise ValueError("window >= 1")
        async with self._lock:  # one batch at a time per connection
            self.holes = []
            if not len(batch):
                return []
            transport = self._transport
            if transport is None:
                raise ConnectionLost(f"not connected to {self.host}:{self.port}")
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            run = self._run = _Run(batch, window, self.timeout, self.retries, future)
            self._waiter = future
            try:
                self._send(run)
                try:
                    await future
                except asyncio.CancelledError:
                    if self._buffer:
                        self.close()  # mid-frame: the rest, if it ever comes, would misalign the next answer
                    raise
                except Exception:
                    self.failed_in_flight = run.in_flight
                    raise
            finally:
                if run.timer is not None:
                    run.timer.cancel()
                self._pending.clear()
                self._run = None
                self._waiter = None
            return run.answers

    def _send(self, run: _Run) -> None:
        """Write as many requests as the window allows, in one write."""
        transport = self._transport
        if transport is None:
            return
        batch = run.batch
        queue = run.queue
        pending = self._pending
        unit = batch.unit
        frames: list[bytes] = []
        sent: list[int] = []
        while queue and run.in_flight < run.window:
            if run.window == 1:
                i = queue.pop()
            else:  # the next request whose answer cannot be taken for one in flight
                sigs = run.sigs
                for k in range(len(queue) - 1, -1, -1):
                    if batch.sigs[queue[k]] not in sigs:
                        i = queue.pop(k)
                        break
                else:
                    break
                sig = batch.sigs[i]
                sigs[sig] = 1
            tid = self._tid = self._tid % 0xFFFF + 1
            pending[tid] = i
            run.tids[i] = tid
            run.seq[i] = run.sent
            run.sent += 1
            run.in_flight += 1
            run.order.append(i)
            sent.append(i)
            frames.append(_REQUEST.pack(tid, 0, 6, unit, batch.fcs[i], batch.addresses[i], batch.counts[i]))
        if not frames:
            return
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        deadline = asyncio.get_running_loop().time() + run.timeout
        at = run.deadline_at
        for i in sent:
            at[i] = deadline
        if run.timer is None:
            run.timer = asyncio.get_running_loop().call_at(deadline, self._expire, run)

    def _expire(self, run: _Run) -> None:
        """The timer of the oldest request in flight: re-armed if it was answered, else its try ended."""
        run.timer = None
        if self._run is not run or run.future.done():
            return
        order = run.order
        answers = run.answers
        while order and answers[order[0]] is not None:
            order.popleft()
        if not order:
            return
        head = order[0]
        loop = asyncio.get_running_loop()
        if loop.time() < run.deadline_at[head]:
            run.timer = loop.call_at(run.deadline_at[head], self._expire, run)
            return
        if self._buffer:
            self._fail(self._truncation())
            self.close()
            return
        tid = run.tids[head]
        if run.window == 1:
            if run.tries[head] < run.retries:
                run.tries[head] += 1
                del self._pending[tid]
                order.popleft()
                run.in_flight -= 1
                run.queue.append(head)
                self._send(run)
                return
            self.failed_at = head
            run.future.set_exception(NoAnswer(
                f"No response received after {run.retries} retries, continue with next request"))
            return
        # window > 1: the batch ends here (see the module docstring)
        first = run.seq[head]
        self.holes = [i for i in order if answers[i] is None]
        for i, answer in enumerate(answers):
            if answer is not None and run.accepted[i] > first:
                answers[i] = None
        run.future.set_result(None)
        self.close()

    async def read_device_identification(self, read_code: int = 1, object_id: int = 0, *,
                                         device_id: int = 1) -> Answer:
        """FC 43 / MEI 14: one request, one try (identity evidence is asked once per connect and once a day,
        never on the poll path); a `MeiAnswer`, or an `Answer` with the exception code; no answer within
        `timeout` raises NoAnswer."""
        return await self._once(_MEI_FC, device_id, 0, lambda tid: _MEI_REQUEST.pack(
            tid, 0, 5, device_id, _MEI_FC, MEI_DEVICE_IDENTIFICATION, read_code, object_id))

    # -- writes (FC 5, 6, 15, 16): one try each, so a lost answer never makes the device act twice

    def write_coil(self, address: int, value: bool, *, device_id: int = 1) -> _Read:
        return self._write(5, address, 0xFF00 if value else 0, b"", device_id)

    def write_register(self, address: int, value: int, *, device_id: int = 1) -> _Read:
        return self._write(6, address, value & 0xFFFF, b"", device_id)

    def write_coils(self, address: int, values: Sequence[bool], *, device_id: int = 1) -> _Read:
        data = bytearray((len(values) + 7) >> 3)
        for i, v in enumerate(values):
            if v:
                data[i >> 3] |= 1 << (i & 7)
        return self._write(15, address, len(values), bytes([len(data)]) + bytes(data), device_id)

    def write_registers(self, address: int, values: Sequence[int], *, device_id: int = 1) -> _Read:
        data = struct.pack(f">{len(values)}H", *(v & 0xFFFF for v in values))
        return self._write(16, address, len(values), bytes([len(data)]) + data, device_id)

    async def _write(self, fc: int, address: int, word: int, tail: bytes, device_id: int) -> Answer:
        """A write request: address and value (5, 6) or quantity (15, 16), then the data; the answer echoes
        the address and the value or quantity, which `data_received` checks."""
        if not (0 <= address <= 0xFFFF and 0 <= device_id <= 0xFF) or (fc in (15, 16) and not 1 <= word <= (
                1968 if fc == 15 else 123)):
            raise ValueError(f"bad address {address}, quantity {word} or unit id {device_id}")
        return await self._once(fc, device_id, (address << 16) | word, lambda tid: _REQUEST.pack(
            tid, 0, 6 + len(tail), device_id, fc, address, word) + tail)

    async def _once(self, fc: int, device_id: int, echo: int, frame: Callable[[int], bytes]) -> Answer:
        """Send one request framed by `frame(tid)` and wait one `timeout` for its answer (no retries)."""
        async with self._lock:
            transport = self._transport
            if transport is None:
                raise ConnectionLost(f"not connected to {self.host}:{self.port}")
            loop = asyncio.get_running_loop()
            self._unit, self._fc, self._count = device_id, fc, echo
            tid = self._tid = self._tid % 0xFFFF + 1
            waiter: asyncio.Future[Answer | None] = loop.create_future()
            self._waiter = waiter
            transport.write(frame(tid))
            timer = loop.call_later(self.timeout, _expire, waiter)
            try:
                answer = await waiter
            except asyncio.CancelledError:
                if self._buffer:
                    self.close()  # mid-frame: as in read_batch
                raise
            finally:
                timer.cancel()
                self._waiter = None
            if answer is None:
                if self._buffer:
                    exc = self._truncation()
                    self.close()
                    raise exc
                raise NoAnswer(f"no answer to function code {fc}")
            return answer

    # -- answers

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        size = len(data)
        pos = 0
        run = self._run
        while size - pos >= 8:
            tid, protocol, length, unit, fc = _HEADER.unpack_from(data, pos)
            if protocol or not 3 <= length <= _MAX_LENGTH:
                self._garbled(f"bad MBAP header (protocol {protocol}, length {length})")
                return
            end = pos + 6 + length
            if end > size:
                break
            if run is not None:
                if not self._take_read(run, tid, unit, fc, length, data, pos, end):
                    return
            elif not self._take_once(tid, unit, fc, length, data, pos, end):
                return
            pos = end
        if pos < size:
            self._buffer = data[pos:] if pos else data
        if run is not None and not run.future.done():
            if run.done == len(run.answers):
                run.future.set_result(None)
            elif run.queue and run.in_flight < run.window:
                self._send(run)

    def _take_read(self, run: _Run, tid: int, unit: int, fc: int, length: int, data: bytes, pos: int,
                   end: int) -> bool:
        """One whole frame while a batch is read; False when it is garbled (the connection is closed)."""
        i = self._pending.get(tid)
        batch = run.batch
        if i is None or (unit != batch.unit and batch.unit):
            log.debug("dropped an answer (transaction %d, unit %d) matching no pending request", tid, unit)
            return True
        want = batch.fcs[i]
        if fc == want:
            byte_count = data[pos + 8]
            if byte_count != batch.byte_counts[i] or length != byte_count + 3:
                self._garbled(f"byte count {byte_count} in a frame of length {length} answering "
                              f"{batch.counts[i]} {'registers' if fc > 2 else 'bits'}")
                return False
            count = batch.counts[i]
            if fc > 2:
                answer = Answer(fc, _REGISTERS[count].unpack_from(data, pos + 9), (), 0)
            else:
                bits = [b for byte in data[pos + 9:end] for b in _BITS[byte]]
                del bits[count:]
                answer = Answer(fc, (), bits, 0)
        elif fc == want | 0x80:
            if length != 3:
                self._garbled(f"exception answer of length {length}")
                return False
            answer = Answer(fc, (), (), data[pos + 8])
        else:
            log.debug("dropped an answer with function code %#x to a request with %#x", fc, want)
            return True
        del self._pending[tid]
        run.answers[i] = answer
        run.accepted[i] = run.sent
        run.done += 1
        run.in_flight -= 1
        if run.window > 1:
            del run.sigs[batch.sigs[i]]
        return True

    def _take_once(self, tid: int, unit: int, fc: int, length: int, data: bytes, pos: int, end: int) -> bool:
        """One whole frame while a write or an identification waits; False when it is garbled."""
        waiter = self._waiter
        if waiter is None or waiter.done() or tid != self._tid or (unit != self._unit and self._unit):
            log.debug("dropped an answer (transaction %d, unit %d) matching no pending request", tid, unit)
            return True
        if fc == self._fc == _MEI_FC:  # Read Device Identification: its own layout
            try:
                waiter.set_result(MeiAnswer(data[pos + 8:end]))
            except ValueError as exc:
                self._garbled(f"device identification: {exc}")
                return False
        elif fc == self._fc:  # a write: the echo of address and value or quantity
            if length != 6 or _ECHO.unpack_from(data, pos + 8)[0] != self._count:
                self._garbled(f"write answer (function code {fc}, length {length}) does not echo the request")
                return False
            waiter.set_result(Answer(fc, (), (), 0))
        elif fc == self._fc | 0x80:
            if length != 3:
                self._garbled(f"exception answer of length {length}")
                return False
            waiter.set_result(Answer(fc, (), (), data[pos + 8]))
        else:
            log.debug("dropped an answer with function code %#x to a request with %#x", fc, self._fc)
        return True

    def _truncation(self) -> ModbusError:
        """A try timed out with part of a frame buffered: the device cut an answer short (or is too slow to
        finish one in `timeout`). Its stale header must never frame the next try's bytes: the caller closes."""
        held = self._buffer
        length = _HEADER.unpack_from(held)[2] + 6 if len(held) >= 8 else 0
        whole = f" of a {length}-byte frame" if length else ""
        return ModbusError(f"truncated answer from {self.host}:{self.port}: {len(held)} bytes{whole}, then "
                               f"nothing for {self.timeout:g} s; the connection is closed")

    def _garbled(self, why: str) -> None:
        """The byte stream cannot be trusted any more: fail the pending request and close."""
        self._fail(ModbusError(f"garbled answer from {self.host}:{self.port}: {why}"))
        self.close()
