"""Write-back against the simulators over real TCP and a real mosquitto: values land in the simulated device
and read back; every refusal names its reason and sends nothing; the audit log has one line per request.

What reached a device is read from the simulators' own request logs (`UnitStore.requests` / `.writes`,
`OpcUaMachineSim.write_requests`), and written registers are compared with `struct`-encoded values, not with
our codec.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import paho.mqtt.publish as mqtt_publish
import pytest
import yaml

from collector.app import Collector
from collector.config import Settings, parse_config
from collector.http import HttpServer
from collector.writes.audit import AUDIT_FILE, read_audit
from simulators.workshop import Workshop
from tests.conftest import Recorder
from tests.support.broker import MosquittoProcess, free_port

TOKEN = "write-test-token-0123456789"
NS = "nsu=urn:shopfloor-collector:sim"
ROOT = "factory/t1/w1"


def config(state_dir: Path, broker_port: int, enabled: bool = True, plc_scheme: str = "tcp") -> dict[str, Any]:
    switch = {"enabled": enabled}
    return {
        "site": {"enterprise_id": "t1", "workshop": "w1"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}"},
        "state_dir": str(state_dir),
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "writes": {"enabled": enabled},
        "devices": [
            {"id": "plc-1", "protocol": "modbus", "endpoint": f"{plc_scheme}://127.0.0.1:{free_port()}",
             "interval": 0.3, "timeout": 1.0, "writes": switch, "tags": [
                 {"name": "setpoint", "table": "holding_register", "address": 10, "type": "float32",
                  "byte_order": "CDAB", "write": {"allowed": True, "min": 0, "max": 500},
                  "sim": {"kind": "constant", "value": 100}},
                 {"name": "speed", "table": "holding_register", "address": 20, "type": "int32", "byte_order": "CDAB",
                  "scale": 0.1, "write": {"allowed": True, "min": -1000, "max": 1000},
                  "sim": {"kind": "constant", "value": 5}},
                 {"name": "run", "table": "coil", "address": 0, "type": "bool", "write": {"allowed": True}},
                 {"name": "mode", "table": "holding_register", "address": 30, "type": "uint16",
                  "write": {"allowed": [1, 2, 3], "rate_limit": 2}, "sim": {"kind": "constant", "value": 1}},
                 {"name": "count", "table": "holding_register", "address": 40, "type": "uint16"},
                 {"name": "lamp", "table": "holding_register", "address": 50, "type": "bool", "bit": 3,
                  "write": {"allowed": True}},
                 {"name": "ready", "table": "holding_register", "address": 50, "type": "bool", "bit": 0,
                  "sim": {"kind": "constant", "value": True}},
                 {"name": "temp", "table": "input_register", "address": 0, "type": "int16"},
             ]},
            {"id": "cnc-1", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{free_port()}",
             "interval": 0.3, "writes": switch, "tags": [  # subscribe mode (the default): writes beside it
                 {"name": "feed", "node": f"{NS};s=Feed", "type": "double",
                  "write": {"allowed": True, "min": 50, "max": 150}, "sim": {"kind": "constant", "value": 100}},
                 {"name": "program", "node": f"{NS};s=Program", "type": "string", "write": {"allowed": True},
                  "sim": {"kind": "constant", "value": "O1001"}},
                 {"name": "parts", "node": f"{NS};s=Production.PartsCounter",  # no type: the node's UInt32
                  "write": {"allowed": True}},
             ]},
            {"id": "plc-off", "protocol": "modbus", "endpoint": f"tcp://127.0.0.1:{free_port()}", "interval": 0.3,
             "timeout": 0.3, "writes": switch, "tags": [
                 {"name": "setpoint", "table": "holding_register", "address": 0, "write": {"allowed": True}}]},
        ],
    }


class Site:
    def __init__(self, workshop: Workshop, collector: Collector, http: HttpServer,
                 session: aiohttp.ClientSession) -> None:
        self.workshop, self.collector, self.http, self.session = workshop, collector, http, session

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    async def write(self, device: str, body: Any, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.post(f"{self.base}/api/devices/{device}/write", json=body, headers=headers) as r:
            return r.status, await r.json()

    def unit(self, device: str = "plc-1") -> Any:
        return self.workshop.by_device[device].units[1]

    def audit(self) -> list[dict[str, Any]]:
        return list(read_audit(self.collector.state_dir / AUDIT_FILE))

    async def online(self, *devices: str) -> None:
        for _ in range(200):
            states = {d: self.collector.status.devices[d].state for d in devices}
            if all(s == "online" for s in states.values()):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"not online: {states}")


async def make_site(data: dict[str, Any], token: str | None = TOKEN) -> Site:
    cfg = parse_config(data)
    workshop = Workshop(cfg, [d.id for d in cfg.devices if d.id != "plc-off"])
    await workshop.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    http = HttpServer(collector, token=token or "")
    await http.start()
    site = Site(workshop, collector, http, aiohttp.ClientSession())
    await site.online("plc-1", "cnc-1")
    return site


async def close_site(site: Site) -> None:
    await site.session.close()
    await site.http.stop()
    await site.collector.stop()
    await site.workshop.stop()


@pytest.fixture
async def site(broker: MosquittoProcess, state_dir: Path) -> AsyncIterator[Site]:
    s = await make_site(config(state_dir, broker.port))
    try:
        yield s
    finally:
        await close_site(s)


def cdab(fmt: str, value: Any) -> list[int]:
    """Registers of a 32-bit value in CDAB order, by struct (not by our codec)."""
    b = struct.pack(">" + fmt, value)
    return [b[2] << 8 | b[3], b[0] << 8 | b[1]]


async def test_modbus_register_and_coil_change_in_the_device_and_read_back(site: Site) -> None:
    code, result = await site.write("plc-1", {"id": "r-1", "tag": "setpoint", "value": 123.25})
    assert code == 200, result
    assert (result["status"], result["readback"], result["old"]) == ("ok", 123.25, 100.0)
    code, result = await site.write("plc-1", {"tag": "speed", "value": -12.3})
    assert (code, result["status"], result["readback"], result["old"]) == (200, "ok", -12.3, 5.0)
    code, result = await site.write("plc-1", {"tag": "run", "value": True})
    assert (code, result["status"], result["readback"], result["old"]) == (200, "ok", True, False)

    regs = site.unit().tables["holding_register"]
    assert list(regs[10:12]) == cdab("f", 123.25)
    assert list(regs[20:22]) == cdab("i", -123)  # -12.3 / 0.1, in reverse through the scale
    assert site.unit().tables["coil"][0] == 1
    assert site.unit().writes == [(16, 10, 2), (16, 20, 2), (5, 0, 1)]
    # one bit of a register: read, that bit changed, written back; the other bits stay
    code, result = await site.write("plc-1", {"tag": "lamp", "value": True})
    assert (code, result["status"], result["readback"], result["old"]) == (200, "ok", True, False)
    assert regs[50] == 0b1001 and site.unit().writes[-1] == (6, 50, 1)
    await asyncio.sleep(0.8)  # the simulator keeps the setpoint: the machine model no longer overwrites it
    assert list(regs[10:12]) == cdab("f", 123.25)
    latest = site.collector.pipeline.latest["plc-1"]
    assert latest["setpoint"].value == 123.25 and latest["run"].value is True

    audit = site.audit()
    assert [(r["id"], r["tag"], r["status"], r["by"], r["via"]) for r in audit][0] == (
        "r-1", "setpoint", "ok", audit[0]["by"], "http")
    assert len(audit) == 4 and audit[0]["by"].startswith("token:") and TOKEN not in json.dumps(audit)
    assert [(r["old"], r["value"]) for r in audit] == [(100.0, 123.25), (5.0, -12.3), (False, True), (False, True)]


async def test_opcua_node_written_over_mqtt_with_result_and_audit_topics(site: Site, broker: MosquittoProcess
                                                                         ) -> None:
    rec = Recorder(broker.host, broker.port, f"{ROOT}/#")
    try:
        sim = site.workshop.by_device["cnc-1"]
        payload = {"id": "mes-42", "tag": "feed", "value": 120.5, "client_id": "mes-7"}
        mqtt_publish.single(f"{ROOT}/devices/cnc-1/write", orjson.dumps(payload), qos=1, hostname=broker.host,
                            port=broker.port)
        msg = await rec.wait_for(lambda: rec.last("/devices/cnc-1/write/result"), what="the write result")
        result = msg.json()
        assert (result["id"], result["status"], result["readback"], result["old"]) == ("mes-42", "ok", 120.5, 100.0)
        assert not msg.retain
        node = sim.server.get_node(sim.node_ids["feed"])
        assert await node.read_value() == 120.5
        assert sim.write_requests == [(sim.node_ids["feed"].to_string(), 120.5)]
        audit_msg = await rec.wait_for(lambda: rec.last(f"{ROOT}/audit/writes"), what="the audit record")
        assert not audit_msg.retain and audit_msg.json()["by"] == "mqtt:mes-7"

        # a string for a Double node: refused before the Write service is called
        mqtt_publish.single(f"{ROOT}/devices/cnc-1/write", b'{"id": "mes-43", "tag": "feed", "value": "fast"}',
                            qos=1, hostname=broker.host, port=broker.port)
        msg = await rec.wait_for(lambda: [m for m in rec.on("/write/result") if m.json()["id"] == "mes-43"],
                                 what="the refusal")
        refusal = msg[0].json()
        assert (refusal["status"], refusal["code"]) == ("refused", "type_mismatch")
        assert refusal["reason"].startswith("数值类型不符 (type mismatch)")
        code, result = await site.write("cnc-1", {"tag": "program", "value": "O2002"})
        assert (code, result["status"], result["readback"]) == (200, "ok", "O2002")
        assert len(sim.write_requests) == 2
        # no `type:` on the tag: the node's DataType (an integer) decides, read before any Write
        code, result = await site.write("cnc-1", {"tag": "parts", "value": 2.5})
        assert (code, result["status"], result["code"]) == (409, "refused", "type_mismatch")
        assert "UInt32: 2.5 is not a whole number" in result["reason"] and len(sim.write_requests) == 2
        code, result = await site.write("cnc-1", {"tag": "parts", "value": -1})
        assert result["code"] == "type_mismatch" and len(sim.write_requests) == 2
        code, result = await site.write("cnc-1", {"tag": "parts", "value": 9})
        assert (code, result["status"], result["readback"]) == (200, "ok", 9) and isinstance(result["old"], int)
        assert [r["id"] for r in site.audit()][:2] == ["mes-42", "mes-43"]
    finally:
        rec.close()


async def test_every_refusal_names_its_reason_and_writes_nothing(site: Site) -> None:
    unit = site.unit()
    cases = [
        ("plc-1", {"tag": "count", "value": 1}, "not_writable", "该点位不允许写入"),
        ("plc-1", {"tag": "temp", "value": 1}, "not_writable", "该点位不允许写入"),  # an input register
        ("plc-1", {"tag": "setpoint", "value": 900}, "out_of_range", "数值超出允许范围"),
        ("plc-1", {"tag": "setpoint", "value": -1}, "out_of_range", "数值超出允许范围"),
        ("plc-1", {"tag": "mode", "value": 7}, "out_of_range", "数值超出允许范围"),
        ("plc-1", {"tag": "setpoint", "value": "hot"}, "type_mismatch", "数值类型不符"),
        ("plc-1", {"tag": "run", "value": 5}, "type_mismatch", "数值类型不符"),
        ("plc-1", {"tag": "speed", "value": 12.34}, "type_mismatch", "数值类型不符"),  # not a step of 0.1
        ("plc-1", {"tag": "nope", "value": 1}, "unknown_tag", "没有该点位"),
        ("plc-1", {"value": 1}, "bad_request", "请求格式错误"),
        ("plc-off", {"tag": "setpoint", "value": 1}, "device_offline", "设备离线"),
        ("nowhere", {"tag": "x", "value": 1}, "unknown_device", "没有该设备"),
    ]
    for device, body, want, zh in cases:
        code, result = await site.write(device, body)
        assert (result["status"], result["code"]) == ("refused", want), (body, result)
        assert result["reason"].startswith(zh), result["reason"]
        assert code == (404 if want == "unknown_device" else 409)
    assert unit.writes == []

    # rate limit: two writes per minute to `mode`, the third refused
    for value in (2, 3):
        assert (await site.write("plc-1", {"tag": "mode", "value": value}))[1]["status"] == "ok"
    code, result = await site.write("plc-1", {"tag": "mode", "value": 1})
    assert (code, result["code"]) == (409, "rate_limited") and "写入过于频繁" in result["reason"]
    assert unit.writes == [(6, 30, 1), (6, 30, 1)] and unit.tables["holding_register"][30] == 3

    # a tag another request is writing: the slow device still holds the first request
    site.workshop.by_device["plc-1"].set_delay("plc-1", 0.4)
    first, second = await asyncio.gather(site.write("plc-1", {"tag": "setpoint", "value": 200}),
                                         site.write("plc-1", {"tag": "setpoint", "value": 300}))
    site.workshop.by_device["plc-1"].set_delay("plc-1", 0)
    assert first[1]["status"] == "ok" and (second[1]["status"], second[1]["code"]) == ("refused", "busy")
    assert unit.writes[2:] == [(16, 10, 2)] and list(unit.tables["holding_register"][10:12]) == cdab("f", 200.0)

    # the device answers the write with an exception (a PLC refusing writes in RUN): failed, the reason names it
    site.workshop.by_device["plc-1"].refuse_writes("plc-1", 4)
    code, result = await site.write("plc-1", {"tag": "speed", "value": 1.5})
    site.workshop.by_device["plc-1"].refuse_writes("plc-1", None)
    assert (code, result["status"], result["code"]) == (502, "failed", "device_refused")
    assert "exception 04 (device failure)" in result["reason"] and result["reason"].startswith("设备拒绝写入")
    assert list(unit.tables["holding_register"][20:22]) == cdab("i", 50)  # still the simulated 5.0

    # degraded: refused as well
    site.collector.status.devices["plc-1"].state = "degraded"  # type: ignore[assignment]
    code, result = await site.write("plc-1", {"tag": "setpoint", "value": 10})
    assert result["code"] == "device_degraded"
    n = len(cases) + 3 + 2 + 1 + 1
    assert len(site.audit()) == n and len(unit.writes) == 4  # two to mode, setpoint 200, the refused speed


async def test_with_writes_disabled_no_request_reaches_a_device(broker: MosquittoProcess, state_dir: Path) -> None:
    data = config(state_dir, broker.port, enabled=False)
    del data["writes"]  # the default
    for dev in data["devices"]:
        del dev["writes"]
    site = await make_site(data)
    rec = Recorder(broker.host, broker.port, f"{ROOT}/devices/+/write/result")
    try:
        unit, sim = site.unit(), site.workshop.by_device["cnc-1"]
        before = len(unit.requests)
        for device, tag, value in [("plc-1", "setpoint", 10), ("plc-1", "run", True), ("cnc-1", "feed", 90)]:
            code, result = await site.write(device, {"tag": tag, "value": value})
            assert (code, result["code"]) == (409, "writes_disabled"), result
            assert "writes.enabled is false" in result["reason"]
        mqtt_publish.single(f"{ROOT}/devices/plc-1/write", b'{"tag": "setpoint", "value": 10}', qos=1,
                            hostname=broker.host, port=broker.port)
        msg = await rec.wait_for(lambda: rec.last("/write/result"), what="the refusal")
        assert msg.json()["code"] == "writes_disabled"
        await asyncio.sleep(0.5)
        polls = [r for r in list(unit.requests)[before:]]
        assert unit.writes == [] and sim.write_requests == []
        assert {fc for fc, _, _ in polls} <= {1, 3, 4}  # only the polls' reads
        assert len(site.audit()) == 4

        # the device switch alone is not enough: the global one must be on too
        site.collector.cfg.devices[0].writes.enabled = True
        code, result = await site.write("plc-1", {"tag": "setpoint", "value": 10})
        assert result["code"] == "writes_disabled" and "for this collector" in result["reason"]
        assert unit.writes == []

        # switched on by a reload (SIGHUP), no restart: the next request is written
        on = config(state_dir, broker.port)
        for new, old in zip(on["devices"], data["devices"], strict=True):
            new["endpoint"] = old["endpoint"]
        on["http"], on["mqtt"] = data["http"], data["mqtt"]
        outcome = await site.collector.reload(parse_config(on))
        assert outcome.get("ok", True), outcome
        await site.online("plc-1")
        code, result = await site.write("plc-1", {"tag": "setpoint", "value": 10})
        assert (code, result["status"]) == (200, "ok") and unit.writes == [(16, 10, 2)]
    finally:
        rec.close()
        await close_site(site)


async def test_http_write_needs_a_token_even_on_loopback(broker: MosquittoProcess, state_dir: Path) -> None:
    site = await make_site(config(state_dir, broker.port), token=None)
    try:
        code, result = await site.write("plc-1", {"tag": "setpoint", "value": 10}, token=None)
        assert (code, result["code"]) == (403, "token_required")
        assert site.unit().writes == [] and site.audit() == []
    finally:
        await close_site(site)


async def test_rtu_line_write_shares_the_line_with_polling(broker: MosquittoProcess, state_dir: Path) -> None:
    data = config(state_dir, broker.port, plc_scheme="rtu+tcp")
    second = copy.deepcopy(data["devices"][0])
    second.update(id="plc-2", unit_id=2, endpoint=data["devices"][0]["endpoint"])
    data["devices"].insert(1, second)
    site = await make_site(data)
    try:
        await site.online("plc-2")
        server = site.workshop.by_device["plc-1"]
        results = await asyncio.gather(*(site.write(dev, {"tag": "setpoint", "value": v})
                                         for dev, v in [("plc-1", 11.5), ("plc-2", 22.5)]))
        assert [(r[1]["status"], r[1]["readback"]) for r in results] == [("ok", 11.5), ("ok", 22.5)]
        assert list(server.units[1].tables["holding_register"][10:12]) == cdab("f", 11.5)
        assert list(server.units[2].tables["holding_register"][10:12]) == cdab("f", 22.5)
        await asyncio.sleep(0.6)
        assert site.collector.status.devices["plc-1"].state == "online"
        assert site.collector.status.devices["plc-2"].state == "online"
    finally:
        await close_site(site)


async def test_cli_write_and_writes_list(broker: MosquittoProcess, state_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_HTTP_TOKEN", TOKEN)
    data = config(state_dir, broker.port)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    site = await make_site(data)
    env = {**os.environ, "COLLECTOR_HTTP_TOKEN": TOKEN}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector.cli", "write", "-c", str(path), "plc-1", "setpoint", "42.5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert "写入成功 (ok): plc-1.setpoint = 42.5" in out.decode()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector.cli", "write", "-c", str(path), "plc-1", "setpoint", "4200",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await proc.communicate()
        assert proc.returncode == 1 and "out_of_range" in err.decode() and "数值超出允许范围" in err.decode()
        assert site.unit().writes == [(16, 10, 2)]
        listings = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector.cli", "writes", "-c", str(path), *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env) for extra in (["--json"], [])]
        (out, err), (table, _) = await asyncio.gather(*(p.communicate() for p in listings))  # both at once
        records = json.loads(out)
        lines = table.decode().splitlines()
        assert len(lines) == 2 and "plc-1.setpoint" in lines[0] and "-> 42.5  ok" in lines[0]
        assert "refused  out_of_range" in lines[1]
        assert [(r["via"], r["status"], r["value"]) for r in records] == [("cli", "ok", 42.5),
                                                                          ("cli", "refused", 4200)]
    finally:
        await close_site(site)


async def test_sparkplug_dcmd_is_a_write_request(broker: MosquittoProcess, state_dir: Path) -> None:
    from collector.sinks import sparkplug_b_pb2 as pb

    data = config(state_dir, broker.port)
    data["mqtt"]["format"] = "sparkplug"
    site = await make_site(data)
    try:
        cmd = pb.Payload(timestamp=1)
        cmd.metrics.add(name="setpoint", datatype=10, double_value=77.5)  # Double
        cmd.metrics.add(name="mode", datatype=3, int_value=(-1) & 0xFFFFFFFF)  # Int32 -1: not in the list
        mqtt_publish.single("spBv1.0/t1/DCMD/w1/plc-1", cmd.SerializeToString(), qos=1, hostname=broker.host,
                            port=broker.port)
        for _ in range(100):
            if len(site.audit()) == 2:
                break
            await asyncio.sleep(0.1)
        records = sorted(site.audit(), key=lambda r: r["tag"])
        assert [(r["tag"], r["value"], r["status"], r["code"], r["via"]) for r in records] == [
            ("mode", -1, "refused", "out_of_range", "sparkplug"), ("setpoint", 77.5, "ok", None, "sparkplug")]
        assert list(site.unit().tables["holding_register"][10:12]) == cdab("f", 77.5)
        assert site.unit().writes == [(16, 10, 2)]
    finally:
        await close_site(site)


async def test_mbap_client_write_function_codes_against_the_pymodbus_server() -> None:
    """FC 5/6/15/16 of our lean client against pymodbus's server (not ours): frames and echoes agree."""
    from adapters.modbus.tcp import MbapClient
    from simulators.modbus import ModbusServerSim

    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [
        {"id": "d", "protocol": "modbus", "endpoint": f"tcp://127.0.0.1:{free_port()}", "tags": [
            {"name": "c", "table": "coil", "address": 0, "type": "bool"},
            {"name": "c9", "table": "coil", "address": 9, "type": "bool"},
            {"name": "r", "table": "holding_register", "address": 0, "type": "float64"}]}]})
    dev = cfg.devices[0]
    async with ModbusServerSim(dev.endpoint, [dev]) as sim:
        client = MbapClient("127.0.0.1", dev.parsed_endpoint.port, timeout=2.0)
        assert await client.connect()
        try:
            unit = sim.units[1]
            assert not (await client.write_coils(0, [True, False, True, True, False, False, False, False, True],
                                                 device_id=1)).isError()
            assert list(unit.tables["coil"][0:10]) == [1, 0, 1, 1, 0, 0, 0, 0, 1, 0]
            assert not (await client.write_coil(9, True, device_id=1)).isError()
            assert not (await client.write_register(3, 0xBEEF, device_id=1)).isError()
            assert not (await client.write_registers(0, [1, 2, 3], device_id=1)).isError()
            assert list(unit.tables["holding_register"][0:4]) == [1, 2, 3, 0xBEEF]
            answer = await client.write_register(99, 1, device_id=1)  # past the last tag: exception 02
            assert answer.isError() and answer.exception_code == 2
            assert [fc for fc, _, _ in unit.writes] == [15, 5, 6, 16, 6]
        finally:
            client.close()
