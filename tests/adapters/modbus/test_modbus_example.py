"""config/workshop.example.yaml: it documents every Modbus option, and its machines (the realistic sparse maps of
the four simulated machine models, over TCP, a gateway, RTU-over-TCP and an RS-485 line) all answer."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.base import AdapterContext
from adapters.modbus.adapter import ModbusAdapter
from collector.config import (
    ConfigError,
    ModbusDevice,
    ModbusTag,
    SimSpec,
    SimulateConfig,
    TemplateConfig,
    parse_config,
)
from collector.model import Quality
from simulators.workshop import Workshop
from tests.adapters.modbus.test_modbus_sim import free_port

CONTEXT = AdapterContext()

@pytest.fixture(autouse=True)
def _fresh_context() -> None:
    """What one test's adapters share, like one collector's (its plans, lines and timeout streaks)."""
    global CONTEXT
    CONTEXT = AdapterContext()


ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "config/workshop.example.yaml"


def test_every_modbus_option_is_in_the_example() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    keys = {f.alias or name for model in (ModbusDevice, ModbusTag, SimulateConfig, SimSpec, TemplateConfig)
            for name, f in model.model_fields.items()}
    missing = sorted(k for k in keys if not re.search(rf"[\s{{,]{k}:", text))
    assert missing == []
    for order in ("ABCD", "BADC", "CDAB", "DCBA", "GHEFCDAB"):
        assert order in text
    for scheme in ("tcp://", "rtu+tcp://", "serial://"):
        assert scheme in text


def test_bad_serial_parameters_name_the_field() -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["devices"][-1]["endpoint"] = "serial:///dev/ttyUSB0?baudrate=9600&parity=X"
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.lines == [
        "devices[6].endpoint: 'serial:///dev/ttyUSB0?baudrate=9600&parity=X': parity=X is not valid (one of N, E, O)"]


def on_free_endpoints(tmp_path: Path) -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["state_dir"] = str(tmp_path / "state")
    ports: dict[str, str] = {}
    for dev in data["devices"]:
        ep = dev["endpoint"]
        if ep.startswith("serial://"):
            ports.setdefault(ep, ep.replace("/tmp/shopfloor-example", str(tmp_path)))
        else:
            ports.setdefault(ep, f"{ep.split('://')[0]}://127.0.0.1:{free_port()}")
        dev["endpoint"] = ports[ep]
    return data


async def test_the_example_workshop_answers_with_good_values(tmp_path: Path) -> None:
    if shutil.which("socat") is None:
        pytest.fail("socat is not installed: `apt-get install socat` (.ci/run does it); the example has an "
                    "RS-485 line that the simulator serves on a pty pair")
    cfg = parse_config(on_free_endpoints(tmp_path))
    devices = [d for d in cfg.devices if isinstance(d, ModbusDevice)]
    workshop = Workshop(cfg)
    await workshop.start()
    adapters = {d.id: ModbusAdapter(d, CONTEXT) for d in devices}
    try:
        for a in adapters.values():
            await a.connect()
        results = await asyncio.gather(*(a.read() for a in adapters.values()))
        # a second cycle: meter-02 reads its split plan
        results = await asyncio.gather(*(a.read() for a in adapters.values()))
        stats = {d: a.stats() for d, a in adapters.items()}
    finally:
        for a in adapters.values():
            await a.close()
        await workshop.stop()
    for dev, readings in zip(adapters, results, strict=True):
        bad = [(r.tag, r.quality) for r in readings if r.quality != Quality.GOOD]
        assert bad == [], dev
    values = {dev: {r.tag: r.value for r in rs} for dev, rs in zip(adapters, results, strict=True)}
    assert values["imm-01"]["mould_id"] == "M-2231-A" and values["imm-01"]["status_word"] == [4660, 22136]
    assert values["knit-01"]["target_revolutions"] == 120000
    assert 1285000 <= values["meter-02"]["energy_total"] < 1286000
    # requests per cycle for the sparse maps: registers in a few coalesced reads, not one per tag. The knitting
    # machines (Modbus TCP) read 40001..40101 in one request: on TCP the hole costs less than two more requests
    per_cycle = {d: s["requests_per_cycle"] for d, s in stats.items()}
    assert per_cycle == {"imm-01": 7, "knit-01": 3, "knit-02": 3, "knit-03": 3, "comp-01": 2, "meter-01": 2,
                         "meter-02": 3}
    assert stats["meter-02"]["splits"] == 1
    assert stats["knit-01"]["line_shared_by"] == 3 and stats["meter-01"]["line_shared_by"] == 2
