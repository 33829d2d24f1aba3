"""A collector whose Modbus devices are all `tcp://` never imports pymodbus (the lean client and our own
exceptions, adapters/modbus/errors.py); an RTU line does (adapters/modbus/rtu.py).

The adapter runs in a fresh interpreter (this one has pymodbus loaded: the simulator is a pymodbus server)
and polls and writes the simulator served here, over real TCP.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from simulators.modbus import ModbusServerSim
from tests.adapters.modbus.test_modbus_sim import build_device, const, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import asyncio, json, sys
from adapters.base import AdapterError, create_adapter
from collector.config import parse_config
from collector.preflight import adapter_problems

async def main(endpoint):
    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [{
        "id": "m1", "protocol": "modbus", "endpoint": endpoint, "timeout": 0.5, "retries": 0,
        "tags": [{"name": "speed", "register": 40001, "type": "uint16"}]}]})
    out = {"problems": adapter_problems(cfg)}  # what `collector check` imports
    out["pymodbus_after_check"] = "pymodbus" in sys.modules
    adapter = create_adapter(cfg.devices[0])
    try:
        await adapter.connect()
        out["read"] = [r.value for r in await adapter.read()]
        outcome = await adapter.write("speed", 7)
        out["old"], out["readback"] = outcome.old, outcome.readback
        out["after"] = [r.value for r in await adapter.read()]
    except AdapterError as exc:
        out["error"] = str(exc)
    finally:
        await adapter.close()
    out["pymodbus"] = sorted(m for m in sys.modules if m.split(".")[0] == "pymodbus")
    print(json.dumps(out))

asyncio.run(main(sys.argv[1]))
"""


async def _child(endpoint: str) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, endpoint, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out)
    return result


async def test_a_tcp_only_collector_polls_and_writes_without_pymodbus() -> None:
    port = free_port()
    device = build_device(port, [{"name": "speed", "register": 40001, "type": "uint16", "sim": const(1234)}])
    async with ModbusServerSim(device.endpoint, [device]):
        got = await _child(f"tcp://127.0.0.1:{port}")
    assert got == {"problems": [], "pymodbus_after_check": False, "read": [1234], "old": 1234,
                   "readback": 7, "after": [7], "pymodbus": []}


async def test_an_rtu_line_does_import_pymodbus() -> None:
    """The check above can fail: the same child on an RTU line loads pymodbus, already in `collector check`
    (so check names it if it is missing); the connect is refused."""
    got = await _child(f"rtu+tcp://127.0.0.1:{free_port()}")
    assert got["problems"] == [] and got["pymodbus_after_check"] is True
    assert "cannot connect" in str(got["error"])
    assert "pymodbus" in got["pymodbus"]  # type: ignore[operator]
