"""The OPC UA adapter against the OPC UA machine-tool simulator, over real TCP on 127.0.0.1.

Each test builds its config with `parse_config`, starts `OpcUaMachineSim` on a free port and reads with
`OpcUaAdapter`. The sim's clock runs an hour behind, so a source timestamp that equals the sim's clock (and
not the receive time) proves it came from the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from adapters.base import AdapterError, create_adapter
from adapters.opcua.adapter import OpcUaAdapter, make_converter, to_plain
from adapters.opcua.nodeids import Unresolved, parse_node, resolve_node_id
from collector.broker import free_port as broker_free_port
from collector.config import CollectorConfig, OpcUaDevice, OpcUaTag, parse_config
from collector.model import Quality, Reading
from simulators.opcua import MACHINE_TOOL_NS, OpcUaMachineSim

pytestmark = pytest.mark.integration

NS = "urn:shopfloor-collector:test"
SKEW = 3600.0  # the sim's clock is this far behind the collector's


def free_port() -> int:
    return broker_free_port()


def skewed_clock() -> float:
    return time.time() - SKEW


TAGS: list[dict[str, Any]] = [
    {"name": "state", "node": f"nsu={NS};s=Machine.State", "type": "int32", "sim": {"kind": "state"}},
    {"name": "speed", "node": "ns=2;s=Spindle.Speed", "unit": "rpm",
     "sim": {"kind": "walk", "min": 1000, "max": 3000}},
    {"name": "load", "node": f"nsu={NS};s=Spindle.Load", "type": "int16", "unit": "%", "scale": 0.1,
     "offset": 1.0, "sim": {"kind": "constant", "value": 500}},
    {"name": "program", "node": f"nsu={NS};s=Program", "type": "string",
     "sim": {"kind": "constant", "value": "O4711"}},
    {"name": "parts", "node": f"nsu={NS};s=Parts", "type": "uint32", "sim": {"kind": "counter", "rate": 50}},
    {"name": "alarm", "node": f"nsu={NS};s=Alarm", "type": "bool", "sim": {"kind": "alarm"}},
    {"name": "temp", "node": f"nsu={NS};s=Temp", "unit": "degC", "range": [0, 100],
     "sim": {"kind": "constant", "value": 250.0}},
    # standard Machine Tools nodes: by nsu= node id and by browse path
    {"name": "manufacturer", "node": f"nsu={NS};s=Identification.Manufacturer"},
    {"name": "override", "node": f"nsu={NS};s=Monitoring.Spindle1.Override", "unit": "%"},
    {"name": "rotating", "node": "/Objects/4:Machines/2:cnc1/5:Monitoring/2:Spindle1/5:IsRotating"},
    {"name": "channel_state", "node": f"nsu={NS};s=Monitoring.Channel1.ChannelState"},
    {"name": "server_time", "node": "i=2258"},
]


def make_device(port: int, tags: list[dict[str, Any]] | None = None, **extra: Any) -> OpcUaDevice:
    cfg: CollectorConfig = parse_config({
        "site": {"enterprise_id": "test"},
        "devices": [{
            "id": "cnc1", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{port}", "namespace_uri": NS,
            "timeout": 2.0, "simulate": {"initial": "running", "seed": 7, "update_interval": 0.05,
                                         "dwell": [3600, 3600]},
            "tags": tags if tags is not None else TAGS, **extra,
        }],
    })
    device = cfg.devices[0]
    assert isinstance(device, OpcUaDevice)
    return device


@pytest.fixture
async def started() -> AsyncIterator[Callable[..., Any]]:
    """Start sims and adapters for a test and always clean them up."""
    sims: list[OpcUaMachineSim] = []
    adapters: list[OpcUaAdapter] = []

    async def start(device: OpcUaDevice, **kw: Any) -> tuple[OpcUaMachineSim, OpcUaAdapter]:
        sim = OpcUaMachineSim(device, clock=skewed_clock, **kw)
        sims.append(sim)
        await sim.start()
        adapter = create_adapter(device)
        assert isinstance(adapter, OpcUaAdapter)
        adapters.append(adapter)
        return sim, adapter

    yield start
    for adapter in adapters:
        await adapter.close()
    for sim in sims:
        await sim.stop()


def by_tag(readings: list[Reading]) -> dict[str, Reading]:
    return {r.tag: r for r in readings}


async def test_values_types_units_quality_and_source_timestamps(started: Callable[..., Any]) -> None:
    device = make_device(free_port())
    sim, adapter = await started(device)
    await adapter.connect()
    before = time.time()
    readings = await adapter.read()
    after = time.time()

    assert [r.tag for r in readings] == [t["name"] for t in TAGS]
    r = by_tag(readings)
    assert all(x.device == "cnc1" for x in readings)
    assert r["state"].value == 1 and type(r["state"].value) is int  # running
    assert isinstance(r["speed"].value, float) and 1000 <= r["speed"].value <= 3000
    assert r["speed"].unit == "rpm"
    assert r["load"].value == pytest.approx(51.0) and r["load"].unit == "%"  # 500 * 0.1 + 1
    assert r["program"].value == "O4711"
    assert type(r["parts"].value) is int and r["parts"].value >= 0
    assert r["alarm"].value is False
    assert r["manufacturer"].value == "shopfloor-collector simulator"  # LocalizedText -> its text
    assert r["override"].value == 100.0
    assert r["rotating"].value is True
    assert r["channel_state"].value == 0  # ChannelState.Active while running
    assert r["temp"].value == 250.0 and r["temp"].quality == Quality.BAD_OUT_OF_RANGE
    for name in ("state", "speed", "load", "program", "parts", "alarm", "manufacturer", "override",
                 "rotating", "channel_state", "server_time"):
        assert r[name].quality == Quality.GOOD, name
        # the server stamped it with its own (skewed) clock, not our receive time
        assert before - SKEW - 30 <= r[name].source_ts <= after - SKEW + 1, name
        assert before <= r[name].receive_ts <= after
    assert r["server_time"].value == pytest.approx(r["server_time"].source_ts, abs=2)
    stats = adapter.stats()
    assert stats["reads"] == 1 and stats["values"] == len(TAGS) and stats["chunks"] == 1


async def test_values_follow_the_machine_model(started: Callable[..., Any]) -> None:
    sim, adapter = await started(make_device(free_port()))
    await adapter.connect()
    first = by_tag(await adapter.read())
    await asyncio.sleep(0.3)  # several ticks of 50 ms
    second = by_tag(await adapter.read())
    assert second["parts"].value > first["parts"].value  # 50 parts/s while running
    assert second["parts"].source_ts > first["parts"].source_ts

    sim.model.force_state("alarm")
    await sim.update_now()
    r = by_tag(await adapter.read())
    assert r["state"].value == 2
    assert r["alarm"].value is True
    assert r["rotating"].value is False
    assert r["channel_state"].value == 1  # Interrupted
    assert r["override"].value == 100.0


async def test_missing_nodes_are_bad_and_the_rest_still_reads(started: Callable[..., Any]) -> None:
    port = free_port()
    sim_device = make_device(port)
    extra = [
        {"name": "ghost", "node": f"nsu={NS};s=No.Such.Node"},
        {"name": "ghost_ns", "node": "nsu=urn:not-on-this-server;s=X"},
        {"name": "ghost_path", "node": "/Objects/4:Machines/2:nope"},
    ]
    sim = OpcUaMachineSim(sim_device, clock=skewed_clock)
    await sim.start()
    try:
        adapter = OpcUaAdapter(make_device(port, TAGS[:3] + extra))
        await adapter.connect()
        try:
            r = by_tag(await adapter.read())
        finally:
            await adapter.close()
    finally:
        await sim.stop()
    assert r["ghost"].quality == "bad_NodeIdUnknown" and r["ghost"].value is None
    assert r["ghost_ns"].quality == "bad_NodeIdUnknown"
    assert r["ghost_path"].quality == "bad_NoMatch"
    assert r["state"].quality == Quality.GOOD and r["state"].value == 1
    assert r["speed"].quality == Quality.GOOD and 1000 <= r["speed"].value <= 3000
    assert r["load"].value == pytest.approx(51.0)


async def test_stop_makes_read_raise_and_restart_recovers(started: Callable[..., Any]) -> None:
    sim, adapter = await started(make_device(free_port()))
    await adapter.connect()
    assert by_tag(await adapter.read())["program"].value == "O4711"
    await sim.stop()
    t0 = time.perf_counter()
    with pytest.raises(AdapterError) as info:
        await adapter.read()
    assert time.perf_counter() - t0 < 2.5  # fails within the device timeout, not hanging
    assert "read from opc.tcp://127.0.0.1" in info.value.reason
    await adapter.close()
    await adapter.close()  # closing twice (and a dead session) never raises

    await sim.start()  # same instance, same port
    await adapter.connect()
    assert by_tag(await adapter.read())["program"].value == "O4711"


async def test_connect_to_nothing_raises_adapter_error() -> None:
    adapter = OpcUaAdapter(make_device(free_port()))
    with pytest.raises(AdapterError) as info:
        await adapter.connect()
    assert "connection refused" in info.value.reason
    with pytest.raises(AdapterError, match="not connected"):
        await adapter.read()
    await adapter.close()


async def test_nsu_survives_reordered_namespaces_and_browse_path_resolves(started: Callable[..., Any]) -> None:
    tags = [TAGS[0], TAGS[3], TAGS[9]]  # nsu= state, nsu= program, browse path to IsRotating
    tags[2] = {**tags[2], "node": "/Objects/6:Machines/4:cnc1/7:Monitoring/4:Spindle1/7:IsRotating"}
    sim, adapter = await started(make_device(free_port(), tags), extra_namespaces=["urn:a", "urn:b"])
    await adapter.connect()
    assert sim.device_ns == 4 and sim.namespaces[4] == NS and sim.namespaces[7] == MACHINE_TOOL_NS
    state = adapter.resolved["state"]
    assert not isinstance(state, Unresolved)
    assert (state.NamespaceIndex, state.Identifier) == (4, "Machine.State")
    rot = adapter.resolved["rotating"]
    assert not isinstance(rot, Unresolved) and rot.Identifier == "Monitoring.Spindle1.IsRotating"
    r = by_tag(await adapter.read())
    assert (r["state"].value, r["program"].value, r["rotating"].value) == (1, "O4711", True)
    assert all(x.quality == Quality.GOOD for x in r.values())


async def test_reads_are_chunked_by_max_nodes_per_read(started: Callable[..., Any]) -> None:
    sim, adapter = await started(make_device(free_port(), TAGS[:5], max_nodes_per_read=2))
    await adapter.connect()
    readings = await adapter.read()
    assert adapter.stats()["chunks"] == 3 and adapter.stats()["requests"] == 3
    assert [r.tag for r in readings] == [t["name"] for t in TAGS[:5]]
    assert all(r.quality == Quality.GOOD for r in readings)
    assert by_tag(readings)["program"].value == "O4711"


async def test_two_machines_start_and_serve_independently() -> None:
    """Start-up speed is measured by bench/opcua_poll.py (docs/BENCHMARKS.md), not asserted here."""
    sims = [OpcUaMachineSim(make_device(free_port())) for _ in range(2)]
    try:
        for sim in sims:
            await sim.start()
        sims[1].model.force_state("alarm")
        await sims[1].update_now()
        states = []
        for sim in sims:
            adapter = OpcUaAdapter(sim.device)
            await adapter.connect()
            try:
                states.append(by_tag(await adapter.read())["state"].value)
            finally:
                await adapter.close()
        assert states == [1, 2]  # running, alarm: each server has its own copy of the address space
        assert all(sim.startup_s > 0 for sim in sims)
    finally:
        for sim in sims:
            await sim.stop()


def test_node_id_forms_parse_and_resolve() -> None:
    nsu = parse_node("nsu=urn:x;s=A;B")
    assert nsu.namespace_uri == "urn:x" and nsu.node_id is not None and nsu.node_id.Identifier == "A;B"
    resolved = resolve_node_id(nsu, ["http://opcfoundation.org/UA/", "urn:app", "urn:x"])
    assert not isinstance(resolved, Unresolved) and resolved.NamespaceIndex == 2
    assert isinstance(resolve_node_id(nsu, ["http://opcfoundation.org/UA/"]), Unresolved)
    numeric = parse_node("i=2258")
    assert numeric.node_id is not None and numeric.node_id.Identifier == 2258
    assert parse_node("ns=3;s=X").node_id == resolve_node_id(parse_node("ns=3;s=X"), ["a", "b", "c", "d"])
    path = parse_node("/Objects/2:Machine/Speed")
    assert path.path is not None and [(q.NamespaceIndex, q.Name) for q in path.path] == \
        [(0, "Objects"), (2, "Machine"), (0, "Speed")]
    with pytest.raises(ValueError):
        parse_node("nonsense")


def test_value_conversion() -> None:
    tag = OpcUaTag(name="t", node="i=1", type="int32", scale=2.0, offset=1.0)
    assert make_converter(tag)(10) == 21.0
    assert make_converter(OpcUaTag(name="b", node="i=1", scale=2.0))(True) is True  # bools never scale
    assert make_converter(OpcUaTag(name="f", node="i=1", type="float"))(3) == 3.0
    with pytest.raises((TypeError, ValueError)):
        make_converter(OpcUaTag(name="d", node="i=1", type="double"))("not a number")
    assert to_plain([1, "a"]) == [1, "a"]
    assert to_plain(b"\x01\xff") == "01ff"
