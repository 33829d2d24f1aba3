"""The RTU transport (adapters/modbus/rtu.py, pymodbus behind MbapClient's interface) over `rtu+tcp://`."""

from __future__ import annotations

import asyncio
import time

import pytest

from adapters.base import AdapterContext, AdapterError
from adapters.modbus.adapter import ModbusAdapter
from adapters.modbus.errors import ConnectionLost
from adapters.modbus.rtu import RtuClient
from collector.config import parse_config
from tests.support.broker import free_port


def _device(port: int, timeout: float, retries: int = 2) -> object:
    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [
        {"id": "r", "protocol": "modbus", "endpoint": f"rtu+tcp://127.0.0.1:{port}", "timeout": timeout,
         "retries": retries, "tags": [{"name": "t", "register": 40001}]}]})
    return cfg.devices[0]


async def test_a_connection_dropped_during_a_request_fails_it_at_once() -> None:
    """The device server closes the connection after a request: the read fails now ("connection lost"), not
    after timeout x (retries + 1) = 15 s."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(8)  # the request arrived
        await asyncio.sleep(0.2)
        writer.close()

    port = free_port()
    server = await asyncio.start_server(hang_up, "127.0.0.1", port)
    adapter = ModbusAdapter(_device(port, timeout=5.0), AdapterContext())  # type: ignore[arg-type]
    try:
        await adapter.connect()
        assert adapter.line is not None and isinstance(adapter.line.client, RtuClient)
        started = time.monotonic()
        with pytest.raises(AdapterError, match="connection lost"):
            await adapter.read()
        assert time.monotonic() - started < 3.0
    finally:
        await adapter.close()
        server.close()
        await server.wait_closed()


async def test_timeout_and_retries_follow_the_device_on_a_shared_line() -> None:
    """Each device on a line has its own: the line sets them before its turn, the transport keeps them."""
    from collector.config.base import Endpoint

    client = RtuClient(Endpoint("rtu+tcp", "127.0.0.1", 1), timeout=1.0, retries=1, name="t")
    client.timeout, client.retries = 0.25, 4
    assert (client.timeout, client.retries) == (0.25, 4)
    client.close()


async def test_pymodbus_errors_come_out_as_ours() -> None:
    """The adapter catches only adapters/modbus/errors.py: a request on a line not yet connected (pymodbus
    raises before sending) is `ConnectionLost`, with pymodbus's message and its exception chained."""
    from pymodbus.exceptions import ConnectionException

    from collector.config.base import Endpoint

    client = RtuClient(Endpoint("rtu+tcp", "127.0.0.1", 1), timeout=0.2, retries=0, name="t")
    try:
        for request in (client.read_holding_registers(0, count=1), client.write_register(0, 1)):
            with pytest.raises(ConnectionLost, match="Not connected") as info:
                await request
            assert isinstance(info.value.__cause__, ConnectionException)
            assert str(info.value) == str(info.value.__cause__)
    finally:
        client.close()
