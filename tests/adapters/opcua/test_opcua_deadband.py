"""Percent and absolute deadbands over real TCP: the OPC UA simulator computes them as a server does
(simulators/opcua_deadband.py), asyncua's own Client checks the simulator, and the collector's adapter is
checked against it, both when the server applies the band and when it refuses it.

The values are driven by hand (the sim's tick loop is parked with a one-hour update interval), one write per
step, so what must be reported is known exactly. Pressure has EURange 0..1000 (its tag `range`), so 5 % is a
band of 50: a change is reported when it exceeds 50 from the last value *reported* (Part 8 6.2: "> band"; a
change of exactly 50 is not), not from the previous sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asyncua import Client, ua

from adapters.base import create_adapter
from adapters.opcua.adapter import OpcUaAdapter
from collector.config import ConfigError, OpcUaDevice, parse_config
from collector.model import Reading
from simulators.opcua import OpcUaMachineSim
from simulators.opcua_deadband import exceeds
from tests.support.broker import free_port

pytestmark = pytest.mark.integration

NS = "urn:shopfloor-collector:test-deadband"
INTERVAL = 0.1
START = 500.0
# (value written, reported?) with a band of 50 against the last reported value
STEPS: list[tuple[float, bool]] = [
    (530.0, False), (549.0, False), (550.0, False),  # 30, 49, exactly 50 from 500: inside the band
    (551.0, True),  # 51 from 500 (a walk in sub-band steps is reported once it has gone far enough)
    (580.0, False), (600.0, False),  # 29, 49 from 551
    (602.0, True),  # 51
    (540.0, True),  # 62 down
    (491.0, False),  # 49 down
    (489.5, True),  # 50.5 down
]
REPORTED = [START] + [v for v, r in STEPS if r]
ALL = [START] + [v for v, _ in STEPS]


def make_device(port: int, *, pressure_range: bool = True) -> OpcUaDevice:
    pressure: dict[str, Any] = {"name": "pressure", "node": f"nsu={NS};s=Pressure", "type": "double", "unit": "kPa",
                                "deadband": 5, "sim": {"kind": "constant", "value": START}}
    if pressure_range:
        pressure["range"] = [0, 1000]
    cfg = parse_config({
        "site": {"enterprise_id": "t"},
        "devices": [{
            "id": "cnc", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{port}", "namespace_uri": NS,
            "interval": INTERVAL, "timeout": 2.0, "deadband_type": "percent",
            "simulate": {"initial": "running", "update_interval": 3600, "dwell": [3600, 3600]},
            "tags": [
                pressure,
                # no range: the node has no EURange, the server refuses a percent band on it
                {"name": "flow", "node": f"nsu={NS};s=Flow", "type": "double", "deadband": 5,
                 "sim": {"kind": "constant", "value": START}},
                {"name": "load", "node": f"nsu={NS};s=Load", "type": "int32", "scale": 0.1, "range": [0, 100],
                 "sim": {"kind": "constant", "value": 0}},
                {"name": "program", "node": f"nsu={NS};s=Program", "type": "string",
                 "sim": {"kind": "constant", "value": "O4711"}},
            ],
        }],
    })
    device = cfg.devices[0]
    assert isinstance(device, OpcUaDevice)
    return device


@pytest.fixture
async def sim() -> AsyncIterator[OpcUaMachineSim]:
    server = OpcUaMachineSim(make_device(free_port()))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def drive(sim: OpcUaMachineSim, *tags: str) -> None:
    """Write every step's value to the tags' nodes, one write each (a notification per write at most)."""
    for value, _ in STEPS:
        for tag in tags:
            sim.model.values[tag] = value
        await sim.update_now()
        await asyncio.sleep(0.02)


def values_of(readings: list[Reading], tag: str) -> list[Any]:
    """The values the server reported for `tag`, in order: heartbeats (same source timestamp) left out."""
    out: list[Any] = []
    last_ts: float | None = None
    for r in readings:
        if r.tag == tag and r.source_ts != last_ts:
            out.append(r.value)
            last_ts = r.source_ts
    return out


async def wait_for(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------------------- reference client


class Handler:
    def __init__(self) -> None:
        self.values: list[Any] = []

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.values.append(val)


async def test_the_sim_reports_percent_deadbands_of_eurange_to_asyncuas_own_client(sim: OpcUaMachineSim) -> None:
    """The reference: asyncua's Client and Subscription, nothing of the collector. 5 % of EURange 0..1000 and an
    absolute band of 50 on the same node report the same values; without a filter every write is reported."""
    async with Client(sim.endpoint, timeout=4) as client:
        ns = await client.get_namespace_index(NS)
        pressure = client.get_node(ua.NodeId("Pressure", ns))
        eu = await (await pressure.get_child("0:EURange")).read_value()
        assert (eu.Low, eu.High) == (0.0, 1000.0)
        assert (await pressure.read_type_definition()) == ua.NodeId(ua.ObjectIds.AnalogItemType)
        # EURange is in the node's raw units: range [0, 100] of a tag with scale 0.1 is 0..1000 on the server
        load_eu = await (await client.get_node(ua.NodeId("Load", ns)).get_child("0:EURange")).read_value()
        assert (load_eu.Low, load_eu.High) == (0.0, 1000.0)

        handlers = {name: Handler() for name in ("percent", "absolute", "none")}
        subs = [await client.create_subscription(50, h) for h in handlers.values()]
        await subs[0].deadband_monitor(pressure, 5, deadbandtype=ua.DeadbandType.Percent, queuesize=100)
        await subs[1].deadband_monitor(pressure, 50, deadbandtype=ua.DeadbandType.Absolute, queuesize=100)
        await subs[2].subscribe_data_change(pressure, queuesize=100)
        await wait_for(lambda: all(h.values for h in handlers.values()))
        await drive(sim, "pressure")
        await wait_for(lambda: len(handlers["none"].values) == len(ALL))
        await asyncio.sleep(0.3)  # anything late would show now
    assert handlers["percent"].values == REPORTED
    assert handlers["absolute"].values == REPORTED
    assert handlers["none"].values == ALL


async def test_the_sim_refuses_filters_it_cannot_apply(sim: OpcUaMachineSim) -> None:
    """As a real server (and the OPC UA conformance tests) would: a percent band without EURange, a band on a
    String or on another attribute than Value is Bad_FilterNotAllowed; a percent band over 100 or a negative
    band is Bad_DeadbandFilterInvalid. The item on Pressure with a valid band is created beside them."""
    async with Client(sim.endpoint, timeout=4) as client:
        ns = await client.get_namespace_index(NS)
        node = {name: client.get_node(ua.NodeId(name, ns)) for name in ("Pressure", "Flow", "Program")}
        sub = await client.create_subscription(50, Handler())
        cases: list[tuple[str, float, int, ua.AttributeIds, int]] = [
            ("Flow", 5, ua.DeadbandType.Percent, ua.AttributeIds.Value, ua.StatusCodes.BadFilterNotAllowed),
            ("Program", 1, ua.DeadbandType.Absolute, ua.AttributeIds.Value, ua.StatusCodes.BadFilterNotAllowed),
            ("Pressure", 5, ua.DeadbandType.Percent, ua.AttributeIds.DisplayName,
             ua.StatusCodes.BadFilterNotAllowed),
            ("Pressure", 150, ua.DeadbandType.Percent, ua.AttributeIds.Value, ua.StatusCodes.BadDeadbandFilterInvalid),
            ("Pressure", -1, ua.DeadbandType.Absolute, ua.AttributeIds.Value,
             ua.StatusCodes.BadDeadbandFilterInvalid),
        ]
        for name, band, kind, attr, expected in cases:
            result = await sub.deadband_monitor([node[name]], band, deadbandtype=kind, attr=attr)
            assert isinstance(result[0], ua.StatusCode), (name, band, kind)
            assert result[0].value == expected, (name, band, kind, result[0].name)
        # the absolute band on Flow (no EURange needed) and the percent one on Pressure are taken
        ok = await sub.deadband_monitor([node["Flow"], node["Pressure"]], 5, deadbandtype=ua.DeadbandType.Absolute)
        assert all(isinstance(h, int) for h in ok), ok
        assert isinstance(await sub.deadband_monitor(node["Pressure"], 5, deadbandtype=ua.DeadbandType.Percent), int)


# ---------------------------------------------------------------------------------------- the collector


async def subscribe(adapter: OpcUaAdapter) -> tuple[list[Reading], asyncio.Task[None]]:
    await adapter.connect()
    readings: list[Reading] = []
    task = asyncio.create_task(adapter.subscribe(readings.extend))
    await wait_for(lambda: {"pressure", "flow"} <= {r.tag for r in readings})
    return readings, task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "refused the percent deadband" in r.getMessage()]


async def test_the_collectors_percent_deadband_is_applied_by_the_server(
        sim: OpcUaMachineSim, caplog: pytest.LogCaptureFixture) -> None:
    """Pressure (EURange 0..1000): the server reports only changes over 50. Flow has no EURange: the server
    refuses, the adapter says so in one WARNING without a traceback, creates the item without the filter and
    (no `range` to take 5 % of) delivers every change."""
    caplog.set_level(logging.INFO, logger="adapters.opcua")
    adapter = create_adapter(sim.device)
    assert isinstance(adapter, OpcUaAdapter)
    try:
        readings, task = await subscribe(adapter)
        await drive(sim, "pressure", "flow")
        await wait_for(lambda: len(values_of(readings, "flow")) == len(ALL))
        await asyncio.sleep(3 * INTERVAL)
        await stop(task)
    finally:
        await adapter.close()
    assert values_of(readings, "pressure") == REPORTED
    assert values_of(readings, "flow") == ALL
    told = refusals(caplog)
    assert [(r.levelno, r.exc_info) for r in told] == [(logging.WARNING, None)], told
    text = told[0].getMessage()
    assert "tag flow" in text and "BadFilterNotAllowed" in text and "EVERY change is reported" in text, text
    assert "range: [low, high]" in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_collector_applies_the_band_itself_when_the_server_refuses_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """The server's Pressure node has no EURange (its sim was built without the range) but the collector's tag
    has `range: [0, 1000]`: the adapter applies 5 % of it, 50, itself, with the same result as the server.
    Said at WARNING once; a reconnect creates the items again and says it at INFO."""
    caplog.set_level(logging.INFO, logger="adapters.opcua")
    port = free_port()
    server = OpcUaMachineSim(make_device(port, pressure_range=False))
    await server.start()
    adapter = create_adapter(make_device(port))
    assert isinstance(adapter, OpcUaAdapter)
    try:
        readings, task = await subscribe(adapter)
        await drive(server, "pressure")
        await wait_for(lambda: values_of(readings, "pressure")[-1:] == [REPORTED[-1]])
        await asyncio.sleep(3 * INTERVAL)
        await stop(task)
        assert values_of(readings, "pressure") == REPORTED
        await adapter.close()
        _again, task = await subscribe(adapter)
        await stop(task)
    finally:
        await adapter.close()
        await server.stop()
    told = [r for r in refusals(caplog) if "tag pressure" in r.getMessage()]
    assert [r.levelno for r in told] == [logging.WARNING, logging.INFO], told
    text = told[0].getMessage()
    assert "BadFilterNotAllowed" in text and "changes of more than 50 kPa (5 % of range [0, 1000])" in text, text
    assert all(r.exc_info is None for r in caplog.records)


# ---------------------------------------------------------------------------------------- the rule itself


def dv(value: Any, status: int = ua.StatusCodes.Good) -> ua.DataValue:
    return ua.DataValue(Value=ua.Variant(value), StatusCode=ua.StatusCode(status))


def test_the_deadband_rule() -> None:
    """A status change is always reported, band or not; the Status trigger ignores values; an array is
    reported when any element leaves the band; NaN counts as a change; non-numbers compare equal or not."""
    value = ua.DataChangeTrigger.StatusValue
    assert not exceeds(dv(10.0), dv(60.0), value, 50.0)
    assert exceeds(dv(10.0), dv(60.5), value, 50.0)
    assert exceeds(dv(10.0), dv(10.0, ua.StatusCodes.UncertainLastUsableValue), value, 50.0)
    assert not exceeds(dv(10.0), dv(99.0), ua.DataChangeTrigger.Status, 1.0)
    assert not exceeds(dv([1.0, 2.0]), dv([1.5, 2.5]), value, 1.0)
    assert exceeds(dv([1.0, 2.0]), dv([1.5, 3.5]), value, 1.0)
    assert exceeds(dv([1.0, 2.0]), dv([1.0, 2.0, 3.0]), value, 1.0)
    assert exceeds(dv(1.0), dv(math.nan), value, 1.0) and not exceeds(dv(math.nan), dv(math.nan), value, 1.0)
    assert exceeds(dv("a"), dv("b"), value, 1.0) and not exceeds(dv("a"), dv("a"), value, 1.0)


def test_a_percent_deadband_over_100_is_a_config_error() -> None:
    """A server would refuse it (Bad_DeadbandFilterInvalid) and the fallback would swallow every change."""
    with pytest.raises(ConfigError) as err:
        parse_config({"site": {"enterprise_id": "t"}, "devices": [{
            "id": "cnc", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840", "deadband_type": "percent",
            "tags": [{"name": "ok", "node": "ns=2;s=A", "deadband": 100},
                     {"name": "p", "node": "ns=2;s=P", "deadband": 150}]}]})
    assert str(err.value).splitlines() == [
        "devices[0].tags[1].deadband: tag 'p': 150 is over 100; with deadband_type percent the band is a "
        "percentage of the node's EURange (0..100)"]
    parse_config({"site": {"enterprise_id": "t"}, "devices": [{  # an absolute band of 150 is fine
        "id": "cnc", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840", "deadband_type": "absolute",
        "tags": [{"name": "p", "node": "ns=2;s=P", "deadband": 150}]}]})
