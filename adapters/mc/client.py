"""A lean asyncio client for the MC protocol 3E binary frame: batch reads in word units, batch writes in word
and bit units, Read CPU model.

Why our own and not pymcprotocol: pymcprotocol (0.3.0, unmaintained since 2021) is a blocking socket client:
on the event loop it would stall every other device for each round trip, and in a worker thread it costs a
thread per PLC. It also takes an answer from a single `recv()` (a frame cut by TCP into two segments is read
as a short answer) and does not check that the answer's length fits the request. The protocol needs three
commands here (read, write, CPU model), which fit in this file. The tests use pymcprotocol as the independent
other side.

What it guarantees, and how the adapter reads it:
- one request outstanding per connection, each with one `call_later` timer;
- the 3E frame has no serial number, so an answer is known only by its place in the stream. Hence: an
  answer is taken only while a request is pending, only if its header echoes the request's route and its
  length is exactly what the request asks for (points x 2 + 2, or an error answer of at most 11 bytes);
- anything else closes the connection and fails the request with `McGarbled`: bytes while no request is
  pending (a late or duplicated answer), a bad subheader or route, a wrong length, bytes beyond the answer;
- no answer within `timeout`: the connection is closed and the request fails with `McTimeout`. There is no
  retry on the same connection: a late answer to the first try would be taken for the retry's, and the
  retry's answer for the next request's. The adapter reconnects (a new client) instead;
- a request whose awaiting task is cancelled closes the connection too, for the same reason;
- the peer closes: the pending request fails at once with `McConnectionError`, and so does every later one;
- an end code other than 0 gives an `McAnswer` with that `end_code` (and no words): a fact about the
  request's devices (the adapter marks their tags), not about the connection.
"""

from __future__ import annotations

import asyncio
import logging
import struct

from adapters.base import OneConnectionClient
from adapters.mc.frame import (
    ANSWER_SUBHEADER,
    CPU_MODEL_DATA,
    HEADER_SIZE,
    MAX_WORDS,
    Route,
    encode_cpu_model,
    encode_read,
    encode_write_bits,
    encode_write_words,
    timer_units,
)

__all__ = ["McAnswer", "McClient", "McConnectionError", "McError", "McGarbled", "McTimeout"]

log = logging.getLogger(__name__)

_WORDS = [struct.Struct(f"<{n}H") for n in range(MAX_WORDS + 1)]
_ERROR_DATA = 11  # end code 2 + error information 9


class McError(Exception):
    """No usable answer; the connection is unusable after every subclass but none."""


class McConnectionError(McError):
    """Not connected, or the connection was lost."""


class McTimeout(McError):
    """No (whole) answer within the timeout; the connection is closed."""


class McGarbled(McError):
    """An answer that does not fit the request; the connection is closed."""


class McAnswer:
    """An answer: `end_code` 0 and `data` (the words as bytes), or the PLC's end code and no data."""

    __slots__ = ("data", "end_code")

    def __init__(self, end_code: int, data: bytes) -> None:
        self.end_code = end_code
        self.data = data

    def words(self) -> tuple[int, ...]:
        return _WORDS[len(self.data) // 2].unpack(self.data)

    def __repr__(self) -> str:
        return f"McAnswer(end_code={self.end_code:#06x}, {len(self.data)} bytes)"


def _expire(waiter: asyncio.Future[McAnswer | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class McClient(OneConnectionClient):
    """One 3E connection (build a new client to reconnect); `timeout` also bounds connecting."""

    def __init__(self, host: str, port: int, *, route: Route | None = None, timeout: float = 2.0) -> None:
        super().__init__(host, port, timeout)
        self.route = route or Route()
        self._waiter: asyncio.Future[McAnswer | None] | None = None
        self._expect = 0  # data bytes of a good answer to the pending request
        self._echo = b""  # the route bytes the answer must echo
        self.closed_reason: str | None = None

    def __str__(self) -> str:
        return f"McClient({self.host}:{self.port})"

    # -- connection

    def close(self, reason: str = "connection closed") -> None:
        transport, self._transport = self._transport, None
        self._buffer = b""
        if transport is not None:
            self.closed_reason = reason
            transport.close()
        self._fail(McConnectionError(reason))

    def _lost(self, exc: Exception | None) -> Exception:
        return McConnectionError("connection closed by the PLC" if exc is None else f"connection lost: {exc}")

    def _garbled(self, why: str) -> None:
        log.debug("%s: garbled answer: %s", self, why)
        self._fail(McGarbled(why))
        self.close(f"garbled answer: {why}")

    # -- requests

    async def read_words(self, code: int, number: int, points: int) -> McAnswer:
        """Batch read `points` words (1..960) from device `code` at `number`."""
        frame = encode_read(self.route, code, number, points, timer_units(self.timeout))
        return await self._exchange(frame, points * 2)

    async def write_words(self, code: int, number: int, words: list[int]) -> McAnswer:
        """Batch write `words` (1..960) to device `code` from `number`; the answer's end code says if it took."""
        return await self._exchange(encode_write_words(self.route, code, number, words, timer_units(self.timeout)), 0)

    async def write_bits(self, code: int, number: int, bits: list[bool]) -> McAnswer:
        """Batch write `bits` to bit device `code` from point `number` (bit units: only those points change)."""
        return await self._exchange(encode_write_bits(self.route, code, number, bits, timer_units(self.timeout)), 0)

    async def read_cpu_model(self) -> tuple[int, str, int]:
        """(end code, model name, model code) by Read CPU model (0101); name "" and code 0 on an end code."""
        answer = await self._exchange(encode_cpu_model(self.route, timer_units(self.timeout)), CPU_MODEL_DATA)
        if answer.end_code:
            return answer.end_code, "", 0
        name = answer.data[:16].decode("ascii", "replace").strip(" \x00")
        return 0, name, int.from_bytes(answer.data[16:18], "little")

    async def _exchange(self, frame: bytes, expect: int) -> McAnswer:
        async with self._lock:
            transport = self._transport
            if transport is None:
                raise McConnectionError(f"not connected to {self.host}:{self.port}")
            loop = asyncio.get_running_loop()
            self._expect = expect
            self._echo = frame[2:7]
            waiter = self._waiter = loop.create_future()
            transport.write(frame)
            timer = loop.call_later(self.timeout, _expire, waiter)
            try:
                answer = await waiter
            except asyncio.CancelledError:
                self.close("request cancelled: its answer could be taken for the next one's")
                raise
            finally:
                timer.cancel()
                self._waiter = None
            if answer is None:
                cut = len(self._buffer)
                self.close("no answer in time: a late one could be taken for the next request's")
                raise McTimeout(f"no {'whole ' if cut else ''}answer within {self.timeout:g} s"
                                + (f" ({cut} bytes of it)" if cut else ""))
            return answer

    # -- answers

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._garbled(f"{len(data)} bytes while no request is pending (a late or repeated answer)")
            return
        buffer = self._buffer + data if self._buffer else data
        if len(buffer) < HEADER_SIZE + 2:
            if buffer[:2] != ANSWER_SUBHEADER[:len(buffer[:2])]:
                self._garbled(f"subheader {buffer[:2].hex()} is not d000")
                return
            self._buffer = buffer
            return
        if buffer[:2] != ANSWER_SUBHEADER:
            self._garbled(f"subheader {buffer[:2].hex()} is not d000")
            return
        if buffer[2:7] != self._echo:
            self._garbled(f"route {buffer[2:7].hex()} does not echo the request's {self._echo.hex()}")
            return
        length = int.from_bytes(buffer[7:9], "little")
        end_code = int.from_bytes(buffer[9:11], "little")
        good = 2 + self._expect
        if (length != good) if end_code == 0 else not 2 <= length <= _ERROR_DATA:
            self._garbled(f"length {length} with end code {end_code:#06x}; the request wants {good}")
            return
        size = HEADER_SIZE + length
        if len(buffer) < size:
            self._buffer = buffer
            return
        if len(buffer) > size:
            self._garbled(f"{len(buffer) - size} bytes beyond the answer")
            return
        self._buffer = b""
        waiter.set_result(McAnswer(end_code, buffer[11:] if end_code == 0 else b""))
