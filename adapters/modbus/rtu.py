"""The RTU transport: pymodbus for `serial://` and `rtu+tcp://`, behind the interface of our `MbapClient`
(adapters/modbus/tcp.py), so the line and the adapter talk to one kind of client.

What pymodbus needs from us is kept here, the only place that touches its internals (pymodbus 3.16):
- `timeout` and `retries` may change between requests (each device on a shared line has its own): they live
  in `comm_params.timeout_connect` and the transaction manager's `retries`, read at every request;
- pymodbus would close the connection after retries+3 unanswered requests in a row: on a shared line that
  would cut off the live neighbours of one dead unit, so that limit is lifted (giving up is the adapter's
  decision);
- when the peer drops the connection during a request, the pending request fails at once (its trace_connect
  hook) instead of waiting out the timeout and its retries, as `MbapClient` does by itself;
- its exceptions become ours (adapters/modbus/errors.py, the message kept), so the adapter, shared with the
  lean TCP client, needs no pymodbus: only this module and the line that builds an `RtuClient` import it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from adapters.modbus.errors import ConnectionLost, ModbusError, NoAnswer
from collector.config.base import Endpoint

__all__ = ["RtuClient"]


class RtuClient:
    """One RTU connection (a serial port or a serial server over TCP)."""

    def __init__(self, endpoint: Endpoint, *, timeout: float, retries: int, name: str,
                 serial: dict[str, Any] | None = None) -> None:
        common: dict[str, Any] = {"name": name, "timeout": timeout, "retries": retries, "reconnect_delay": 0,
                                  "trace_connect": self._on_connection_change}
        client: AsyncModbusSerialClient | AsyncModbusTcpClient
        if endpoint.scheme == "serial":
            client = AsyncModbusSerialClient(endpoint.path, framer=FramerType.RTU, **(serial or {}), **common)
        else:  # rtu+tcp
            client = AsyncModbusTcpClient(endpoint.host, port=endpoint.port, framer=FramerType.RTU, **common)
        client.set_max_no_responses(1_000_000)
        self._client = client

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    @property
    def timeout(self) -> float:
        return float(self._client.comm_params.timeout_connect or 0.0)

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._client.comm_params.timeout_connect = seconds

    @property
    def retries(self) -> int:
        return int(self._client.ctx.retries)

    @retries.setter
    def retries(self, n: int) -> None:
        self._client.ctx.retries = n

    async def connect(self) -> bool:
        return bool(await self._client.connect())

    def close(self) -> None:
        self._client.close()

    def read_coils(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]:
        """FC 1, as `MbapClient.read_coils` (with the line's retries)."""
        return _ours(self._client.read_coils, address, count=count, device_id=device_id)

    def read_discrete_inputs(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]:
        """FC 2."""
        return _ours(self._client.read_discrete_inputs, address, count=count, device_id=device_id)

    def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]:
        """FC 3."""
        return _ours(self._client.read_holding_registers, address, count=count, device_id=device_id)

    def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]:
        """FC 4."""
        return _ours(self._client.read_input_registers, address, count=count, device_id=device_id)

    def write_coil(self, address: int, value: bool, *, device_id: int = 1) -> Awaitable[Any]:
        """FC 5, as `MbapClient.write_coil` (one try: the caller sets `retries` to 0 for a write)."""
        return _ours(self._client.write_coil, address, value, device_id=device_id)

    def write_register(self, address: int, value: int, *, device_id: int = 1) -> Awaitable[Any]:
        """FC 6."""
        return _ours(self._client.write_register, address, value, device_id=device_id)

    def write_registers(self, address: int, values: list[int], *, device_id: int = 1) -> Awaitable[Any]:
        """FC 16."""
        return _ours(self._client.write_registers, address, values, device_id=device_id)

    def read_device_identification(self, read_code: int = 1, object_id: int = 0, *,
                                   device_id: int = 1) -> Awaitable[Any]:
        """FC 43/14, as `MbapClient.read_device_identification`."""
        return _ours(self._client.read_device_information, read_code=read_code, object_id=object_id,
                     device_id=device_id)

    def _on_connection_change(self, connected: bool) -> None:
        if connected:
            return
        future = getattr(getattr(self._client, "ctx", None), "response_future", None)
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(ConnectionException("connection closed by the device"))


async def _ours(request: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """One pymodbus request; its exception (also one raised before the request is sent: not connected)
    raised as ours with the same message, the original chained."""
    try:
        return await request(*args, **kwargs)
    except ConnectionException as exc:
        raise ConnectionLost(str(exc)) from exc
    except ModbusIOException as exc:
        raise NoAnswer(str(exc)) from exc
    except ModbusException as exc:
        raise ModbusError(str(exc)) from exc
