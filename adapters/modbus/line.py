"""Shared Modbus lines: one connection per endpoint, used by every device (unit id) behind it.

A TCP gateway with several unit ids, an RS-485 line (`serial://`) or a serial server (`rtu+tcp://`) carries one
request at a time. Every adapter whose device names the same endpoint gets the same `Line` from the collector's
`Lines` (kept in its adapter context, adapters/base.py): one client (our lean `MbapClient` for `tcp://`, see
adapters/modbus/tcp.py; pymodbus behind `RtuClient` for `rtu+tcp://` and `serial://`, see rtu.py, imported only
when a line needs it, so a `tcp://`-only collector never loads pymodbus), one turn at a time held for a whole poll
cycle (`async with line.session(device)`: units are polled one after another), one request at a time inside it
(`async with line.exchange()`: settling after late answers, the pause between requests), and per-unit timeout
streaks that outlive a connection (to skip a dead unit, see `ModbusDevice.degrade_after`).

A timeout of one unit does not close a shared connection: both clients drop answers whose transaction id
(TCP) or unit id (RTU) does not match the request, so a late answer cannot be taken for a neighbour's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeAlias

from adapters.base import AdapterError
from adapters.modbus.config import ModbusDevice
from adapters.modbus.tcp import MbapClient
from collector.config.base import Endpoint

if TYPE_CHECKING:
    from adapters.modbus.rtu import RtuClient

__all__ = ["Line", "LineKey", "Lines", "line_key", "serial_settings"]

LineKey = tuple[str, str, int | str]
ModbusClient: TypeAlias = "MbapClient | RtuClient"

SERIAL_DEFAULTS = {"baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 1}


def line_key(endpoint: Endpoint) -> LineKey:
    """Devices with equal keys share a connection: same scheme and host:port, or the same serial port."""
    if endpoint.scheme == "serial":
        return ("serial", endpoint.path, 0)
    return (endpoint.scheme, endpoint.host, endpoint.port)


def serial_settings(endpoint: Endpoint) -> dict[str, Any]:
    """`serial:///dev/ttyUSB0?baudrate=9600&parity=N&stopbits=1&bytesize=8` -> pyserial settings."""
    params = endpoint.params
    out: dict[str, Any] = dict(SERIAL_DEFAULTS)
    try:
        if "baudrate" in params:
            out["baudrate"] = int(params["baudrate"])
        if "bytesize" in params:
            out["bytesize"] = int(params["bytesize"])
        if "stopbits" in params:
            out["stopbits"] = int(params["stopbits"])
    except ValueError as exc:
        raise AdapterError(f"bad serial parameter in {endpoint.path}: {exc}") from None
    if "parity" in params:
        out["parity"] = params["parity"].upper()[:1]
    return out


class Line:
    """One connection to one endpoint, shared by the devices (unit ids) behind it."""

    def __init__(self, key: LineKey, endpoint: Endpoint, owner: Lines | None = None) -> None:
        self.key = key
        self.endpoint = endpoint
        self._owner = owner if owner is not None else Lines()
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()  # held for one unit's whole poll cycle
        self._connect_lock = asyncio.Lock()
        self.client: ModbusClient | None = None
        self.users: set[int] = set()
        self.connects = 0
        self.last_answer = 0.0  # monotonic time the line last went quiet (for inter_request_delay)
        self.settle_until = 0.0  # monotonic time before which no request is sent (late answers, RTU)
        # RTU framing (serial or `rtu+tcp`): answers carry no transaction id to match them by
        self.unframed = endpoint.scheme != "tcp"

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    @property
    def shared(self) -> bool:
        return len(self.users) > 1

    def describe(self) -> str:
        ep = self.endpoint
        return ep.path if ep.scheme == "serial" else f"{ep.host}:{ep.port}"

    # -- connection

    def _build(self, device: ModbusDevice) -> ModbusClient:
        ep = self.endpoint
        if ep.scheme == "tcp":
            return MbapClient(ep.host, ep.port, timeout=device.timeout, retries=device.retries)
        from adapters.modbus.rtu import RtuClient  # pymodbus: RTU lines only

        return RtuClient(ep, timeout=device.timeout, retries=device.retries, name=f"line:{self.describe()}",
                         serial=serial_settings(ep) if ep.scheme == "serial" else None)

    async def open(self, device: ModbusDevice) -> None:
        """Connect unless already connected (the first device to arrive opens the line for all)."""
        async with self._connect_lock:
            if self.connected:
                return
            self._close_client()
            client = self._build(device)
            try:
                ok = await client.connect()
            except Exception as exc:  # pyserial and termios errors are not OSErrors
                client.close()
                raise AdapterError(f"cannot connect to {self.describe()}: {exc}") from None
            if not ok:
                client.close()
                if self.endpoint.scheme == "serial":
                    raise AdapterError(f"cannot open serial port {self.describe()}: missing, in use or not "
                                       "permitted (is the user in group dialout?)")
                raise AdapterError(f"cannot connect to {self.describe()}: refused, unreachable or no answer "
                                   f"within {device.timeout:g} s")
            self.client = client
            self.connects += 1
            if device.pause_after_connect:
                await asyncio.sleep(device.pause_after_connect)
            self.last_answer = time.monotonic()

    def _close_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def drop(self) -> None:
        """Close the connection (a broken connection, seen by one user, is broken for all)."""
        self._close_client()

    def configure(self, device: ModbusDevice) -> None:
        """Apply one device's timeout and retries to the shared client (call while holding `lock`); both
        transports read them at every request."""
        client = self.client
        if client is not None:
            client.timeout = device.timeout
            client.retries = device.retries

    @contextlib.asynccontextmanager
    async def session(self, device: ModbusDevice) -> AsyncIterator[ModbusClient]:
        """The line for one unit's turn (a poll cycle, an identification): held until the block ends, with the
        device's timeout and retries applied; AdapterError when the connection is gone."""
        async with self.lock:
            client = self.client
            if client is None or not self.connected:
                raise AdapterError("connection lost")
            self.configure(device)
            yield client

    @contextlib.asynccontextmanager
    async def exchange(self, delay: float = 0.0) -> AsyncIterator[None]:
        """One request and its answer (inside a `session`): waits out a settle time and `delay` seconds of
        quiet, and notes when the line went quiet again. (The poll's own reads do the same without a context
        manager: ModbusAdapter._request.)"""
        await self.wait_turn(delay)
        try:
            yield
        finally:
            self.last_answer = time.monotonic()

    async def wait_turn(self, delay: float = 0.0) -> None:
        """Before a request: wait out a settle time and `delay` seconds of quiet."""
        await self.quiet(delay)
        if self.settle_until:
            await self.settle()

    def settle_for(self, seconds: float) -> None:
        """Send nothing for `seconds`: a late answer then arrives while no request waits and is dropped."""
        self.settle_until = max(self.settle_until, time.monotonic() + seconds)

    async def settle(self) -> None:
        wait = self.settle_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def quiet(self, delay: float) -> None:
        """Wait until the line has been quiet `delay` seconds (slow devices need a pause between requests,
        also when the previous request was a neighbour's)."""
        if delay:
            wait = self.last_answer + delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    # -- per-unit timeout streaks

    def timeout_streak(self, unit: int) -> int:
        return self._owner.streaks.get((self.key, unit), 0)

    def count_timeout(self, unit: int) -> int:
        """One more poll cycle of `unit` ended without an answer; returns the streak."""
        streaks = self._owner.streaks
        n = streaks.get((self.key, unit), 0) + 1
        streaks[(self.key, unit)] = n
        return n

    def count_answer(self, unit: int) -> None:
        self._owner.streaks.pop((self.key, unit), None)

    # -- users

    def release(self, owner: object) -> None:
        """An adapter lets go; the last one closes the connection."""
        self.users.discard(id(owner))
        if not self.users:
            self._close_client()
            self._owner.forget(self)


class Lines:
    """The open lines of one collector by key, and the per-unit timeout streaks, which must outlive an adapter's
    connection and even the line (a single-device TCP line closes when its adapter gives up); bounded by the
    number of configured units. One per adapter context (`context.state("modbus.lines", Lines)`)."""

    def __init__(self) -> None:
        self.lines: dict[LineKey, Line] = {}
        self.streaks: dict[tuple[LineKey, int], int] = {}

    def acquire(self, device: ModbusDevice, owner: object) -> Line:
        """The line for a device's endpoint, shared with every other device on it in this event loop."""
        endpoint = device.parsed_endpoint
        key = line_key(endpoint)
        line = self.lines.get(key)
        loop = asyncio.get_running_loop()
        if line is None or line.loop is not loop or line.loop.is_closed():
            line = Line(key, endpoint, self)
            self.lines[key] = line
        line.users.add(id(owner))
        return line

    def forget(self, line: Line) -> None:
        if self.lines.get(line.key) is line:
            del self.lines[line.key]

    def open_lines(self) -> dict[LineKey, Line]:
        """The lines in use (status, tests)."""
        return dict(self.lines)
