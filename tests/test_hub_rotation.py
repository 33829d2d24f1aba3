"""Key rotation and a register import through a running collector, end to end with real parts: a mosquitto with
the shipped ACL and a password file, PostgreSQL, one `collector hub run` process and `collector run` processes.

The enterprise rotates its key (`collector keys rotate`) and imports its register (`collector assets import`)
beside its running collector, which gives both records to the hub at its next start; the hub learns the new key
from the old key's signed introduction, accepts the import signed by the new key, and takes a record signed by the
old key after the rotation for 数据异常 (an incident), not for data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.demo_city import seed_closed_month
from collector.evidence import hub_anchors, keys
from collector.evidence.records import sign_record
from collector.indicators import chain
from tests.hubsupport import Enterprise, HubProcess, acl_broker, hub_yaml, secret_file
from tests.hubsupport import pg_url as pg_url  # noqa: F401  (fixture)
from tests.test_hub_collectors import PW, A, cli, collector_config, collector_run, stored, wait_for

pytestmark = pytest.mark.integration
WS = "ws-machining"
REGISTER = ("设备编号,设备名称,车间,是否数控,是否数字化\n"
            "M-001,加工中心 VMC850,ws-machining,是,是\nM-002,普通车床 CA6140,ws-machining,否,否\n")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
async def hub(tmp_path: Path, pg_url: str,  # noqa: F811
              capsys: pytest.CaptureFixture[str]) -> AsyncIterator[dict[str, Any]]:
    """A hub (broker with the ACL, `collector hub run`, PostgreSQL) and one enrolled collector's config."""
    broker = acl_broker(tmp_path, {"hub": PW["hub"], A: PW[A]})
    secret = secret_file(tmp_path / "hub-password", PW["hub"])
    hub_state = tmp_path / "hub-state"
    hub_cfg = hub_yaml(tmp_path / "hub.yaml", db_url=pg_url, port=broker.port, state_dir=hub_state,
                       client_id="hub-1", pw_file=secret, http_port=None)
    proc = HubProcess(hub_cfg, tmp_path / "hub.log")
    try:
        keys.init(hub_state)
        hub_pub = hub_state / keys.PUBLIC_FILE
        data = collector_config(tmp_path, "machining", "jx-hengda", A, WS, [], broker.port, hub_pub)
        state = Path(data["state_dir"])
        signer, _ = keys.init(state)
        month = seed_closed_month(state, 10, {})  # its start closes that month: key record and summary
        config = tmp_path / "machining.yaml"
        config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        enterprises = tmp_path / "enterprises.csv"
        enterprises.write_text("统一社会信用代码,企业名称,县（市、区）,公钥,采集器企业标识\n"
                               f"{A},恒达机械,南湖区,{keys.public_b64(signer.public)},jx-hengda\n", encoding="utf-8")
        code, out = cli(capsys, "hub", "enroll", "-c", str(hub_cfg), str(enterprises))
        assert code == 0, out
        proc.start()
        yield {"db": pg_url, "hub_cfg": hub_cfg, "hub_pub": hub_pub, "config": config, "state": state,
               "month": month.label, "broker": broker, "tmp": tmp_path,
               "env": {**os.environ, "COLLECTOR_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}}
    finally:
        proc.stop()
        broker.stop()


def statuses(state: Path) -> dict[int, str]:
    """What the collector kept of the hub's receipts: seq -> status."""
    return {e["seq"]: e["status"] for e in hub_anchors.entries(state / hub_anchors.HUB_FILE)}


async def test_a_rotated_key_is_learnt_from_its_signed_introduction_and_the_old_one_is_refused_after_it(
        hub: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    db, state, config, tmp = hub["db"], hub["state"], hub["config"], hub["tmp"]
    first = collector_run(config, tmp / "run-1.log", hub["env"])
    try:
        await wait_for(lambda: statuses(state) == {1: "accepted", 2: "accepted"}, timeout=20,
                       what="the key record and the summary accepted")
        old = keys.load(state)
        assert old is not None
        # beside the running service, as an operator would: rotate the key, then import the register
        code, out = cli(capsys, "keys", "rotate", "-c", str(config))
        assert code == 0 and "rotated" in out, out
        new = keys.load(state)
        assert new is not None and new.fingerprint != old.fingerprint
        (tmp / "register.csv").write_text(REGISTER, encoding="utf-8")
        code, out = cli(capsys, "assets", "import", str(tmp / "register.csv"), "-c", str(config))
        assert code == 0 and "2 asset(s) OK (1 CNC)" in out, out
    finally:
        stop(first)
    records = chain.read(state / chain.CHAIN_FILE)
    assert [(r["seq"], r["body"]["kind"], r["key"]) for r in records] == [
        (1, "key", old.fingerprint), (2, "monthly_summary", old.fingerprint),
        (3, "key", old.fingerprint),  # the introduction, signed by the old key
        (4, "register_import", new.fingerprint)]
    assert records[2]["body"]["replaces"] == old.fingerprint and records[2]["body"]["fingerprint"] == new.fingerprint

    # its next start gives the hub what it has not had (a running one does so at its next minute)
    second = collector_run(config, tmp / "run-2.log", hub["env"])
    try:
        await wait_for(lambda: statuses(state) == {1: "accepted", 2: "accepted", 3: "accepted", 4: "accepted"},
                       timeout=20, what="the rotation and the import accepted")
        assert stored(db, "SELECT fingerprint, public_key, introduced_by, retired_after FROM keys "
                          "ORDER BY enrolled_at, fingerprint") == [
            (old.fingerprint, keys.public_b64(old.public), None, 3),
            (new.fingerprint, keys.public_b64(new.public), old.fingerprint, None)]
        assert stored(db, "SELECT seq, key, body_kind, hash FROM records ORDER BY seq") == [
            (r["seq"], r["key"], r["body"]["kind"], r["hash"]) for r in records]
        code, out = cli(capsys, "verify", str(state / chain.CHAIN_FILE), "--hub-key", str(hub["hub_pub"]))
        assert code == 0 and "4 of 4 hub anchor(s) verify and match the chain" in out, out

        # whoever still holds the old key signs a better month after the rotation, under the enterprise's own
        # broker credentials: the hub answers 数据异常 and keeps the month it had
        summary = records[1]
        better = json.loads(json.dumps(summary["body"]))
        better["figures"]["D1"].update(numerator=9, denominator=9)
        forged = sign_record(old, enterprise="jx-hengda", workshop=WS, seq=5, ts=records[3]["ts"],
                             prev=records[3]["hash"], body=better)
        ent = Enterprise(hub["broker"].port, A, PW[A])
        try:
            ent.publish(forged, suffix=f"/{WS}/record")
            receipt = (await wait_for(lambda: ent.receipts_for(WS, 5), what="the hub's receipt"))[0]
            assert receipt["status"] == "incident" and receipt["hash"] == forged["hash"]
            assert "rotated away at record 3" in receipt["reason"]
            assert stored(db, "SELECT seq, message->>'key', reason LIKE '%%rotated away at record 3' FROM incidents") == [
                (5, old.fingerprint, True)]
            assert stored(db, "SELECT max(seq) FROM records") == [(4,)]
            # the chain goes on with the new key: its next record is accepted
            nxt = sign_record(new, enterprise="jx-hengda", workshop=WS, seq=5, ts=records[3]["ts"],
                              prev=records[3]["hash"], body={"kind": "register_import", "rows": 0})
            ent.publish(nxt, suffix=f"/{WS}/record")
            await wait_for(lambda: [r for r in ent.receipts_for(WS, 5) if r["hash"] == nxt["hash"]],
                           what="the next record's receipt")
            assert [r["status"] for r in ent.receipts_for(WS, 5)] == ["incident", "accepted"]
        finally:
            ent.close()
    finally:
        stop(second)

    code, out = cli(capsys, "hub", "incidents", "-c", str(hub["hub_cfg"]))
    assert code == 0 and out.count("数据异常") == 1 and f"{A} 恒达机械  {WS} seq 5" in out, out
    code, out = cli(capsys, "hub", "bulletin", "-c", str(hub["hub_cfg"]), "--period", hub["month"], "--format",
                    "json")
    assert code == 0, out
    nanhu = {b["name"]: b for b in json.loads(out)["counties"]}["南湖区"]
    assert [(e["id"], [i["seq"] for i in e["incidents"]]) for e in nanhu["anomalies"]] == [(A, [5])]
    assert nanhu["anomalies"][0]["incidents"][0]["concerns"] == [hub["month"]]  # the forged summary's month
    assert nanhu["reported"] == 1
