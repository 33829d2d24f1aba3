"""The enterprise side of the hub, end to end with real parts only: a mosquitto with the shipped ACL and a
password file, a real PostgreSQL, one `collector hub run` process, Modbus simulators (over real TCP, in the
test's loop) and three `collector run` processes of two enterprises publishing through their outboxes to the hub's broker.

Each collector's state store is seeded with the last hour of the last closed month (collector/demo_city.py), so
its start closes that month at once: the key record and the monthly summary go to the hub within seconds. A
fourth collector, configured with another enterprise's id as its topic level, is refused by the broker."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zoneinfo
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from collector.cli import main
from collector.config import parse_config
from collector.demo_city import seed_closed_month
from collector.evidence import hub_anchors, keys
from collector.evidence.canonical import canonical
from collector.evidence.receipts import make_receipt
from collector.evidence.records import sign_record
from collector.indicators import chain
from simulators.workshop import Workshop
from tests.hubsupport import HubProcess, acl_broker, hub_yaml, secret_file
from tests.hubsupport import pg_url as pg_url  # noqa: F401  (fixture)
from tests.support.broker import MosquittoProcess, free_port

pytestmark = pytest.mark.integration
A, B = "91330402MA2B3C4D53", "91330411MA2B3C4D67"
PW = {"hub": "hub-secret", A: "a-secret", B: "b-secret"}
TAGS = [{"name": "state", "register": 40001, "type": "uint16", "sim": {"kind": "state"}},
        {"name": "count", "register": 40021, "type": "uint32", "sim": {"kind": "counter", "rate": 5}}]
# (name, enterprise id, credit code, workshop, devices: (id, is_cnc, share of the seeded hour online))
COLLECTORS = [
    ("machining", "jx-hengda", A, "ws-machining", [("m1", True, 1.0), ("m2", True, 0.5)]),
    ("assembly", "jx-hengda", A, "ws-assembly", [("a1", False, 1.0), ("a2", True, 1.0)]),
    ("xiuzhou", "jx-xiuzhou", B, "ws-1", [("x1", True, 1.0), ("x2", False, 0.0)]),
]


async def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = cond()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def collector_config(tmp: Path, name: str, enterprise: str, code: str, workshop: str, devices: list[Any],
                     hub_port: int, hub_pub: Path, *, username: str | None = None,
                     topic_level: str | None = None, password: str | None = None) -> dict[str, Any]:
    secret = tmp / f"{name}-hub-password"
    secret.write_text((password or PW[username or code]) + "\n")
    secret.chmod(0o600)
    hub: dict[str, Any] = {"url": f"mqtt://127.0.0.1:{hub_port}", "password_file": str(secret), "live_interval": 1,
                           "public_key": str(hub_pub), "fingerprint": keys.show_fingerprint(
                               keys.fingerprint(keys.load_public(str(hub_pub))))}
    if username:
        hub["username"] = username
    if topic_level:
        hub["enterprise"] = topic_level
    return {
        "site": {"enterprise_id": enterprise, "credit_code": code, "workshop": workshop},
        # the enterprise's own broker is away all along: its data waits in its outbox, the hub link is separate
        "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}", "reconnect_max_delay": 1},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "state_dir": str(tmp / f"{name}-state"),
        "indicators": {"bucket": 10, "publish_interval": 5, "allow_simulated": True},
        "evidence": {"hub": hub},
        "devices": [{"id": d, "protocol": "modbus", "endpoint": f"tcp://127.0.0.1:{free_port()}", "interval": 0.5,
                     "tags": TAGS, "asset": {"is_cnc": cnc}, "simulate": {"states": {"running": 1.0}}}
                    for d, cnc, _ in devices],
    }


def stored(db_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return [tuple(r) for r in conn.execute(sql, args).fetchall()]


def collector_run(config: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`collector run` as its own process, its log in `log`."""
    with open(log, "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "collector.cli", "run", "-c", str(config)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """A `collector` command in this process (the CLI's own `main`): exit code and what it printed."""
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
async def city(tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[dict[str, Any]]:  # noqa: F811
    broker = acl_broker(tmp_path, PW)
    secret = secret_file(tmp_path / "hub-password", PW["hub"])
    hub_state = tmp_path / "hub-state"
    hub_cfg = hub_yaml(tmp_path / "hub.yaml", db_url=pg_url, port=broker.port, state_dir=hub_state,
                       client_id="hub-1", pw_file=secret, http_port=None,
                       count_simulated=True)  # the collectors read simulators (allow_simulated): pool them
    procs: dict[str, subprocess.Popen[bytes]] = {}
    hub = HubProcess(hub_cfg, tmp_path / "hub.log")
    workshop = None
    try:
        keys.init(hub_state)  # what `collector hub key` makes: the hub's receipt key, its public half for all
        hub_pub = hub_state / keys.PUBLIC_FILE
        configs: dict[str, dict[str, Any]] = {}
        for name, ent, code, ws, devices in COLLECTORS:
            configs[name] = collector_config(tmp_path, name, ent, code, ws, devices, broker.port, hub_pub)
        # a collector of 恒达 (its own credentials) that names 秀洲's credit code as its topic level
        configs["rogue"] = collector_config(tmp_path, "rogue", "jx-hengda", A, "ws-rogue", [], broker.port, hub_pub,
                                            username=A, topic_level=B)
        rows = []
        for name, data in configs.items():
            state = Path(data["state_dir"])
            signer, _ = keys.init(state)  # `collector keys init`: the enterprise enrols its public key
            online = {d: share for n, *_, devs in COLLECTORS if n == name for d, _, share in devs}
            seed_closed_month(state, 10, online)
            if name != "rogue":
                ent_name = "恒达机械" if data["site"]["credit_code"] == A else "秀洲精工"
                county = "南湖区" if data["site"]["credit_code"] == A else "秀洲区"
                rows.append(f"{data['site']['credit_code']},{ent_name},{county},通用设备制造业,是,"
                            f"{keys.public_b64(signer.public)},{data['site']['enterprise_id']}\n")
            (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        csv = tmp_path / "enterprises.csv"
        csv.write_text("统一社会信用代码,企业名称,县（市、区）,行业,行业骨干企业,公钥,采集器企业标识\n" + "".join(rows),
                       encoding="utf-8")
        code, out = cli(capsys, "hub", "enroll", "-c", str(hub_cfg), str(csv))
        assert code == 0, out
        hub.start()
        workshop = Workshop(parse_config({"site": {"enterprise_id": "sim"}, "state_dir": str(tmp_path / "sim"),
                                          "devices": [d for c in configs.values() for d in c["devices"]]}))
        await workshop.start()
        env = {**os.environ, "COLLECTOR_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
        logs = {}
        for name in configs:
            logs[name] = tmp_path / f"{name}.log"
            procs[name] = collector_run(tmp_path / f"{name}.yaml", logs[name], env)
        yield {"db": pg_url, "configs": configs, "logs": logs, "hub_cfg": hub_cfg, "hub_pub": hub_pub,
               "broker": broker, "tmp": tmp_path, "procs": procs, "env": env}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if workshop is not None:
            await workshop.stop()
        hub.stop()
        broker.stop()


def fetch(city: dict[str, Any], name: str, path: str) -> str:
    """GET `path` from the collector's HTTP API (on loopback: no token)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{city['configs'][name]['http']['listen']}{path}", timeout=10) as r:
        return str(r.read().decode())


def status(city: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(json.loads(fetch(city, name, "/api/status")))


def state_of(city: dict[str, Any], name: str) -> Path:
    return Path(city["configs"][name]["state_dir"])


def anchored(city: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return hub_anchors.anchors(state_of(city, name) / hub_anchors.HUB_FILE)


async def test_three_collectors_of_two_enterprises_feed_the_hub_and_keep_its_receipts(
        city: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    db = city["db"]
    names = [c[0] for c in COLLECTORS]
    # each collector's key record and monthly summary, accepted by the hub, and its receipts kept as anchors
    await wait_for(lambda: all(len({e["seq"] for e in anchored(city, n)}) == 2 for n in names), timeout=30,
                   what="two hub anchors at each collector")
    held = stored(db, "SELECT enterprise_id, workshop, seq, hash, body_kind FROM records ORDER BY 1, 2, 3")
    expected = []
    for name, _, code, ws, _ in COLLECTORS:
        records = chain.read(state_of(city, name) / chain.CHAIN_FILE)
        assert [r["body"]["kind"] for r in records] == ["key", "monthly_summary"]
        expected += [(code, ws, r["seq"], r["hash"], r["body"]["kind"]) for r in records]
        kept = anchored(city, name)
        assert {(e["seq"], e["hash"]) for e in kept} == {(r["seq"], r["hash"]) for r in records}
        assert {e["hub"] for e in kept} == {"test-hub"}
        # `collector verify` checks the chain, then each hub anchor: the hub's signature and the record it names
        code, out = cli(capsys, "verify", str(state_of(city, name) / chain.CHAIN_FILE), "--hub-key",
                        str(city["hub_pub"]))
        assert code == 0 and "2 of 2 hub anchor(s) verify and match the chain" in out, out
    assert sorted(held) == sorted(expected)  # six records; nothing of the rogue collector, nothing twice

    # each collector's signed live snapshot (here once a second: evidence.hub.live_interval), the newest kept; the
    # rogue's are dropped by the broker's ACL (QoS 0: no PUBACK to refuse)
    live = await wait_for(lambda: len(rows := stored(db, "SELECT enterprise_id, workshop, figures->'D2' FROM live "
                                                         "ORDER BY 1, 2")) == 3 and rows, what="three live snapshots")
    assert [(e, w) for e, w, _ in live] == sorted((code, ws) for _, _, code, ws, _ in COLLECTORS)
    assert all(set(d2) == {"numerator", "denominator"} for _, _, d2 in live)
    assert status(city, "machining")["hub"]["live_sent"] >= 1

    # the enterprise's report of that month shows the hub's receipt for its record
    summary = chain.read(state_of(city, "machining") / chain.CHAIN_FILE)[-1]
    period = summary["body"]["period"]["label"]
    out_dir = city["tmp"] / "report"
    code, out = cli(capsys, "report", "-c", str(city["tmp"] / "machining.yaml"), "--period", period, "--format",
                    "json,html", "--out", str(out_dir))
    assert code == 0, out
    footer = json.loads((out_dir / f"report-{period}.json").read_text(encoding="utf-8"))["evidence"]
    assert [(a["seq"], a["hash"], a["status"], a["hub"]) for a in footer["hub_anchors"]] == [
        (2, summary["hash"], "accepted", "test-hub")]
    page = (out_dir / f"report-{period}.html").read_text(encoding="utf-8")
    assert "市级平台回执" in page and keys.show_fingerprint(footer["hub_anchors"][0]["hub_key"]) in page

    # the rogue collector publishes under 秀洲's id with 恒达's credentials: the broker refuses every message
    rogue_log = city["logs"]["rogue"]
    await wait_for(lambda: "event=hub_refused" in rogue_log.read_text(errors="replace"), what="the refusal")
    text = rogue_log.read_text(errors="replace")
    assert text.count("event=hub_refused") == 1 and "Not authorized" in text
    assert stored(db, "SELECT count(*) FROM records WHERE workshop = 'ws-rogue'") == [(0,)]
    assert stored(db, "SELECT count(*) FROM incidents") == [(0,)]
    assert not anchored(city, "rogue")
    with sqlite3.connect(state_of(city, "rogue") / "outbox.db") as conn:  # kept for a fixed config's next start
        assert conn.execute("SELECT count(*) FROM q_hub").fetchone() == (3,)  # key record, summary, head
    # mosquitto 2.0 also drops the connection at each refusal: the three arrive one reconnect after the other
    hub = await wait_for(lambda: (h := status(city, "rogue")["hub"])["held_back"] == 3 and h, what="3 held back")
    assert hub["refused"] == 3 and hub["in_flight"] == 0 and hub["last_refusal"] == "Not authorized"
    metrics = await asyncio.to_thread(fetch, city, "rogue", "/metrics")
    assert 'shopfloor_sink_refused_total{sink="hub"} 3.0' in metrics

    # a receipt the hub's key did not sign (the hub user forging one for 恒达's head) is refused and counted
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    head = chain.read(state_of(city, "machining") / chain.CHAIN_FILE)[-1]
    forger = keys.Signer(keys.generate())
    fake = make_receipt(forger, hub="test-hub", enterprise=A, workshop="ws-machining", seq=head["seq"] + 1,
                        record_hash="f" * 64, status="accepted", reason=None, received_at="2026-12-01T00:00:00Z")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="forger", protocol=mqtt.MQTTv5)
    c.username_pw_set("hub", PW["hub"])
    c.connect("127.0.0.1", city["broker"].port)
    c.loop_start()
    try:
        for _ in range(2):
            c.publish(f"cityhub/{A}/receipt", json.dumps(fake), qos=1).wait_for_publish(5)
        log = city["logs"]["machining"]
        await wait_for(lambda: "event=hub_receipt_refused" in log.read_text(errors="replace"), what="the refusal")
    finally:
        c.loop_stop()
        c.disconnect()
    await asyncio.sleep(0.5)
    assert log.read_text(errors="replace").count("event=hub_receipt_refused") == 1  # logged once, counted
    assert {e["seq"] for e in anchored(city, "machining")} == {1, 2}  # not kept
    # the key record, the summary and the head (the summary's again: a duplicate gets the first receipt again);
    # the assembly collector's receipts come on the same topic (one enterprise) and are skipped, not kept
    receipts = await wait_for(lambda: (r := status(city, "machining")["hub"]["receipts"])["accepted"] == 3 and r,
                              what="the head's receipt")
    assert receipts["bad_signature"] == 2 and receipts["unknown_record"] == 0
    metrics = await asyncio.to_thread(fetch, city, "machining", "/metrics")
    assert 'shopfloor_hub_receipts_total{outcome="bad_signature"} 2.0' in metrics

    # the hub's bulletin holds both enterprises' month, pooled from the collectors' own summaries
    summaries = {n: chain.read(state_of(city, n) / chain.CHAIN_FILE)[-1]["body"] for n in names}
    code, out = cli(capsys, "hub", "bulletin", "-c", str(city["hub_cfg"]), "--period", period, "--format", "json")
    assert code == 0, out
    bulletin = json.loads(out)
    by_county = {b["name"]: b for b in bulletin["counties"]}
    assert bulletin["banner"] == "含模拟设备，不可用于评价"  # their identities say simulator: every output says so
    assert len(bulletin["total"]["simulated"]) == 2

    def pooled(ns: list[str], d: str) -> tuple[int, int]:
        figs = [summaries[n]["figures"][d] for n in ns]
        return sum(f["numerator"] for f in figs), sum(f["denominator"] for f in figs)

    for county, ns in (("南湖区", ["machining", "assembly"]), ("秀洲区", ["xiuzhou"])):
        for d in ("D1", "D2"):
            f = by_county[county]["figures"][d]
            assert (f["numerator"], f["denominator"]) == pooled(ns, d), (county, d)
    assert pooled(["machining", "assembly"], "D1") == (3, 4) and pooled(["xiuzhou"], "D2") == (1, 2)
    assert by_county["秀洲区"]["anomalies"] == []

    # 秀洲 stops its collector, rewrites its closed month with better figures, re-signed with its own enrolled
    # key, and starts it again: the collector gives the hub the whole chain again, the hub refuses the rewritten
    # record (数据异常) and says so in a receipt the collector keeps; the hub's anchor no longer matches the chain
    proc = city["procs"]["xiuzhou"]
    proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 15)
    state = state_of(city, "xiuzhou")
    signer = keys.load(state)
    assert signer is not None
    records = chain.read(state / chain.CHAIN_FILE)
    real = records[-1]
    better = json.loads(json.dumps(real["body"]))
    better["figures"]["D2"]["numerator"] = better["figures"]["D2"]["denominator"]
    records[-1] = sign_record(signer, enterprise=real["enterprise"], workshop=real["workshop"], seq=real["seq"],
                              ts=real["ts"], prev=real["prev"], body=better)
    (state / chain.CHAIN_FILE).write_bytes(b"".join(canonical(r) + b"\n" for r in records))
    city["procs"]["xiuzhou-again"] = collector_run(city["tmp"] / "xiuzhou.yaml", city["tmp"] / "xiuzhou-2.log",
                                                   city["env"])
    kept = await wait_for(lambda: [e for e in hub_anchors.entries(state / hub_anchors.HUB_FILE)
                                   if e["status"] == "incident"], timeout=30, what="the hub's incident receipt")
    assert kept[0]["seq"] == real["seq"] and kept[0]["hash"] == records[-1]["hash"]
    assert "rewritten history" in kept[0]["reason"]
    assert "event=chain_replaced" in (city["tmp"] / "xiuzhou-2.log").read_text(errors="replace")
    code, out = cli(capsys, "verify", str(state / chain.CHAIN_FILE), "--hub-key", str(city["hub_pub"]))
    assert code == 1 and "rewritten after the hub received it" in out and "incident by hub test-hub" in out, out
    assert stored(db, "SELECT (body->'figures'->'D2'->>'numerator')::int FROM records WHERE enterprise_id = %s "
                      "AND seq = %s", B, real["seq"]) == [(1,)]  # the hub keeps the month it received first
    # a bulletin lists the incidents about a record of its month and those received from its month's start to
    # the next month's end: the rewritten month's bulletin and the one of the month the incident came in (today)
    # show 秀洲 as 数据异常
    from collector.hub.bulletin import shift

    now = dt.datetime.now(zoneinfo.ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")  # the hub's months are local
    for p in sorted({shift(now, -1), now, period}):
        code, out = cli(capsys, "hub", "bulletin", "-c", str(city["hub_cfg"]), "--period", p, "--format", "json")
        assert code == 0, out
        by_county = {b["name"]: b for b in json.loads(out)["counties"]}
        assert [e["id"] for e in by_county["秀洲区"]["anomalies"]] == [B], p
        assert by_county["南湖区"]["anomalies"] == []


async def test_a_dead_hub_broker_only_fills_the_hub_queue_of_the_outbox(tmp_path: Path) -> None:
    """No hub broker at first: the records and the head wait in `q_hub`; the enterprise's own broker gets its
    anchor all the same; when a broker answers on the hub's address, the queue drains (with MQTT 5 PUBACKs)."""
    from collector.app import Collector
    from collector.config import Settings
    from tests.conftest import Recorder

    own = MosquittoProcess(free_port())
    own.start()
    hub_port = free_port()
    hub_pub = tmp_path / "hub" / keys.PUBLIC_FILE
    keys.init(tmp_path / "hub")
    data = collector_config(tmp_path, "machining", "jx-hengda", A, "ws-machining", [], hub_port, hub_pub)
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{own.port}"
    seed_closed_month(Path(data["state_dir"]), 10, {})
    # the hub's broker knows a subscriber (persistent session) before it goes away: it keeps what arrives later
    hub_broker = MosquittoProcess(hub_port, persistence_dir=tmp_path)
    hub_broker.start()
    topic = f"cityhub/{A}/evidence/#"
    Recorder(hub_broker.host, hub_port, topic=topic, client_id="seen", clean_session=False).close()
    hub_broker.stop()
    rec = Recorder(own.host, own.port, topic="factory/jx-hengda/ws-machining/evidence/head")
    collector = Collector(parse_config(data), Settings())
    await collector.start()
    try:
        assert collector.hub is not None and not collector.hub.connected
        assert collector.outbox.stats("hub")["depth_batches"] == 3  # key record, monthly summary, head
        await wait_for(lambda: rec.on("evidence/head"), what="the anchor on the enterprise's own broker")
        hub_broker.start()
        await wait_for(lambda: collector.outbox.stats("hub")["depth_batches"] == 0, what="the hub queue to drain")
        seen = Recorder(hub_broker.host, hub_port, topic=topic, client_id="seen", clean_session=False)
        try:
            await wait_for(lambda: len(seen.messages) == 3, what="the three messages at the hub's broker")
            kinds = [(m.topic.rsplit("/", 1)[-1], m.json().get("kind"), m.json()["seq"]) for m in seen.messages]
            assert kinds == [("record", None, 1), ("record", None, 2), ("head", "evidence_head", 2)]
        finally:
            seen.close()
    finally:
        await collector.stop()
        rec.close()
        own.stop()
        hub_broker.stop()


async def test_the_hub_link_speaks_tls_with_the_configured_ca(tmp_path: Path) -> None:
    """`evidence.hub.url: mqtts://…` with `ca_file`: the certificate is checked and the records go over TLS."""
    from collector.app import Collector
    from collector.config import Settings
    from tests.test_mqtt_tls import make_ca, make_server_cert

    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca("hub CA", pki / "ca.pem")
    make_server_cert(ca, ["hub.test"], pki / "server.pem", pki / "server.key")
    broker = MosquittoProcess(free_port(), listener_options=[
        f"cafile {pki / 'ca.pem'}", f"certfile {pki / 'server.pem'}", f"keyfile {pki / 'server.key'}"])
    broker.start()
    keys.init(tmp_path / "hub")
    data = collector_config(tmp_path, "machining", "jx-hengda", A, "ws-machining", [], broker.port,
                            tmp_path / "hub" / keys.PUBLIC_FILE)
    data["evidence"]["hub"]["url"] = f"127.0.0.1:{broker.port}"  # no scheme: TLS
    data["evidence"]["hub"]["ca_file"] = str(pki / "ca.pem")
    seed_closed_month(Path(data["state_dir"]), 10, {})
    cfg = parse_config(data)
    assert cfg.evidence.hub is not None and cfg.evidence.hub.scheme == "mqtts"
    collector = Collector(cfg, Settings())
    await collector.start()
    try:
        await wait_for(lambda: collector.outbox.stats("hub")["depth_batches"] == 0, what="the records over TLS")
        assert collector.hub is not None and collector.hub.conn.s.tls and collector.hub.connected
    finally:
        await collector.stop()
        broker.stop()


async def test_a_wrong_hub_password_is_refused_and_said_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The hub's broker refuses the connection (CONNACK): the collector says which broker and what to check, and
    the records wait in the outbox."""
    import logging

    from collector.app import Collector
    from collector.config import Settings

    broker = acl_broker(tmp_path, PW, persistent=False)
    keys.init(tmp_path / "hub")
    data = collector_config(tmp_path, "machining", "jx-hengda", A, "ws-machining", [], broker.port,
                            tmp_path / "hub" / keys.PUBLIC_FILE, password="not-the-password")
    seed_closed_month(Path(data["state_dir"]), 10, {})
    caplog.set_level(logging.WARNING, logger="collector.sinks.mqtt")
    collector = Collector(parse_config(data), Settings())
    await collector.start()
    try:
        line = await wait_for(lambda: [r.getMessage() for r in caplog.records if "sink=hub event=connect_refused"
                                       in r.getMessage()], what="the refusal")
        assert f"port={broker.port}" in line[0] and "check the user name and password" in line[0]
        assert "not-the-password" not in caplog.text  # the password is never logged
        assert collector.hub is not None and not collector.hub.connected
        assert collector.outbox.stats("hub")["depth_batches"] == 3
    finally:
        await collector.stop()
        broker.stop()
