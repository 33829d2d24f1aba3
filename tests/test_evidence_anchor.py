"""Anchoring: the signed chain head goes through the outbox to the evidence topic of a real (private) mosquitto,
also after an outage, and a third party verifies the message alone with the enterprise's public key."""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from pathlib import Path
from typing import Any

import pytest

from collector.app import Collector
from collector.cli import main
from collector.config import Settings, parse_config
from collector.evidence import anchors, keys
from collector.evidence.records import verify_anchor
from collector.indicators import chain
from collector.status import StatusStore
from tests.conftest import Recorder
from tests.support.broker import MosquittoProcess, free_port

SH = zoneinfo.ZoneInfo("Asia/Shanghai")


def config(state: Path, port: int) -> dict[str, Any]:
    return {"site": {"enterprise_id": "e1", "enterprise_name": "嘉兴示范厂", "workshop": "ws1"},
            "mqtt": {"url": f"mqtt://127.0.0.1:{port}"}, "state_dir": str(state),
            "evidence": {"topic": "{root}/evidence/head"},
            "assets": [{"id": "M-1", "name": "旧车床", "is_cnc": True}]}


def ran_in_november_2025(state: Path) -> None:
    store = StatusStore(state / "status.db", 300)
    start = int(dt.datetime(2025, 11, 1, tzinfo=SH).timestamp())
    store.write([], [], {}, set(range(start, start + 30 * 86400, 300)))
    store.close()


async def test_the_signed_head_reaches_the_evidence_topic_also_after_an_outage(tmp_path: Path) -> None:
    broker = MosquittoProcess(free_port())
    broker.start()
    state = tmp_path / "state"
    ran_in_november_2025(state)
    data = config(state, broker.port)
    topic = "factory/e1/ws1/evidence/head"
    rec = Recorder(broker.host, broker.port, topic=topic)
    collector = Collector(parse_config(data))
    await collector.start()  # closes November 2025 and anchors the new head
    try:
        first = await rec.wait_for(lambda: rec.on(topic), 10, "the month-close anchor")
        msg = first[0].json()
        records = chain.read(state / chain.CHAIN_FILE)
        assert [r["body"]["kind"] for r in records] == ["key", "monthly_summary"]
        head = records[-1]
        assert (msg["kind"], msg["reason"], msg["seq"], msg["hash"], msg["prev"]) == \
            ("evidence_head", "month_close", 2, head["hash"], head["prev"])
        assert (msg["enterprise"], msg["workshop"], msg["key"]) == ("e1", "ws1", head["key"])
        pub = keys.load_public(str(state / keys.PUBLIC_FILE))  # all the hub needs
        assert verify_anchor(msg, pub) is None
        await rec.wait_for(lambda: all(r.get("acked_at") for r in anchors.receipts(state / anchors.ANCHOR_FILE)),
                           10, "the broker's acknowledgement in the receipts")
        assert collector.anchor() is None  # nothing new, not a day old: nothing sent

        # the broker goes away; a day later the head is anchored again: it waits in the outbox
        broker.stop()
        await rec.wait_for(lambda: not collector.sink.connected, 10, "the collector to see the outage")
        later = dt.datetime.now().timestamp() + 86400 + 5
        assert collector.anchor(now=later) == "daily"
        stats = collector.outbox.stats("evidence")
        assert stats["depth_batches"] == 1
        pending = [r for r in anchors.receipts(state / anchors.ANCHOR_FILE) if r["reason"] == "daily"]
        assert len(pending) == 1 and pending[0].get("acked_at") is None
        broker.start()
        again = await rec.wait_for(lambda: [m for m in rec.on(topic) if m.json()["reason"] == "daily"], 20,
                                   "the anchor queued during the outage")
        assert verify_anchor(again[0].json(), pub) is None and again[0].json()["hash"] == head["hash"]
        await rec.wait_for(lambda: collector.outbox.stats("evidence")["depth_batches"] == 0, 10, "the ack")
        done = [r for r in anchors.receipts(state / anchors.ANCHOR_FILE) if r["reason"] == "daily"]
        assert done[0]["acked_at"] and done[0]["broker"].endswith(f":{broker.port}/{topic}")
    finally:
        await collector.stop()
        rec.close()
    # a late reader gets the last head retained
    late = Recorder(broker.host, broker.port, topic=topic)
    try:
        got = await late.wait_for(lambda: late.on(topic), 5, "the retained head")
        assert got[-1].retain and got[-1].json()["hash"] == head["hash"]
    finally:
        late.close()
        broker.stop()
    # the report's footer names the key, the head and the receipts
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["report", "-c", str(cfg_path), "--period", "2025-11", "--format", "json,html",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report-2025-11.json").read_text(encoding="utf-8"))
    ev = report["evidence"]
    signer = keys.load(state)
    assert signer is not None and ev["fingerprint"] == keys.show_fingerprint(signer.fingerprint)
    assert ev["head"]["hash"] == head["hash"] and ev["record"]["seq"] == 2
    assert [a["reason"] for a in ev["anchors"]] == ["month_close", "daily"] and all(a["acked_at"]
                                                                                    for a in ev["anchors"])
    page = (out / "report-2025-11.html").read_text(encoding="utf-8")
    assert "签名密钥指纹" in page and keys.show_fingerprint(signer.fingerprint) in page and topic in page


def test_evidence_hub_config_errors_name_the_field_and_the_fix(tmp_path: Path) -> None:
    from collector.config import ConfigError

    hub_key = keys.init(tmp_path / "hub")[0]
    pub = str(tmp_path / "hub" / keys.PUBLIC_FILE)

    def errors(hub: dict[str, Any], site: dict[str, Any] | None = None) -> str:
        data = config(tmp_path, 1883)
        data["evidence"]["hub"] = hub
        if site is not None:
            data["site"].update(site)
        with pytest.raises(ConfigError) as exc:
            parse_config(data)
        return "\n".join(exc.value.lines)

    code = {"credit_code": "91330402MA2B3C4D53"}
    assert "evidence.hub: the hub knows the enterprise by its 统一社会信用代码: set site.credit_code" in errors(
        {"url": "hub.example", "public_key": pub})
    assert "evidence.hub.public_key" in errors({"url": "hub.example", "public_key": "a486-6cc7"}, code)
    assert "a fingerprint alone cannot check a signature" in errors({"url": "hub.example", "public_key": "x"}, code)
    assert "evidence.hub.url" in errors({"url": "http://hub.example", "public_key": pub}, code)
    plain = errors({"url": "mqtt://hub.example", "public_key": pub}, code)
    assert "password in clear; use mqtts://" in plain and "allow_plaintext" in plain
    other = keys.Signer(keys.generate())
    assert "not the fingerprint" in errors({"url": "hub.example", "public_key": pub,
                                            "fingerprint": keys.show_fingerprint(other.fingerprint)}, code)
    assert "evidence.hub.password" in errors({"url": "hub.example", "public_key": pub, "password": "x"}, code)
    # a bare host means TLS on 8883; the fingerprint, when given, must be the key's
    data = config(tmp_path, 1883)
    data["site"].update(code)
    data["evidence"]["hub"] = {"url": "hub.example", "public_key": pub,
                               "fingerprint": keys.show_fingerprint(hub_key.fingerprint)}
    cfg = parse_config(data)
    assert cfg.evidence.hub is not None
    assert (cfg.evidence.hub.scheme, cfg.evidence.hub.host, cfg.evidence.hub.port) == ("mqtts", "hub.example", 8883)
    assert cfg.hub_enterprise == "91330402MA2B3C4D53"
    # `collector check`/`run` before starting: a password must be there (env or a 0600 file)
    from collector.preflight import startup_check

    errors, _ = startup_check(cfg, Settings())
    assert any(e.startswith("evidence.hub.password_file: the hub's broker needs the enterprise's password") and
               "COLLECTOR_HUB_PASSWORD" in e for e in errors), errors
    data["evidence"]["hub"]["password_file"] = str(tmp_path / "nope")
    errors, _ = startup_check(parse_config(data), Settings())
    assert any(e.startswith(f"evidence.hub.password_file: {tmp_path / 'nope'} does not exist") for e in errors)
    data["evidence"] = {"topic": "factory/#"}
    with pytest.raises((ConfigError, ValueError), match="wildcards"):
        parse_config(data)
