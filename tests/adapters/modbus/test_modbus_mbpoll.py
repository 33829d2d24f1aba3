"""An independent Modbus client agrees with our simulator and with what the collector publishes.

`mbpoll` (Debian package `mbpoll`, a libmodbus-based master) reads the simulator's registers; the collector
polls the same simulator and publishes over MQTT to a private mosquitto; both must show the same values.
Skipped with a reason when mbpoll is not installed (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from collector.app import Collector
from collector.config import Settings, parse_config
from simulators.modbus import ModbusServerSim
from tests.conftest import Recorder
from tests.support.broker import MosquittoProcess, free_port

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("mbpoll") is None,
                                 reason="mbpoll is not installed (apt-get install mbpoll; .ci/run installs it)")]

UNIT = 7
# name, classic register, type and options, served value
TAGS: list[tuple[str, str, dict[str, Any], Any]] = [
    ("state", "40001", {"type": "uint16", "sim": {"kind": "state"}}, None),
    ("neg", "40002", {"type": "int16"}, -300),
    ("count", "40011", {"type": "int32"}, 123456789),
    ("power", "40021", {"type": "float32", "byte_order": "CDAB", "unit": "kW"}, 42.25),
    ("flow", "40031", {"type": "float32"}, -0.5),
    ("temp", "30001", {"type": "int16", "scale": 0.1, "unit": "°C"}, 61.5),
    ("run", "00001", {"type": "bool"}, True),
    ("door", "10002", {"type": "bool"}, False),
]
LINE = re.compile(r"^\[(\d+)\]:\s+(\S+)(?:\s+\((-?\d+)\))?\s*$")


async def mbpoll(port: int, *args: str) -> dict[int, float]:
    """Run mbpoll once; {reference: value} (the signed value where mbpoll prints one)."""
    proc = await asyncio.create_subprocess_exec(
        "mbpoll", "-m", "tcp", "-p", str(port), "-a", str(UNIT), "-1", "-o", "2", *args, "127.0.0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    values: dict[int, float] = {}
    for line in out.decode().splitlines():
        m = LINE.match(line.strip())
        if m:
            values[int(m.group(1))] = float(m.group(3) if m.group(3) is not None else m.group(2))
    return values


async def test_mbpoll_reads_what_the_collector_publishes(broker: MosquittoProcess, recorder: Recorder,
                                                          tmp_path: Path) -> None:
    port = free_port()
    tags = [{"name": n, "register": reg, **opts, **({"sim": {"kind": "constant", "value": v}} if v is not None
                                                   else {})} for n, reg, opts, v in TAGS]
    cfg = parse_config({
        "site": {"enterprise_id": "e", "workshop": "w"}, "mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}"},
        "state_dir": str(tmp_path / "state"),
        "devices": [{"id": "press-01", "protocol": "modbus", "endpoint": f"tcp://127.0.0.1:{port}",
                     "unit_id": UNIT, "interval": 0.2, "simulate": {"initial": "running", "dwell": [1000, 1000]},
                     "tags": tags}]})
    sim = ModbusServerSim(cfg.devices[0].endpoint, list(cfg.devices))  # type: ignore[arg-type]
    sim.models["press-01"].force_state("alarm")  # before start: the tables are filled in this state
    await sim.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    try:
        published: dict[str, Any] = {}

        def have_all() -> bool:
            for m in recorder.on("/devices/press-01/data"):
                published.update({n: t for n, t in m.json()["tags"].items() if t["quality"] == "good"})
            return len(published) == len(TAGS)

        await recorder.wait_for(have_all, 15, "every tag published with good quality")
        holding = await mbpoll(port, "-t4", "-r1", "-c2")
        int32 = await mbpoll(port, "-t4:int", "-B", "-r11", "-c1")     # -B: big-endian words (ABCD)
        cdab = await mbpoll(port, "-t4:float", "-r21", "-c1")          # default: little-endian words (CDAB)
        abcd = await mbpoll(port, "-t4:float", "-B", "-r31", "-c1")
        inputs = await mbpoll(port, "-t3", "-r1", "-c1")
        coils = await mbpoll(port, "-t0", "-r1", "-c1")
        discrete = await mbpoll(port, "-t1", "-r2", "-c1")
    finally:
        await collector.stop()
        await sim.stop()

    value = {n: t["value"] for n, t in published.items()}
    # mbpoll (1-based references, like our classic notation with address_base 1) sees the served values ...
    assert holding == {1: 2, 2: -300}  # state 2 = alarm
    assert int32 == {11: 123456789} and cdab == {21: 42.25} and abcd == {31: -0.5}
    assert inputs == {1: 615} and coils == {1: 1} and discrete == {2: 0}
    # ... and the collector published the same
    assert value == {"state": holding[1], "neg": holding[2], "count": int32[11], "power": cdab[21],
                     "flow": abcd[31], "temp": pytest.approx(inputs[1] * 0.1), "run": bool(coils[1]),
                     "door": bool(discrete[2])}
    assert published["power"]["unit"] == "kW" and published["temp"]["unit"] == "°C"
