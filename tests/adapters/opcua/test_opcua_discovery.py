"""`collector discover` against the machine-tool simulator: the printed block passes `collector check` and reads
the same values as the hand-written config."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.opcua.adapter import OpcUaAdapter
from collector.cli import main
from collector.config import OpcUaDevice, load_config
from simulators.opcua import OpcUaMachineSim
from tests.adapters.opcua.test_opcua_sim import NS, make_device
from tests.support.broker import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


async def discover(url: str, *args: str) -> str:
    """Run the real command in a subprocess while this loop keeps serving the sim."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "collector.cli", "discover", url, *args,
                                                cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_discover_prints_a_config_that_checks_and_reads_the_same(tmp_path: Path) -> None:
    device = make_device(free_port(), mode="poll")
    async with OpcUaMachineSim(device) as sim:
        sim.model.force_state("running")
        text = await discover(device.endpoint, "--device-id", "cnc9")
        assert "OPC UA for Machine Tools" in text and "http://opcfoundation.org/UA/MachineTool/" in text
        assert "# asset: {is_cnc: true}" in text  # a hint, commented: the register decides

        block = yaml.safe_load(text)
        assert isinstance(block, list) and block[0]["id"] == "cnc9"
        tags = {t["node"]: t for t in block[0]["tags"]}
        load = tags[f"nsu={NS};s=Spindle.Load"]
        assert load["type"] == "int16" and load["unit"] == "%"  # DataType and EngineeringUnits
        assert tags[f"nsu={NS};s=Monitoring.Spindle1.ActualSpeed"]["unit"] == "1/min"
        assert tags[f"nsu={NS};s=Program"]["type"] == "string"
        assert all(node.startswith(f"nsu={NS};") for node in tags)  # survives a reordered NamespaceArray

        path = tmp_path / "discovered.yaml"
        path.write_text(yaml.safe_dump({"site": {"enterprise_id": "t"}, "devices": block}), encoding="utf-8")
        assert main(["check", "-c", str(path)]) == 0
        found = load_config(path).devices[0]
        assert isinstance(found, OpcUaDevice) and found.mode == "subscribe"
        found.mode = "poll"

        mine, theirs = OpcUaAdapter(device), OpcUaAdapter(found)
        await mine.connect()
        await theirs.connect()
        try:
            got = {r.tag: r for r in await theirs.read()}
            expected = {r.tag: r for r in await mine.read()}
        finally:
            await mine.close()
            await theirs.close()
    assert all(r.quality == "good" for r in got.values()), {t: r.quality for t, r in got.items()}
    by_node = {t["node"]: t["name"] for t in block[0]["tags"]}
    same: dict[str, Any] = {"program": f"nsu={NS};s=Program", "alarm": f"nsu={NS};s=Alarm",
                            "manufacturer": f"nsu={NS};s=Identification.Manufacturer",
                            "override": f"nsu={NS};s=Monitoring.Spindle1.Override",
                            "channel_state": f"nsu={NS};s=Monitoring.Channel1.ChannelState"}
    for name, node in same.items():
        assert got[by_node[node]].value == expected[name].value, name
    assert got[by_node[f"nsu={NS};s=Spindle.Load"]].value == 500  # raw: the hand-written config scales it


async def test_discover_filter_narrows_the_list() -> None:
    device = make_device(free_port())
    async with OpcUaMachineSim(device):
        text = await discover(device.endpoint, "--filter", "spindle1")
    names = [t["name"] for t in yaml.safe_load(text)[0]["tags"]]
    assert names == ["ActualSpeed", "IsRotating", "Override"]  # the common prefix is dropped from names
    assert "matching 'spindle1'" in text
