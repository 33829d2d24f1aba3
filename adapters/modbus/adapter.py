"""The Modbus adapter: one pymodbus client per device, reading a precomputed plan of coalesced requests.

A Modbus exception answer is a fact about some tags (their quality says which exception); no answer, a
garbled answer or a closed connection is a fact about the device, so `read()` raises `AdapterError` and the
engine backs off and reconnects. pymodbus's own background reconnect is switched off: the engine owns that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from adapters.base import Adapter, AdapterError, register
from adapters.modbus.codec import Converter, TagCodec, compile_tag
from adapters.modbus.planner import ReadRequest, plan_device
from collector.config import ModbusDevice
from collector.model import Quality, Reading

__all__ = ["ModbusAdapter"]

# One entry per tag of a request: (index in device.tags, name, unit, converter, offset in the answer)
_Entry = tuple[int, str, str | None, Converter, int]
_ReadFn = Callable[..., Awaitable[ModbusPDU]]


def exception_quality(code: int) -> str:
    """Modbus exception code -> tag quality: 02 means the tag's address does not exist on the device."""
    return Quality.BAD_ILLEGAL_ADDRESS if code == 2 else Quality.BAD_DEVICE_EXCEPTION


@register
class ModbusAdapter(Adapter):
    """Polls one Modbus TCP device (one unit id) and returns one `Reading` per configured tag, in tag order."""

    protocol: ClassVar[str] = "modbus"

    def __init__(self, device: ModbusDevice) -> None:
        super().__init__(device)
        self.device: ModbusDevice = device
        self.codecs: list[TagCodec] = [compile_tag(t, device.byte_order) for t in device.tags]
        self.plan: list[ReadRequest] = plan_device(device)
        index = {t.name: i for i, t in enumerate(device.tags)}
        self._steps: list[tuple[ReadRequest, list[_Entry]]] = []
        for req in self.plan:
            entries: list[_Entry] = []
            for tag, off in req.tags:
                i = index[tag.name]
                codec = self.codecs[i]
                entries.append((i, codec.name, codec.unit, codec.convert, off))
            self._steps.append((req, entries))
        self.client: AsyncModbusTcpClient | None = None
        self._read_fns: dict[str, _ReadFn] = {}
        self._in_flight = False
        self._counters: dict[str, Any] = {
            "connects": 0, "cycles": 0, "requests": 0, "exception_responses": 0, "failures": 0,
            "last_error": None, "last_cycle_s": None,
        }

    # -- connection

    async def connect(self) -> None:
        """Open the TCP connection; AdapterError with a readable reason when nothing answers."""
        await self.close()
        ep = self.device.parsed_endpoint
        if ep.scheme != "tcp":
            raise AdapterError(f"{ep.scheme}:// endpoints are not supported yet (only Modbus TCP, tcp://host:port): "
                               f"{self.device.endpoint}")
        client = AsyncModbusTcpClient(
            ep.host, port=ep.port, name=self.device.id, timeout=self.device.timeout,
            retries=self.device.retries, reconnect_delay=0, trace_connect=self._on_connection_change,
        )
        try:
            ok = await client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise AdapterError(f"cannot connect to {ep.host}:{ep.port}: {exc}") from None
        if not ok:
            client.close()
            raise AdapterError(f"cannot connect to {ep.host}:{ep.port}: refused, unreachable or no answer "
                               f"within {self.device.timeout:g} s")
        self.client = client
        self._read_fns = {"coil": client.read_coils, "discrete_input": client.read_discrete_inputs,
                          "input_register": client.read_input_registers,
                          "holding_register": client.read_holding_registers}
        self._counters["connects"] += 1
        if self.device.pause_after_connect:
            await asyncio.sleep(self.device.pause_after_connect)

    def _on_connection_change(self, connected: bool) -> None:
        """pymodbus's trace_connect hook: when the peer drops the connection during a request, fail that
        request now instead of waiting out the timeout and its retries."""
        if connected or not self._in_flight or self.client is None:
            return
        future = getattr(self.client.ctx, "response_future", None)
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(ConnectionException("connection closed by the device"))

    async def close(self) -> None:
        """Close the connection; never raises."""
        client, self.client = self.client, None
        self._read_fns = {}
        if client is not None:
            try:
                client.close()
            except Exception:  # close must not raise
                pass

    # -- reading

    async def read(self) -> list[Reading]:
        """Execute the plan; one Reading per tag (tag order), timestamped when its request was answered."""
        if self.client is None or not self.client.connected:
            raise AdapterError("not connected")
        started = time.perf_counter()
        device_id = self.device.id
        unit = self.device.unit_id
        delay = self.device.inter_request_delay
        out: list[Reading | None] = [None] * len(self.codecs)
        for n, (req, entries) in enumerate(self._steps):
            if delay and n:
                await asyncio.sleep(delay)
            resp = await self._request(req, unit)
            now = time.time()
            if resp.isError():
                self._counters["exception_responses"] += 1
                quality = exception_quality(resp.exception_code)
                for i, name, unit_name, _conv, _off in entries:
                    out[i] = Reading(device_id, name, None, unit_name, quality, now, now)
                continue
            words = resp.bits if req.is_bits else resp.registers
            if len(words) < req.count:
                for i, name, unit_name, _conv, _off in entries:
                    out[i] = Reading(device_id, name, None, unit_name, Quality.BAD_DECODE, now, now)
                continue
            for i, name, unit_name, conv, off in entries:
                try:
                    value, quality = conv(words, off)
                except Exception:  # a bad tag never fails the poll
                    value, quality = None, Quality.BAD_DECODE
                out[i] = Reading(device_id, name, value, unit_name, quality, now, now)
        self._counters["cycles"] += 1
        self._counters["last_cycle_s"] = time.perf_counter() - started
        return out  # type: ignore[return-value]  # every index is filled: the plan covers every tag

    async def _request(self, req: ReadRequest, unit: int) -> ModbusPDU:
        """One request with pymodbus's retries; every way of getting no usable answer becomes AdapterError."""
        fn = self._read_fns.get(req.table)
        if fn is None:
            raise AdapterError("not connected")
        self._in_flight = True
        self._counters["requests"] += 1
        try:
            return await fn(req.start, count=req.count, device_id=unit)
        except ConnectionException as exc:
            reason = f"connection lost: {exc}"
        except ModbusIOException:
            reason = (f"no answer from unit {unit} within {self.device.timeout:g} s "
                      f"({self.device.retries + 1} tries) reading {req.table} {req.start}+{req.count}")
        except (TimeoutError, ModbusException, OSError) as exc:
            reason = f"request failed: {exc}"
        finally:
            self._in_flight = False
        self._counters["failures"] += 1
        self._counters["last_error"] = reason
        await self.close()  # a late answer must not be taken for the next request's
        raise AdapterError(reason)

    def stats(self) -> dict[str, Any]:
        """Requests per cycle, request/exception/failure counters, last cycle duration."""
        return {"requests_per_cycle": len(self.plan), "tags": len(self.codecs), **self._counters}
