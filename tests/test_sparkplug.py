"""Sparkplug B edge node against a real broker: every message type decoded with the specification's schema.

One run walks a whole life: births (bdSeq from the state file, wrapping 255 → 0), a seq that wraps past 255,
alias-only data holding only what changed, a lost connection (the broker sends the NDEATH will, the backlog comes
back with is_historical under the next bdSeq), a stopped simulated device (DDEATH), a Rebirth command (same
bdSeq), and a clean stop (NDEATH).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.app import Collector
from collector.config import Settings, parse_config
from collector.sinks import sparkplug_b_pb2 as pb
from simulators.workshop import Workshop
from tests.conftest import Message, Recorder
from tests.support.broker import MosquittoProcess
from tests.test_outbox_outage import load_config

pytestmark = pytest.mark.integration

GROUP, NODE = "plantA", "edge1"
PREFIX = f"spBv1.0/{GROUP}"
INT64, DOUBLE, BOOLEAN = 4, 10, 11


# The Eclipse Tahu JavaScript payload library (npm `sparkplug-payload`), a decoder independent of ours.
NODE_DECODER = """
const sp = require('sparkplug-payload').get('spBv1.0');
const num = (v) => (v && typeof v === 'object' && 'low' in v && 'high' in v)
  ? (v.unsigned ? (v.high >>> 0) * 4294967296 : v.high * 4294967296) + (v.low >>> 0) : v;
const plain = (o) => Array.isArray(o) ? o.map(plain) : (o && typeof o === 'object' && !('low' in o))
  ? Object.fromEntries(Object.entries(o).map(([k, v]) => [k, plain(v)])) : num(o);
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(input.map((b) => plain(sp.decodePayload(Buffer.from(b, 'base64'))))));
"""
NPM_PACKAGE = "sparkplug-payload@1.0.3"


def tahu_decode(payloads: list[bytes]) -> list[dict[str, Any]]:
    """Decode with Tahu's JavaScript library, installed once from npm into a cache folder."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not installed: the independent Sparkplug decoder needs them")
    where = Path(os.environ.get("SPARKPLUG_JS_DIR", Path(tempfile.gettempdir()) / "shopfloor-sparkplug-js"))
    if not (where / "node_modules" / "sparkplug-payload").is_dir():
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(where), NPM_PACKAGE],
                       check=True, timeout=180, capture_output=True)
    out = subprocess.run([node, "-e", NODE_DECODER], cwd=where, check=True, timeout=30, capture_output=True,
                         input=json.dumps([base64.b64encode(b).decode() for b in payloads]).encode())
    decoded: list[dict[str, Any]] = json.loads(out.stdout)
    return decoded


def kind(m: Message) -> str:
    return m.topic.split("/")[2]


def device(m: Message) -> str | None:
    parts = m.topic.split("/")
    return parts[4] if len(parts) > 4 else None


def decode(m: Message) -> Any:
    return pb.Payload.FromString(m.payload)


def metric(p: Any, name: str) -> Any:
    found = [x for x in p.metrics if x.name == name]
    assert len(found) == 1, f"{name} not in {p}"
    return found[0]


def value(x: Any) -> Any:
    return None if x.is_null else getattr(x, x.WhichOneof("value"))


def spb(rec: Recorder) -> list[Message]:
    with rec.lock:
        return [m for m in rec.messages if m.topic.startswith(PREFIX)]


def check_session(msgs: list[Message]) -> int:
    """From one NBIRTH on: seq 0, 1, ... 255, 0, ...; data only by alias, only changed values. Returns the count."""
    assert kind(msgs[0]) == "NBIRTH"
    aliases: dict[str, set[int]] = {}
    last: dict[int, Any] = {}
    expected = 0
    for m in msgs:
        p = decode(m)
        if kind(m) in ("NDEATH", "NCMD"):
            continue
        assert p.HasField("seq") and p.seq == expected, f"{m.topic}: seq {p.seq}, expected {expected}"
        expected = (expected + 1) % 256
        if kind(m) == "DBIRTH":
            for x in p.metrics:
                assert x.name and x.HasField("alias") and x.HasField("datatype"), x
                last[x.alias] = value(x)
            aliases[device(m)] = {x.alias for x in p.metrics}  # type: ignore[index]
        elif kind(m) == "DDATA":
            assert p.metrics, "an empty DDATA"
            for x in p.metrics:
                assert not x.name and x.HasField("alias"), f"DDATA metric with a name: {x}"
                assert x.alias in aliases[device(m)], f"alias {x.alias} not born for {device(m)}"  # type: ignore[index]
                if not x.is_historical:
                    assert value(x) != last.get(x.alias), f"unchanged value sent again: {x}"
                    last[x.alias] = value(x)
    return len(msgs)


def sessions(msgs: list[Message]) -> list[list[Message]]:
    out: list[list[Message]] = []
    for m in msgs:
        if kind(m) == "NBIRTH":
            out.append([])
        if out:
            out[-1].append(m)
    return out


async def test_sparkplug_edge_node(broker: MosquittoProcess, state_dir: Path) -> None:
    (state_dir / "sparkplug.json").write_text(json.dumps({"next_bdseq": 255}))  # the next connection wraps
    data = load_config(state_dir, broker.port, devices=2, interval=0.05)
    data["mqtt"]["format"] = "sparkplug"
    data["mqtt"]["sparkplug"] = {"group_id": GROUP, "edge_node_id": NODE}
    for dev in data["devices"]:
        dev["simulate"]["update_interval"] = 0.05  # new values at every poll: seq wraps within seconds
    cfg = parse_config(data)
    rec = Recorder(broker.host, broker.port, topic="spBv1.0/#")
    workshop = Workshop(cfg)
    await workshop.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    try:
        # -- session 1: births, then enough data for seq to wrap
        await rec.wait_for(lambda: len(spb(rec)) > 300, 30, "300 Sparkplug messages")
        first = sessions(spb(rec))[0]
        nbirth = decode(first[0])
        assert first[0].topic == f"{PREFIX}/NBIRTH/{NODE}" and not first[0].retain
        assert nbirth.seq == 0 and value(metric(nbirth, "bdSeq")) == 255
        rebirth = metric(nbirth, "Node Control/Rebirth")
        assert rebirth.datatype == BOOLEAN and rebirth.boolean_value is False and rebirth.HasField("alias")
        dbirths = {device(m): decode(m) for m in first if kind(m) == "DBIRTH"}
        assert set(dbirths) == {"m00", "m01"}
        born = {x.name: x for x in dbirths["m00"].metrics}
        assert set(born) == {"state", "temp", "count", "pressure", "speed"}
        assert born["temp"].datatype == DOUBLE and born["count"].datatype == INT64
        assert value(born["state"]) == 1 and [p for p in born["temp"].properties.keys] == ["engUnit"]
        state_alias = born["state"].alias
        seqs = [decode(m).seq for m in first]
        assert seqs[:256] == list(range(256)) and seqs[256] == 0, "seq must wrap from 255 to 0"
        check_session(first)
        live = [decode(m) for m in first if kind(m) == "DDATA"]
        assert all(x.alias != state_alias for p in live for x in p.metrics), "the constant state tag was resent"

        # -- the link dies without DISCONNECT: the broker publishes the will, then a new session with bdSeq 0
        sock = collector.mqtt.client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        await rec.wait_for(lambda: len(sessions(spb(rec))) >= 2 and any(
            kind(m) == "DDATA" and any(x.is_historical for x in decode(m).metrics) for m in sessions(spb(rec))[1]),
            20, "a second session with historical data")
        deaths = [m for m in spb(rec) if kind(m) == "NDEATH"]
        will = decode(deaths[0])
        assert deaths[0].topic == f"{PREFIX}/NDEATH/{NODE}"
        assert [x.name for x in will.metrics] == ["bdSeq"] and value(will.metrics[0]) == 255
        assert not will.HasField("seq"), "NDEATH carries no seq"
        second = sessions(spb(rec))[1]
        assert decode(second[0]).seq == 0 and value(metric(decode(second[0]), "bdSeq")) == 0
        assert json.loads((state_dir / "sparkplug.json").read_text())["next_bdseq"] == 1

        # -- a stopped simulated device: DDEATH
        await workshop.stop_device("m01")
        await rec.wait_for(lambda: any(m.topic == f"{PREFIX}/DDEATH/{NODE}/m01" for m in spb(rec)), 20,
                           "DDEATH of m01")
        assert collector.status.devices["m01"].state == "offline"

        # -- a host asks for a rebirth: NBIRTH with the same bdSeq, DBIRTH of the online device only
        host = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-host")
        host.connect(broker.host, broker.port)
        host.loop_start()
        cmd = pb.Payload(timestamp=1)
        cmd.metrics.add(name="Node Control/Rebirth", datatype=BOOLEAN, boolean_value=True)
        host.publish(f"{PREFIX}/NCMD/{NODE}", cmd.SerializeToString(), qos=1).wait_for_publish(5)
        await rec.wait_for(lambda: len(sessions(spb(rec))) >= 3 and any(
            kind(m) == "DBIRTH" for m in sessions(spb(rec))[2]), 15, "rebirth")
        host.loop_stop()
        host.disconnect()
        third = sessions(spb(rec))[2]
        assert decode(third[0]).seq == 0 and value(metric(decode(third[0]), "bdSeq")) == 0
        assert {device(m) for m in third if kind(m) == "DBIRTH"} == {"m00"}
        await asyncio.sleep(0.5)
    finally:
        await collector.stop()
        await workshop.stop()
    await rec.wait_for(lambda: len([m for m in spb(rec) if kind(m) == "NDEATH"]) >= 2, 10, "NDEATH at stop")
    rec.close()
    all_sessions = sessions(spb(rec))
    for s in all_sessions[1:]:
        check_session(s)
    last_death = decode([m for m in spb(rec) if kind(m) == "NDEATH"][-1])
    assert value(metric(last_death, "bdSeq")) == 0
    check_with_tahu(spb(rec))


def check_with_tahu(msgs: list[Message]) -> None:
    """The same messages through an independent decoder: one of each type, plus a historical DDATA."""
    samples: dict[str, Message] = {}
    for m in msgs:
        if device(m) in (None, "m00") or kind(m) == "DDEATH":  # births and data of one device: same aliases
            samples.setdefault(kind(m), m)
        if kind(m) == "DDATA" and device(m) == "m00" and any(x.is_historical for x in decode(m).metrics):
            samples.setdefault("DDATA historical", m)
    assert set(samples) >= {"NBIRTH", "DBIRTH", "DDATA", "DDATA historical", "DDEATH", "NDEATH"}, set(samples)
    names = list(samples)
    theirs = dict(zip(names, tahu_decode([samples[k].payload for k in names]), strict=True))
    for k in names:
        ours = decode(samples[k])
        assert theirs[k].get("seq") == (ours.seq if ours.HasField("seq") else None), k
        assert len(theirs[k].get("metrics", [])) == len(ours.metrics), k
    nbirth = {x["name"]: x for x in theirs["NBIRTH"]["metrics"]}
    assert nbirth["bdSeq"]["type"] == "Int64" and nbirth["bdSeq"]["value"] == 255
    assert nbirth["Node Control/Rebirth"] == {"name": "Node Control/Rebirth", "alias": 1, "type": "Boolean",
                                              "value": False}
    assert [x["name"] for x in theirs["NDEATH"]["metrics"]] == ["bdSeq"] and "seq" not in theirs["NDEATH"]
    dbirth = {x["name"]: x for x in theirs["DBIRTH"]["metrics"]}
    assert dbirth["temp"]["type"] == "Double" and dbirth["temp"]["properties"]["engUnit"]["value"] == "°C"
    assert dbirth["count"]["type"] == "Int64" and isinstance(dbirth["count"]["value"], int)
    aliases = {x["alias"] for x in dbirth.values()}
    for k in ("DDATA", "DDATA historical"):
        for x in theirs[k]["metrics"]:
            assert "name" not in x and x["alias"] in aliases, x
            assert x.get("isHistorical", False) is (k == "DDATA historical"), x


async def test_primary_host_state_gates_the_births(broker: MosquittoProcess, state_dir: Path) -> None:
    """Sparkplug 3.0 with `primary_host_id`: no NBIRTH until the host's STATE says online; when it goes offline
    the node sends NDEATH and starts a new session that waits again; a STATE older than one seen is ignored;
    what was read meanwhile arrives afterwards as historical data."""
    data = load_config(state_dir, broker.port, devices=1, interval=0.1)
    data["mqtt"]["format"] = "sparkplug"
    data["mqtt"]["sparkplug"] = {"group_id": GROUP, "edge_node_id": NODE, "primary_host_id": "scada"}
    cfg = parse_config(data)
    rec = Recorder(broker.host, broker.port, topic="spBv1.0/#")
    host = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scada")
    host.connect(broker.host, broker.port)
    host.loop_start()

    def state(online: bool, ts: int) -> None:
        host.publish("spBv1.0/STATE/scada", json.dumps({"online": online, "timestamp": ts}), qos=1,
                     retain=True).wait_for_publish(5)

    def of(k: str) -> list[Message]:
        return [m for m in spb(rec) if kind(m) == k]

    workshop = Workshop(cfg)
    await workshop.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    try:
        await asyncio.sleep(2.0)
        assert spb(rec) == [], "born before the primary host was online"
        assert collector.outbox.queues["sparkplug"].readings > 0  # polled meanwhile, kept

        state(True, 1000)
        await rec.wait_for(lambda: any(kind(m) == "DDATA" and any(x.is_historical for x in decode(m).metrics)
                                       for m in spb(rec)), 15, "historical DDATA after the host came online")
        first_bdseq = value(metric(decode(of("NBIRTH")[0]), "bdSeq"))

        state(False, 2000)
        await rec.wait_for(lambda: len(of("NDEATH")) == 1, 10, "NDEATH when the host went offline")
        death = of("NDEATH")[0]
        assert value(metric(decode(death), "bdSeq")) == first_bdseq  # the session that was born ends
        await asyncio.sleep(1.5)
        state(True, 1500)  # stale: older than the offline STATE
        await asyncio.sleep(1.5)
        assert len(of("NBIRTH")) == 1, "born on a stale STATE"
        after_death = spb(rec)[spb(rec).index(death) + 1:]
        assert [kind(m) for m in after_death] == [], "published while the host was offline"

        state(True, 3000)
        await rec.wait_for(lambda: len(of("NBIRTH")) == 2 and any(
            kind(m) == "DDATA" and any(x.is_historical for x in decode(m).metrics)
            for m in sessions(spb(rec))[1]), 15, "a new session with the data read while the host was away")
        second = sessions(spb(rec))[1]
        assert value(metric(decode(second[0]), "bdSeq")) == (first_bdseq + 1) % 256
        check_session(second)
        assert collector.sink.stats()["sparkplug"]["messages"]["STATE stale"] == 1
    finally:
        await collector.stop()
        await workshop.stop()
        host.publish("spBv1.0/STATE/scada", b"", qos=1, retain=True).wait_for_publish(5)  # clear the retained
        host.loop_stop()
        host.disconnect()
        rec.close()
