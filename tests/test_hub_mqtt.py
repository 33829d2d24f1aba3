"""The hub end to end: a real mosquitto with the shipped ACL and a password file, a real PostgreSQL, two
`collector hub run` processes on one shared subscription, two enterprises with three collectors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector.evidence.keys import load_public
from collector.evidence.records import sign_record
from collector.hub.receipts import verify_receipt
from tests.hubsupport import (
    ROOT,
    Collector,
    Enterprise,
    HubProcess,
    acl_broker,
    hub_yaml,
    month_body,
    pg_url,  # noqa: F401  (fixture)
    secret_file,
)
from tests.support.broker import MosquittoProcess, free_port

pytestmark = pytest.mark.integration
A, B = "91330402MA2B3C4D53", "91330411MA2B3C4D67"
PW = {"hub": "hub-secret", A: "a-secret", B: "b-secret"}


async def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = cond()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector.cli", "hub", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def city(tmp_path: Path, pg_url: str) -> Iterator[dict[str, Any]]:  # noqa: F811
    broker = acl_broker(tmp_path, PW, extra=("max_queued_messages 100000",))
    secret = secret_file(tmp_path / "hub-password", PW["hub"])
    state = tmp_path / "hub-state"
    configs = [hub_yaml(tmp_path / f"hub{i}.yaml", db_url=pg_url, port=broker.port, state_dir=state,
                        client_id=f"hub-{i}", pw_file=secret, http_port=free_port() if i == 1 else None)
               for i in (1, 2)]
    collectors = [Collector("jx-hengda", "ws-machining"), Collector("jx-hengda", "ws-assembly"),
                  Collector("jx-xiuzhou", "ws-1")]
    csv = tmp_path / "enterprises.csv"
    csv.write_text("统一社会信用代码,企业名称,县（市、区）,行业,行业骨干企业,公钥,采集器企业标识\n" + "".join(
        f"{A if c.enterprise == 'jx-hengda' else B},{'恒达机械' if c.enterprise == 'jx-hengda' else '秀洲精工'},"
        f"{'南湖区' if c.enterprise == 'jx-hengda' else '秀洲区'},通用设备制造业,是,{c.public_key},{c.enterprise}\n"
        for c in collectors), encoding="utf-8")
    out = cli("enroll", "-c", str(configs[0]), str(csv))
    assert out.returncode == 0, out.stderr
    assert "2 enterprise(s): 2 new, 0 updated; 3 new key(s)" in out.stdout
    hubs = [HubProcess(cfg, tmp_path / f"hub{i}.log") for i, cfg in enumerate(configs, start=1)]
    for h in hubs:
        h.start()
    ents = {A: Enterprise(broker.port, A, PW[A]), B: Enterprise(broker.port, B, PW[B])}
    try:
        yield {"broker": broker, "hubs": hubs, "configs": configs, "collectors": collectors, "ents": ents,
               "db": pg_url, "hub_key": load_public(str(state / "evidence-key.pub")), "tmp": tmp_path}
    finally:
        for e in ents.values():
            e.close()
        for h in hubs:
            h.stop()
        broker.stop()


def stored(db_url: str, sql: str = "SELECT count(*) AS n FROM records", *args: Any) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(sql, args).fetchone()
        assert row is not None
        return int(row[0])


async def test_two_enterprises_three_collectors_end_to_end(city: dict[str, Any]) -> None:
    ents, hub_key, db_url = city["ents"], city["hub_key"], city["db"]
    machining, assembly, xiuzhou = city["collectors"]
    machining.close_month("2026-11", (5, 7), (4, 6))
    assembly.close_month("2026-11", (3, 4), (1, 4))
    xiuzhou.close_month("2026-11", (2, 5), (3, 5))
    sent = 0
    for c in city["collectors"]:
        ent = ents[A if c.enterprise == "jx-hengda" else B]
        for rec in c.records:
            ent.publish(rec)
            # the head as the outbox anchors it, under the topic a bridge maps it to: the same record, stored once
            ent.publish(c.anchor(rec), suffix=f"/{c.workshop}/evidence/head")
            sent += 1
    await wait_for(lambda: sum(len(e.receipts) for e in ents.values()) >= 2 * sent, what="every receipt")
    for c in city["collectors"]:
        ent = ents[A if c.enterprise == "jx-hengda" else B]
        for rec in c.records:
            got = ent.receipts_for(c.workshop, rec["seq"])
            assert len(got) == 2 and got[0] == got[1], got  # the duplicate gets the first receipt again
            assert got[0]["status"] == "accepted" and got[0]["hash"] == rec["hash"]
            assert verify_receipt(got[0], hub_key) is None
    assert stored(db_url) == sent == 6  # each record once, though each came twice

    # A tries to publish under B's id: the broker refuses it (MQTT 5 PUBACK 0x87) and the hub never sees it
    forged_for_b = sign_record(machining.signer, enterprise="jx-xiuzhou", workshop="ws-1", seq=3,
                               ts="2026-12-05T00:00:00+08:00", prev=xiuzhou.records[-1]["hash"],
                               body=month_body("jx-xiuzhou", "ws-1", "2026-12", (9, 9), (9, 9)))
    mid = ents[A].publish(forged_for_b, as_enterprise=B)
    rc = await wait_for(lambda: ents[A].acks.get(mid), what="the PUBACK")
    assert rc.value == 0x87 and "authorized" in str(rc).lower()
    # nor read B's evidence or receipts: mosquitto grants the subscription but delivers nothing the ACL denies
    for topic in (f"cityhub/{B}/receipt", "cityhub/+/evidence"):
        smid = ents[A].subscribe(topic)
        await wait_for(lambda smid=smid: ents[A].subacks.get(smid), what="the SUBACK")
    ents[B].publish(xiuzhou.records[0])  # again: B gets its receipt; A gets nothing of it
    await wait_for(lambda: len(ents[B].receipts_for("ws-1", 1)) == 3, what="B's third receipt")
    await asyncio.sleep(0.3)
    assert stored(db_url) == 6 and not [t for t in ents[A].topics if B in t]

    # A rewrites its closed November with better figures, re-signed with its own enrolled key
    real = machining.records[-1]
    rewritten = sign_record(machining.signer, enterprise="jx-hengda", workshop="ws-machining", seq=real["seq"],
                            ts=real["ts"], prev=real["prev"],
                            body=month_body("jx-hengda", "ws-machining", "2026-11", (7, 7), (6, 6)))
    ents[A].publish(rewritten)
    bad = await wait_for(lambda: [r for r in ents[A].receipts_for("ws-machining", real["seq"])
                                  if r["status"] == "incident"], what="the incident receipt")
    assert "rewritten history" in bad[0]["reason"] and verify_receipt(bad[0], hub_key) is None
    assert stored(db_url, "SELECT count(*) FROM incidents WHERE enterprise_id = %s", A) == 1
    assert stored(db_url, "SELECT (body->'figures'->'D2'->>'numerator')::int FROM records WHERE workshop = %s "
                          "AND seq = %s", "ws-machining", real["seq"]) == 4  # the held record is untouched

    # a message PostgreSQL cannot hold (a NUL in the workshop name) is refused alone; the batch around it is kept
    poison = sign_record(machining.signer, enterprise="jx-hengda", workshop="ws\u0000x", seq=1,
                         ts="2026-12-05T00:00:00+08:00", prev="0" * 64, body={"kind": "register"})
    ents[A].publish(poison)
    ents[A].publish(machining.records[0])
    await wait_for(lambda: [r for r in ents[A].receipts if r["status"] == "refused"], what="the poison's receipt")
    await wait_for(lambda: len(ents[A].receipts_for("ws-machining", 1)) == 3, what="the next message's receipt")
    refused = [r for r in ents[A].receipts if r["status"] == "refused"]
    assert len(refused) == 1 and "the database refused it" in refused[0]["reason"]
    assert stored(db_url) == 6

    out = cli("bulletin", "-c", str(city["configs"][0]), "--period", "2026-11", "--format", "json")
    assert out.returncode == 0, out.stderr
    bulletin = json.loads(out.stdout)
    by_county = {b["name"]: b for b in bulletin["counties"]}
    nanhu = by_county["南湖区"]
    assert [e["id"] for e in nanhu["anomalies"]] == [A]
    assert nanhu["figures"]["D2"]["numerator"] == 5 and nanhu["figures"]["D2"]["denominator"] == 10
    assert bulletin["total"]["figures"]["D1"]["numerator"] == 10
    assert bulletin["total"]["figures"]["D1"]["denominator"] == 16
    assert by_county["秀洲区"]["anomalies"] == []


async def test_killing_one_of_two_hub_processes_loses_no_record(city: dict[str, Any]) -> None:
    ents, db_url = city["ents"], city["db"]
    hub1, hub2 = city["hubs"]
    machining = city["collectors"][0]
    ents[A].publish(machining.records[0])
    await wait_for(lambda: ents[A].receipts, what="the key record's receipt")
    for day in range(1, 301):  # the running head, re-anchored: 300 more records of one chain
        machining.append({"kind": "register", "rows": day}, f"2026-10-{1 + day // 20:02d}T08:{day % 60:02d}:00+08:00")
    n = len(machining.records)
    # hold the chain's row lock, so both hub processes are caught with messages received but not yet stored
    with psycopg.connect(db_url) as blocker:
        blocker.execute("SELECT 1 FROM chains WHERE workshop = 'ws-machining' FOR UPDATE")
        for rec in machining.records[1:]:
            ents[A].publish(rec)

        def waiting() -> int:
            with psycopg.connect(db_url) as c:
                row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()
                return int(row[0]) if row else 0

        await wait_for(lambda: waiting() == 2, what="both hub processes waiting on the chain")
        hub1.kill()  # SIGKILL, with a batch in hand that it has neither stored nor acknowledged
    await wait_for(lambda: len({r["seq"] for r in ents[A].receipts}) > 1, what="hub 2 going on")
    await asyncio.sleep(2)
    before_restart = len({r["seq"] for r in ents[A].receipts})
    hub1.start()  # its persistent session gives it back what it had not acknowledged
    await wait_for(lambda: len({r["seq"] for r in ents[A].receipts}) == n, timeout=60,
                   what=f"receipts for all {n} records")
    # mosquitto keeps a shared subscriber's unacknowledged messages in its session: they waited for hub 1
    assert 1 < before_restart < n and hub2.proc.poll() is None
    assert stored(db_url) == n
    statuses = {r["status"] for r in ents[A].receipts}
    assert statuses <= {"accepted", "duplicate"}, statuses


async def test_an_enterprise_broker_bridges_its_collectors_evidence_with_the_shipped_example(
        city: dict[str, Any], tmp_path: Path) -> None:
    """deploy/hub/enterprise-bridge.conf, on a second mosquitto standing in for the enterprise's own broker."""
    from tests.conftest import Recorder

    machining = city["collectors"][0]
    summary = machining.close_month("2026-11", (5, 7), (4, 6))
    lines = []
    for line in (ROOT / "deploy/hub/enterprise-bridge.conf").read_text(encoding="utf-8").splitlines():
        if line.startswith("address "):
            line = f"address 127.0.0.1:{city['broker'].port}"
        elif line.startswith("remote_password "):
            line = f"remote_password {PW[A]}"
        elif line.startswith("bridge_cafile "):
            continue  # the test's hub broker has no TLS listener
        lines.append(line)
    local = MosquittoProcess(free_port(), extra=lines)
    local.start()
    rec = Recorder(local.host, local.port, "factory/jx-hengda/hub/receipt")
    try:
        pub = Recorder(local.host, local.port, "none/#")  # a plain client of the enterprise broker
        await asyncio.sleep(1.0)  # the bridge connects and subscribes
        root = "factory/jx-hengda/ws-machining"
        pub.client.publish(f"{root}/evidence/head", json.dumps(machining.anchor(machining.records[0])), qos=1)
        pub.client.publish(f"{root}/indicators/monthly/2026-11", json.dumps(summary), qos=1, retain=True)
        got = await wait_for(lambda: len(rec.messages) >= 2 and rec.messages, timeout=20,
                             what="two receipts through the bridge")
        receipts = sorted((m.json() for m in got), key=lambda r: r["seq"])
        assert [(r["seq"], r["status"]) for r in receipts] == [(1, "accepted"), (2, "accepted")]
        assert all(verify_receipt(r, city["hub_key"]) is None for r in receipts)
        assert stored(city["db"], "SELECT count(*) FROM records WHERE period = '2026-11'") == 1
        pub.close()
    finally:
        rec.close()
        local.stop()
