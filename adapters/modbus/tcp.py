"""A lean Modbus TCP client (MBAP framing, function codes 1-4, 5/6/15/16 for write-back, and 43/14 for identity
evidence) for `tcp://`

Why not pymodbus here: its client spends ~50-90 µs of CPU per request (transaction manager, `wait_for`, framer,
PDU objects, log formatting), which dominates a collector polling sparse maps. This one is an
`asyncio.Protocol` with one request outstanding at a time and one `call_later` timer per try; it costs a
fraction of that. `rtu+tcp://` and `serial://` stay on pymodbus (adapters/modbus/line.py).

What it guarantees, and how the adapter (adapters/modbus/adapter.py) reads it:
- an answer is taken only if its transaction id is the pending try's, and its unit id and function code
  match; anything else (a late answer after a timeout, a stray frame) is dropped. Each try gets a new
  transaction id (1..65535, wrapping), and an answer to an earlier try of the same request is dropped too:
  if that answer was cut short, its stale header would claim the first bytes of the retry's answer (MBAP
  has no checksum), so a splice of two answers could pass as one;
- no answer within `timeout`: resend up to `retries` times, then `ModbusIOException` (-> timeout);
- framing is kept across tries only at a frame boundary: a try that ends without its answer (timeout or
  cancellation) while part of a frame is buffered closes the connection, since no byte received before the
  try ended may be joined to bytes received after it. A timeout then fails the request with `ModbusException`
  (a truncated answer is a protocol error, not silence) instead of retrying on a broken stream;
- the peer closes the connection: the pending request fails at once with `ConnectionException`, and so
  does every later request (no reconnect here: the line decides);
- a garbled answer (bad MBAP header, byte count not matching the request or the frame) is a protocol error:
  the pending request fails with `ModbusException` and the connection is closed, since after a bad
  length the byte stream cannot be trusted. The adapter maps it to "request failed" (`AdapterError`, the line
  is dropped and reconnected), i.e. a fact about the device, not about the tags;
- an exception response gives an `Answer` with `isError()` true and its `exception_code`;
- cancelling the awaiting task clears the pending request, so its answer is dropped when it comes.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from adapters.base import OneConnectionClient
from adapters.modbus.identification import FUNCTION_CODE as _MEI_FC
from adapters.modbus.identification import MEI_DEVICE_IDENTIFICATION, parse_device_identification

__all__ = ["Answer", "MbapClient", "MeiAnswer"]

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
        # the pending request
        self._waiter: asyncio.Future[Answer | None] | None = None
        self._tid = 0
        self._unit = 0
        self._fc = 0
        self._count = 0
        self._byte_count = 0

    def __str__(self) -> str:
        return f"MbapClient({self.host}:{self.port})"

    # -- connection

    def close(self) -> None:
        transport, self._transport = self._transport, None
        self._buffer = b""
        if transport is not None:
            transport.close()
        self._fail(ConnectionException("connection closed"))

    def _lost(self, exc: Exception | None) -> Exception:
        return ConnectionException("connection closed by the device" if exc is None else f"connection lost: {exc}")

    # -- requests

    def read_coils(self, address: int, *, count: int = 1, device_id: int = 1) -> _Read:
        return self._request(1, address, count, device_id)

    def read_discrete_inputs(self, address: int, *, count: int = 1, device_id: int = 1) -> _Read:
        return self._request(2, address, count, device_id)

    def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> _Read:
        return self._request(3, address, count, device_id)

    def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> _Read:
        return self._request(4, address, count, device_id)

    async def _request(self, fc: int, address: int, count: int, device_id: int) -> Answer:
        if not 1 <= count <= _MAX_COUNT[fc]:
            raise ValueError(f"1 <= count {count} <= {_MAX_COUNT[fc]} !")
        if not (0 <= address <= 0xFFFF and 0 <= device_id <= 0xFF):
            raise ValueError(f"bad address {address} or unit id {device_id}")
        async with self._lock:  # one request outstanding per connection
            loop = asyncio.get_running_loop()
            self._unit = device_id
            self._fc = fc
            self._count = count
            self._byte_count = count * 2 if fc > 2 else (count + 7) >> 3
            tries = 0
            try:
                while True:
                    transport = self._transport
                    if transport is None:
                        raise ConnectionException(f"not connected to {self.host}:{self.port}")
                    tid = self._tid = self._tid % 0xFFFF + 1
                    waiter = self._waiter = loop.create_future()
                    transport.write(_REQUEST.pack(tid, 0, 6, device_id, fc, address, count))
                    timer = loop.call_later(self.timeout, _expire, waiter)
                    try:
                        answer = await waiter
                    except asyncio.CancelledError:
                        if self._buffer:
                            self.close()  # mid-frame: the rest, if it ever comes, would misalign the next answer
                        raise
                    finally:
                        timer.cancel()
                    if answer is not None:
                        return answer
                    if self._buffer:
                        self._truncated()
                    if tries >= self.retries:
                        raise ModbusIOException(
                            f"No response received after {self.retries} retries, continue with next request",
                            fc, transaction_id=tid, dev_id=device_id)
                    tries += 1
            finally:
                self._waiter = None

    async def read_device_identification(self, read_code: int = 1, object_id: int = 0, *,
                                         device_id: int = 1) -> Answer:
        """FC 43 / MEI 14: one request, one try (identity evidence is asked once per connect and once a day,
        never on the poll path); a `MeiAnswer`, or an `Answer` with the exception code; no answer within
        `timeout` raises ModbusIOException."""
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
                raise ConnectionException(f"not connected to {self.host}:{self.port}")
            loop = asyncio.get_running_loop()
            self._unit, self._fc, self._count, self._byte_count = device_id, fc, echo, 0
            tid = self._tid = self._tid % 0xFFFF + 1
            waiter = self._waiter = loop.create_future()
            transport.write(frame(tid))
            timer = loop.call_later(self.timeout, _expire, waiter)
            try:
                answer = await waiter
            except asyncio.CancelledError:
                if self._buffer:
                    self.close()  # mid-frame: as in _request
                raise
            finally:
                timer.cancel()
                self._waiter = None
            if answer is None:
                if self._buffer:
                    self._truncated()
                raise ModbusIOException(f"no answer to function code {fc}", fc, transaction_id=tid,
                                        dev_id=device_id)
            return answer

    def _take_mei(self, waiter: asyncio.Future[Answer | None], pdu: bytes) -> bool:
        """An FC 43 answer to our FC 43 request (no byte count to check: the objects carry their lengths);
        False when it is garbled (the connection is closed)."""
        try:
            waiter.set_result(MeiAnswer(pdu))
        except ValueError as exc:
            self._garbled(f"device identification: {exc}")
            return False
        return True

    # -- answers

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        size = len(data)
        pos = 0
        while size - pos >= 8:
            tid, protocol, length, unit, fc = _HEADER.unpack_from(data, pos)
            if protocol or not 3 <= length <= _MAX_LENGTH:
                self._garbled(f"bad MBAP header (protocol {protocol}, length {length})")
                return
            end = pos + 6 + length
            if end > size:
                break
            waiter = self._waiter
            if (waiter is not None and not waiter.done() and tid == self._tid
                    and (unit == self._unit or not self._unit)):
                if fc == self._fc == _MEI_FC:  # Read Device Identification: its own layout
                    if not self._take_mei(waiter, data[pos + 8:end]):
                        return
                elif fc == self._fc and fc in _WRITE_FCS:  # the echo of address and value or quantity
                    if length != 6 or _ECHO.unpack_from(data, pos + 8)[0] != self._count:
                        self._garbled(f"write answer (function code {fc}, length {length}) does not echo the "
                                      "request")
                        return
                    waiter.set_result(Answer(fc, (), (), 0))
                elif fc == self._fc:
                    byte_count = data[pos + 8]
                    if byte_count != self._byte_count or length != byte_count + 3:
                        self._garbled(f"byte count {byte_count} in a frame of length {length} answering "
                                      f"{self._count} {'registers' if fc > 2 else 'bits'}")
                        return
                    if fc > 2:
                        waiter.set_result(Answer(fc, _REGISTERS[self._count].unpack_from(data, pos + 9), (), 0))
                    else:
                        bits = [b for byte in data[pos + 9:end] for b in _BITS[byte]]
                        del bits[self._count:]
                        waiter.set_result(Answer(fc, (), bits, 0))
                elif fc == self._fc | 0x80:
                    if length != 3:
                        self._garbled(f"exception answer of length {length}")
                        return
                    waiter.set_result(Answer(fc, (), (), data[pos + 8]))
                else:
                    log.debug("dropped an answer with function code %#x to a request with %#x", fc, self._fc)
            else:
                log.debug("dropped an answer (transaction %d, unit %d) matching no pending request", tid, unit)
            pos = end
        if pos < size:
            self._buffer = data[pos:]

    def _truncated(self) -> NoReturn:
        """A try timed out with part of a frame buffered: the device cut an answer short (or is too slow to
        finish one in `timeout`). Its stale header must never frame the next try's bytes, so close."""
        held = self._buffer
        length = _HEADER.unpack_from(held)[2] + 6 if len(held) >= 8 else 0
        whole = f" of a {length}-byte frame" if length else ""
        self.close()
        raise ModbusException(f"truncated answer from {self.host}:{self.port}: {len(held)} bytes{whole}, then "
                              f"nothing for {self.timeout:g} s; the connection is closed")

    def _garbled(self, why: str) -> None:
        """The byte stream cannot be trusted any more: fail the pending request and close."""
        self._fail(ModbusException(f"garbled answer from {self.host}:{self.port}: {why}"))
        self.close()
