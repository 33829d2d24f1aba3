"""Device identity evidence (INDICATORS.md, "Evidence that proves" 3) over real TCP against the simulators.

- the bundled simulators identify themselves as simulators (OPC UA BuildInfo / Machinery Identification,
  Modbus FC 43/14); such a device is 模拟设备 and never counts as networked unless
  `indicators.allow_simulated`, and then every output carries the banner;
- a Modbus device that answers FC 43 with exception 01 works as before and is recorded as "unsupported";
- FC 43/14 is checked against frames written here with `struct` (not with our codec or pymodbus);
- an OPC UA server whose certificate changes mid-month gives an identity-change warning with both thumbprints.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import math
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.base import Adapter, AdapterError
from adapters.modbus.adapter import ModbusAdapter
from adapters.modbus.identification import arp_table, mac_of
from adapters.opcua.security import Pki, create_certificate, thumbprint
from collector.app import Collector
from collector.broker import MosquittoProcess, free_port
from collector.cli import main
from collector.config import CollectorConfig, ModbusDevice, OpcUaDevice, Settings, parse_config
from collector.engine import DeviceTask
from collector.indicators import periods
from collector.indicators.figures import SIMULATED_BANNER, compute
from collector.indicators.identity import period_identity, simulator_reason
from collector.indicators.register import load_register
from collector.indicators.report import render_html
from collector.model import Reading
from collector.status import IdentityRecord, StatusStore
from simulators.modbus import ModbusServerSim
from simulators.opcua import OpcUaMachineSim, SimSecurity
from tests.conftest import Recorder

TZ = "Asia/Shanghai"
NS = "urn:shopfloor-collector:sim"


def opcua_device(port: int, **extra: Any) -> dict[str, Any]:
    return {"id": "cnc", "name": "加工中心", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{port}",
            "mode": "poll", "interval": 0.3, "timeout": 3.0,
            "tags": [{"name": "speed", "node": f"nsu={NS};s=Monitoring.Spindle1.ActualSpeed"}], **extra}


def modbus_device(id_: str, port: int, unit: int) -> dict[str, Any]:
    return {"id": id_, "protocol": "modbus", "endpoint": f"tcp://127.0.0.1:{port}", "unit_id": unit,
            "interval": 0.3, "tags": [{"name": "temp", "table": "holding_register", "address": 0,
                                       "sim": {"kind": "walk", "min": 20, "max": 80}}],
            "identity": [{"name": "serial", "table": "holding_register", "address": 10, "type": "string", "count": 4,
                          "sim": {"kind": "constant", "value": f"SN-{unit}"}}]}


def config(state: Path, broker: int, devices: list[dict[str, Any]], allow: bool = False) -> CollectorConfig:
    return parse_config(config_data(state, broker, devices, allow))


def config_data(state: Path, broker: int, devices: list[dict[str, Any]], allow: bool = False) -> dict[str, Any]:
    return copy.deepcopy({
        "site": {"enterprise_id": "t", "enterprise_name": "测试企业", "workshop": "ws", "timezone": TZ},
        "mqtt": {"url": f"mqtt://127.0.0.1:{broker}"}, "state_dir": str(state),
        "indicators": {"publish_interval": 0.5, "bucket": 1.0, "live_window": 1.5, "coverage": 0.3,
                       "allow_simulated": allow},
        "devices": devices})


async def until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def live(rec: Recorder) -> dict[str, Any] | None:
    m = rec.last("/indicators")
    return m.json() if m else None


# ------------------------------------------------------------------------ simulators are not counted


@pytest.mark.integration
async def test_simulated_devices_count_only_with_allow_simulated_and_then_carry_the_banner(
        broker: MosquittoProcess, recorder: Recorder, state_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    opc_port, mb_port = free_port(), free_port()
    devices = [opcua_device(opc_port), modbus_device("plc-sim", mb_port, 1), modbus_device("plc-real", mb_port, 2)]
    cfg = config(state_dir, broker.port, devices)
    cfg_allow = config(state_dir, broker.port, devices, allow=True)
    opc = OpcUaMachineSim(next(d for d in cfg.devices if isinstance(d, OpcUaDevice)))
    mb = ModbusServerSim(f"tcp://127.0.0.1:{mb_port}", [d for d in cfg.devices if isinstance(d, ModbusDevice)])
    mb.set_identification("plc-real", None)  # answers FC 43 with exception 01, like many real PLCs
    await opc.start()
    await mb.start()
    t0 = math.floor(time.time())
    try:
        collector = Collector(cfg, Settings())
        await collector.start()
        try:
            await until(lambda: len(collector.status.identities) == 3, 20, "an identity of every device")
            await recorder.wait_for(lambda: (s := live(recorder)) and s["figures"]["D2"]["numerator"] == 1
                                    and s["figures"]["D2"]["denominator"] == 3, 15, "live D2 1/3")
            snap = live(recorder)
            assert snap is not None
            assert snap["simulated"] == ["cnc", "plc-sim"] and snap["networked_now"] == ["plc-real"]
            assert snap["banner"] is None
            ids = collector.status.identities
            assert ids["plc-sim"]["product_code"] == "SIMULATOR" and ids["plc-sim"]["vendor"] == "shopfloor-collector"
            assert ids["plc-sim"]["tag.serial"] == "SN-1" and ids["plc-sim"]["mac"] is None  # loopback: no MAC
            assert ids["plc-real"]["fc43"] == "unsupported (exception 01)" and "vendor" not in ids["plc-real"]
            assert ids["plc-real"]["tag.serial"] == "SN-2"
            assert ids["cnc"]["product_uri"] == "urn:shopfloor-collector:simulator"
            assert ids["cnc"]["machine.serial_number"].startswith("SIM-")
            assert collector.status.devices["plc-real"].state == "online"  # no identification: works as before
            await asyncio.sleep(2.0)
        finally:
            await collector.stop()

        recorder.messages.clear()
        collector = Collector(cfg_allow, Settings())
        await collector.start()
        try:
            await recorder.wait_for(lambda: (s := live(recorder)) and s["figures"]["D2"]["numerator"] == 3, 15,
                                    "live D2 3/3 with allow_simulated")
            snap = live(recorder)
            assert snap is not None and snap["banner"] == SIMULATED_BANNER == "含模拟设备，不可用于评价"
            assert snap["simulated"] == ["cnc", "plc-sim"]
            await asyncio.sleep(1.0)
        finally:
            await collector.stop()
    finally:
        await opc.stop()
        await mb.stop()
    t1 = time.time()

    store = StatusStore(state_dir / "status.db", 1.0)
    window = periods.custom(t0, math.floor(t1) + 1, TZ)
    try:
        result = compute(cfg, load_register(cfg), store, window, now=t1 + 5)
        rows = {r["id"]: r for r in result.to_dict()["devices"]}
        d2 = result.figure("D2")
        assert (d2.numerator, d2.denominator) == (1, 3)  # only the device that is not a simulator
        assert result.simulated == ["cnc", "plc-sim"] and result.banner is None
        for dev, evidence in (("cnc", "build.product = shopfloor-collector simulator (OPC UA)"),
                              ("plc-sim", "product_code = SIMULATOR")):
            assert rows[dev]["networked"] is False and rows[dev]["reason"] == "simulated"
            assert rows[dev]["simulated"] is True and rows[dev]["simulated_reason"] == evidence
            assert evidence in rows[dev]["reason_text"]
            assert rows[dev]["coverage"] >= 0.3  # it delivered enough: only its identity keeps it out
        assert rows["plc-real"]["networked"] is True and rows["plc-real"]["simulated"] is False
        assert rows["plc-real"]["identity"]["values"]["fc43"] == "unsupported (exception 01)"
        page = render_html(result, "zh")
        assert "模拟设备（product_code = SIMULATOR）" in page and SIMULATED_BANNER not in page

        allowed = compute(cfg_allow, load_register(cfg_allow), store, window, now=t1 + 5)
        assert (allowed.figure("D2").numerator, allowed.figure("D2").denominator) == (3, 3)
        assert allowed.to_dict()["banner"] == SIMULATED_BANNER
        assert 'id="simulated-banner"' in render_html(allowed, "zh")
    finally:
        store.close()

    # the commands: `collector indicators` and the JSON/CSV/HTML report carry the banner
    path = tmp_path / "allow.yaml"
    path.write_text(yaml.safe_dump(config_data(state_dir, broker.port, devices, allow=True), allow_unicode=True),
                    encoding="utf-8")
    capsys.readouterr()
    assert main(["indicators", "-c", str(path), "--period", "month", "--devices"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"!!! {SIMULATED_BANNER}") and "模拟设备 (product_code = SIMULATOR)" in out
    label = periods.local_date(t1, TZ).strftime("%Y-%m")
    assert main(["report", "-c", str(path), "--period", label, "--format", "json,csv,html",
                 "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / f"report-{label}.json").read_text(encoding="utf-8"))
    assert report["banner"] == SIMULATED_BANNER and report["simulated"] == ["cnc", "plc-sim"]
    figures_csv = (tmp_path / "out" / f"report-{label}-figures.csv").read_text(encoding="utf-8-sig").splitlines()
    assert figures_csv[0].endswith(",note") and all(line.endswith(SIMULATED_BANNER) for line in figures_csv[1:])
    devices_csv = (tmp_path / "out" / f"report-{label}.csv").read_text(encoding="utf-8-sig").splitlines()
    assert devices_csv[0].endswith(",模拟设备")
    html_text = (tmp_path / "out" / f"report-{label}.html").read_text(encoding="utf-8")
    assert 'id="simulated-banner"' in html_text and SIMULATED_BANNER in html_text


# ------------------------------------------------------------------------ FC 43/14, independently encoded


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def mei_answer(read_code: int, more: int, next_id: int, objects: list[tuple[int, bytes]],
               conformity: int = 0x82) -> bytes:
    body = b"".join(struct.pack(">BB", oid, len(v)) + v for oid, v in objects)
    return struct.pack(">BBBBBBB", 0x2B, 0x0E, read_code, conformity, more, next_id, len(objects)) + body


async def test_simulator_answers_fc43_as_the_specification_encodes_it() -> None:
    port = free_port()
    dev = ModbusDevice.model_validate(modbus_device("plc-sim", port, 7))
    async with ModbusServerSim(f"tcp://127.0.0.1:{port}", [dev]) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(struct.pack(">HHHBBBBB", 0x1234, 0, 5, 7, 0x2B, 0x0E, 0x01, 0x00))  # basic, from object 0
            expected = mbap(0x1234, 7, mei_answer(0x01, 0x00, 0x00, [
                (0x00, b"shopfloor-collector"), (0x01, b"SIMULATOR"), (0x02, b"1.0")]))
            assert await asyncio.wait_for(reader.readexactly(len(expected)), 5) == expected
            sim.set_identification("plc-sim", None)
            writer.write(struct.pack(">HHHBBBBB", 0x1235, 0, 5, 7, 0x2B, 0x0E, 0x02, 0x00))
            assert await asyncio.wait_for(reader.readexactly(9), 5) == struct.pack(">HHHBBB", 0x1235, 0, 3, 7, 0xAB, 1)
        finally:
            writer.close()


async def test_adapter_reads_an_fc43_answer_in_two_parts_from_a_struct_server() -> None:
    """A device written here with struct: it checks our requests byte for byte and answers the regular
    identification in two parts ("more follows"), then serves one register."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _proto, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                seen.append(pdu)
                if pdu == bytes([0x2B, 0x0E, 0x02, 0x00]):
                    answer = mei_answer(0x02, 0xFF, 0x03, [(0x00, b"ACME Drives"), (0x01, b"AD-7"), (0x02, b"V2.14")])
                elif pdu == bytes([0x2B, 0x0E, 0x02, 0x03]):
                    answer = mei_answer(0x02, 0x00, 0x00, [(0x04, b"Servo drive AD-7 "), (0x05, b"AD-7/400\x00")])
                elif pdu[0] == 3:
                    _fc, _addr, count = struct.unpack(">BHH", pdu)
                    answer = struct.pack(">BB", 3, 2 * count) + b"\x00\x2a" * count
                else:
                    answer = bytes([pdu[0] | 0x80, 1])
                writer.write(mbap(tid, unit, answer))
        except asyncio.IncompleteReadError:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dev = ModbusDevice.model_validate({"id": "drive", "endpoint": f"tcp://127.0.0.1:{port}", "unit_id": 5,
                                       "tags": [{"name": "t", "table": "holding_register", "address": 0}]})
    adapter = ModbusAdapter(dev)
    try:
        await adapter.connect()
        identity = await adapter.identify()
        readings = await adapter.read()
    finally:
        await adapter.close()
        server.close()
        await server.wait_closed()
    assert seen[:2] == [bytes([0x2B, 0x0E, 0x02, 0x00]), bytes([0x2B, 0x0E, 0x02, 0x03])]
    assert identity == {"protocol": "modbus", "fc43": "ok", "vendor": "ACME Drives", "product_code": "AD-7",
                        "revision": "V2.14", "product_name": "Servo drive AD-7", "model_name": "AD-7/400",
                        "mac": None}
    assert simulator_reason(identity) is None
    assert [(r.value, r.quality) for r in readings] == [(42, "good")]


# ------------------------------------------------------------------------ OPC UA certificate change


@pytest.mark.integration
async def test_opcua_certificate_change_mid_month_is_an_identity_warning_with_both_thumbprints(
        broker: MosquittoProcess, state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    client_pki = tmp_path / "client-pki"
    cfg = config(state_dir, broker.port, [opcua_device(
        port, security={"mode": "Sign", "policy": "Basic256Sha256", "pki_dir": str(client_pki),
                        "application_uri": "urn:shopfloor-collector:test-client"})])
    device = cfg.devices[0]
    assert isinstance(device, OpcUaDevice)
    app_uri = f"urn:shopfloor-collector:sim:{device.id}"
    thumbs = []
    Pki(client_pki).ensure_layout()
    for name in ("a", "b"):  # the operator trusted both certificates (e.g. the new one after a service visit)
        cert, _ = create_certificate(Pki(tmp_path / f"sim-{name}"), app_uri, server=True)
        shutil.copy(tmp_path / f"sim-{name}" / "own" / "cert.der", client_pki / "trusted" / f"sim-{name}.der")
        thumbs.append(thumbprint(cert))
    sim = OpcUaMachineSim(device, security=SimSecurity(tmp_path / "sim-a", modes=("Sign",)))
    await sim.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    try:
        await until(lambda: collector.status.identities.get("cnc", {}).get("certificate_thumbprint") == thumbs[0],
                    20, "the first certificate's thumbprint")
        await sim.stop()
        sim = OpcUaMachineSim(device, security=SimSecurity(tmp_path / "sim-b", modes=("Sign",)))
        await sim.start()
        await until(lambda: collector.status.identities["cnc"]["certificate_thumbprint"] == thumbs[1], 30,
                    "the new certificate's thumbprint after the restart")
        changed_at = time.time()
    finally:
        await collector.stop()
        await sim.stop()

    store = StatusStore(state_dir / "status.db", 1.0)
    try:
        result = compute(cfg, load_register(cfg), store, periods.parse("month", changed_at, TZ), now=changed_at + 1)
    finally:
        store.close()
    [warning] = result.identity_warnings
    assert warning["device"] == "cnc" and warning["changed"] == ["certificate_thumbprint"]
    assert warning["before"]["values"]["certificate_thumbprint"] == thumbs[0]
    assert warning["after"]["values"]["certificate_thumbprint"] == thumbs[1]
    assert warning["time"].startswith(periods.local_date(changed_at, TZ).isoformat())
    assert abs(dt.datetime.fromisoformat(warning["time"]).timestamp() - changed_at) < 30
    assert result.to_dict()["identity_warnings"] == result.identity_warnings
    page = render_html(result, "zh")
    assert thumbs[0] in page and thumbs[1] in page and "设备身份变化" in page
    assert result.figure("D2").numerator == 0  # it says simulator, and allow_simulated is off


# ------------------------------------------------------------------------ pure parts


ARP = """IP address       HW type     Flags       HW address            Mask     Device
192.168.10.21    0x1         0x2         00:1b:1b:aa:bb:cc     *        eth1
192.168.10.22    0x1         0x0         00:00:00:00:00:00     *        eth1
10.0.0.1         0x1         0x2         52:54:00:12:34:56     *        eth0
"""


def test_neighbour_table_gives_the_mac_of_complete_entries_only(tmp_path: Path) -> None:
    assert arp_table(ARP) == {"192.168.10.21": "00:1b:1b:aa:bb:cc", "10.0.0.1": "52:54:00:12:34:56"}
    table = tmp_path / "arp"
    table.write_text(ARP, encoding="ascii")
    assert mac_of("192.168.10.21", table) == (True, "00:1b:1b:aa:bb:cc")
    assert mac_of("192.168.10.22", table) == (False, None)  # incomplete: unknown, not "no MAC"
    assert mac_of("172.16.0.9", table) == (False, None)  # off-link: no entry, nothing recorded
    assert mac_of("127.0.0.1", table) == (True, None)
    assert mac_of("192.168.10.21", tmp_path / "missing") == (False, None)  # no table on this OS: unknown


def test_an_identity_holds_until_replaced_and_a_change_is_dated(tmp_path: Path) -> None:
    store = StatusStore(tmp_path / "s.db", 1.0)
    a = {"protocol": "opcua", "application_uri": "urn:a", "certificate_thumbprint": "AA"}
    assert store.record_identity("d", a, 100.0) is None
    assert store.record_identity("d", {"protocol": "opcua", "application_uri": "urn:a"}, 200.0) is None  # a part missing
    before = store.record_identity("d", {**a, "certificate_thumbprint": "BB"}, 300.0)
    assert before is not None and before.values == a and (before.first_seen, before.last_seen) == (100.0, 200.0)
    recs = store.identities()
    assert [(r.first_seen, r.last_seen, r.values["certificate_thumbprint"]) for r in recs] == [
        (100.0, 200.0, "AA"), (300.0, 300.0, "BB")]
    assert period_identity(recs, 250.0, 290.0).current["d"].values["certificate_thumbprint"] == "AA"  # still in force
    assert period_identity(recs, 250.0, 290.0).changes == []
    [(old, new)] = period_identity(recs, 250.0, 400.0).changes
    assert (old.values["certificate_thumbprint"], new.values["certificate_thumbprint"], new.first_seen) == (
        "AA", "BB", 300.0)
    assert period_identity(recs, 350.0, 400.0).changes == []  # changed before the period
    store.close()


def test_simulator_evidence_is_read_from_descriptive_fields_only() -> None:
    assert simulator_reason({"vendor": "shopfloor-collector", "product_code": "SIMULATOR"}) == \
        "product_code = SIMULATOR"
    assert simulator_reason({"product_uri": "urn:prosysopc.com:OPCUA:SimulationServer"}) is not None
    assert simulator_reason({"tag.serial": "SIMULATE-1", "mac": "simulated", "fc43": "ok"}) is None
    assert simulator_reason({"vendor": "Siemens", "product_code": "6ES7 515-2AM02"}) is None
    period = period_identity([IdentityRecord("d", 10.0, 20.0, {"product_code": "SIMULATOR"}),
                              IdentityRecord("d", 30.0, 40.0, {"product_code": "X-1"})], 35.0, 50.0)
    assert period.simulated == {} and period.current["d"].values == {"product_code": "X-1"}


async def test_rtu_line_identifies_each_unit_through_pymodbus() -> None:
    """rtu+tcp goes through pymodbus's read_device_information: a unit with identification and one that
    answers exception 01 share the line, and both keep being read."""
    port = free_port()
    devs = [ModbusDevice.model_validate(modbus_device(f"u{u}", port, u) | {"endpoint": f"rtu+tcp://127.0.0.1:{port}"})
            for u in (1, 2)]
    async with ModbusServerSim(devs[0].endpoint, devs) as sim:
        sim.set_identification("u2", None)
        adapters = [ModbusAdapter(d) for d in devs]
        try:
            for a in adapters:
                await a.connect()
            identities = [await a.identify() for a in adapters]
            readings = [await a.read() for a in adapters]
        finally:
            for a in adapters:
                await a.close()
    assert identities[0]["product_code"] == "SIMULATOR" and identities[0]["model_name"] == "u1"
    assert identities[0]["tag.serial"] == "SN-1"
    assert identities[1] == {"protocol": "modbus", "fc43": "unsupported (exception 01)", "tag.serial": "SN-2",
                             "mac": None}
    assert [r[0].quality for r in readings] == ["good", "good"]


class _Identifies(Adapter):
    protocol = "fake-identity"
    calls = 0

    async def connect(self) -> None:
        return None

    async def read(self) -> list[Reading]:
        await asyncio.sleep(0)
        now = time.time()
        return [Reading(self.device.id, "t", 1, None, "good", now, now)]

    async def identify(self) -> dict[str, Any]:
        type(self).calls += 1
        if type(self).calls == 1:
            await asyncio.sleep(0.5)  # a slow identification must not hold up the polls
            raise AdapterError("no answer")
        return {"protocol": "fake", "vendor": "ACME"}

    async def close(self) -> None:
        return None


async def test_engine_identifies_beside_the_poll_loop_and_again_on_schedule() -> None:
    dev = ModbusDevice.model_validate(modbus_device("d", free_port(), 1) | {"interval": 0.05})
    polls: list[float] = []
    seen: list[dict[str, Any]] = []
    task = DeviceTask(dev, lambda _d, _r: polls.append(time.monotonic()), lambda *_: None,
                      adapter_factory=_Identifies, on_identity=lambda _d, ident: seen.append(ident),
                      identify_interval=0.2)
    started = time.monotonic()
    task.start()
    try:
        await until(lambda: len(seen) >= 2, 5, "two identities")
    finally:
        await task.stop()
    assert len(polls) >= 5 and polls[4] - started < 0.45  # polled while the first identify was stuck (0.5 s)
    assert seen[0] == {"protocol": "fake", "vendor": "ACME"} and _Identifies.calls >= 3
    assert task._identify_task is None
