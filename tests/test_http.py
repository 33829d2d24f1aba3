"""The HTTP endpoint against the running demo workshop: /healthz, /metrics, the JSON API, the page, auth.

Simulators and the collector run in the test's event loop on free ports; a private mosquitto takes the data.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import collector.http as http_mod
from collector.app import Collector
from collector.config import CollectorConfig, ConfigError, Settings, parse_config
from collector.http import HttpServer
from simulators.workshop import Workshop
from tests.support.broker import MosquittoProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
INTERVAL = 0.3
CONNECTED = ["cnc-01", "cnc-02", "imm-01", "knit-01", "comp-01", "pack-01", "meter-01", "press-01"]


def workshop_config(state_dir: Path, broker_port: int, http_port: int | None = None) -> dict[str, Any]:
    """config/demo.yaml on free ports, polling fast, live figures reacting within ~1.5 s."""
    data = copy.deepcopy(yaml.safe_load((ROOT / "config/demo.yaml").read_text(encoding="utf-8")))
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{broker_port}"
    data["state_dir"] = str(state_dir)
    data["indicators"] = {"publish_interval": 0.5, "bucket": 1.0, "live_window": 1.5, "allow_simulated": True}
    data["http"] = {"listen": f"127.0.0.1:{http_port or free_port()}", "stall_after": 1.0}
    for dev in data["devices"]:
        scheme = dev["endpoint"].split("://")[0]
        dev["endpoint"] = f"{scheme}://127.0.0.1:{free_port()}"
        dev["interval"] = INTERVAL
    return data


class Site:
    """A running workshop + collector + HTTP server, with a client session."""

    def __init__(self, cfg: CollectorConfig, workshop: Workshop, collector: Collector, http: HttpServer,
                 session: aiohttp.ClientSession) -> None:
        self.cfg, self.workshop, self.collector, self.http, self.session = cfg, workshop, collector, http, session

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.get(self.base + path, **kw) as r:
            body = await (r.json() if r.content_type == "application/json" else r.text())
            return r.status, body

    async def until(self, cond: Any, timeout: float = 15.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = await cond()
            if result:
                return result
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
async def site(broker: MosquittoProcess, state_dir: Path) -> AsyncIterator[Site]:
    cfg = parse_config(workshop_config(state_dir, broker.port))
    workshop = Workshop(cfg)
    await workshop.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    http = HttpServer(collector, config_path=None)
    await http.start()
    session = aiohttp.ClientSession()
    s = Site(cfg, workshop, collector, http, session)
    try:
        await s.until(lambda: _all_online(s), 20, "every device online")
        yield s
    finally:
        await session.close()
        await http.stop()
        await collector.stop()
        await workshop.stop()


async def _all_online(s: Site) -> bool:
    _, body = await s.get("/api/devices")
    return all(d["state"] == "online" for d in body["devices"])


def metrics_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# --------------------------------------------------------------------------------------------- /healthz


async def test_healthz_is_ok_with_loop_alive_and_nothing_waiting(site: Site) -> None:
    status, body = await site.get("/healthz")
    assert status == 200, body
    assert body["status"] == "ok" and body["reasons"] == []
    assert body["loop"]["ok"] is True and body["loop"]["lag_s"] < 1.0
    # devices poll at their own phases: a live workshop may have a batch or two inside the 50 ms commit window
    assert body["outbox"]["ok"] is True and body["outbox"]["depth"] <= len(CONNECTED)
    assert body["outbox"]["source"] == ("outbox" if site.collector.outbox_stats() else "sink")
    assert body["sink_connected"] is True


async def test_healthz_fails_while_the_outbox_is_stuck_and_recovers_when_it_drains(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    # the outbox's stats per sink (collector/outbox.py): batches and readings
    stats: dict[str, Any] = {"depth_batches": 40, "depth_readings": 1200, "oldest_age_s": 300.0,
                             "dropped_batches": 0, "delivered_readings": 10, "delivery_rate": 0.0}
    monkeypatch.setattr(site.collector, "outbox_stats", lambda: {"mqtt": dict(stats)})
    status, body = await site.get("/healthz")  # first look: progress is "now"
    assert status == 200 and body["outbox"]["source"] == "outbox"
    await asyncio.sleep(site.cfg.http.stall_after + 0.3)
    status, body = await site.get("/healthz")
    assert status == 503, body
    assert body["status"] == "failing" and body["outbox"]["ok"] is False and body["outbox"]["depth"] == 40
    assert "outbox holds 40 messages and delivered none" in body["reasons"][0]
    stats["delivered_readings"] = 25  # draining again
    status, body = await site.get("/healthz")
    assert status == 200 and body["outbox"]["ok"] is True
    stats.update(depth_batches=0, depth_readings=0, oldest_age_s=0.0)  # empty: healthy however long it idles
    await asyncio.sleep(site.cfg.http.stall_after + 0.3)
    status, _ = await site.get("/healthz")
    assert status == 200


async def test_healthz_fails_while_the_outbox_cannot_write_and_recovers(site: Site) -> None:
    """Storage gone read-only (as an SD card remounted read-only after errors), played by SQLite's query_only
    on the running collector's outbox: /healthz says so, the data is delivered from memory meanwhile, and once
    the outbox can write again it is healthy."""
    ob = site.collector.outbox
    ob.db.execute("PRAGMA query_only = 1")
    try:
        status, body = await site.until(lambda: _failing(site), 10, "/healthz failing on a read-only outbox")
        assert body["outbox"]["ok"] is False and "readonly" in body["outbox"]["write_error"]
        assert any("cannot write" in r and "outbox.db" in r for r in body["reasons"]), body["reasons"]
        delivered = ob.queues["mqtt"].delivered_readings

        async def delivering() -> bool:
            return ob.write_error is not None and ob.queues["mqtt"].delivered_readings > delivered + 20

        await site.until(delivering, 10, "data delivered from memory while the outbox cannot write")
    finally:
        ob.db.execute("PRAGMA query_only = 0")
    await site.until(lambda: _ok(site), 10, "/healthz ok once the outbox writes again")
    assert ob.write_error is None and ob.queues["mqtt"].dropped_batches == 0


async def _failing(site: Site) -> tuple[int, Any] | None:
    status, body = await site.get("/healthz")
    return (status, body) if status == 503 else None


async def _ok(site: Site) -> bool:
    status, _ = await site.get("/healthz")
    return status == 200


async def test_healthz_fails_after_the_loop_was_blocked(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_mod, "LOOP_STALE", 0.5)
    time.sleep(1.0)  # noqa: ASYNC251 - blocking the loop on purpose
    status, body = await site.get("/healthz")
    assert status == 503, body
    assert body["loop"]["ok"] is False and body["loop"]["lag_s"] >= 0.5
    assert body["reasons"][0].startswith("event loop lagging")
    await asyncio.sleep(1.2)  # a couple of heartbeats on time
    status, body = await site.get("/healthz")
    assert status == 200 and body["loop"]["lag_s"] < 0.5


# --------------------------------------------------------------------------------------------- /metrics


async def test_metrics_report_devices_sink_indicators_and_outbox(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    await site.until(lambda: _d2_is(site, 7, 8), 10, "live 联网率 7/8")

    polled = [d.id for d in site.cfg.devices if getattr(d, "mode", "poll") == "poll"]  # not OPC UA subscriptions
    assert len(polled) >= 5

    n_tags_of = {d.id: len(d.tags) for d in site.cfg.devices}

    async def polled_twice() -> bool:
        tasks = site.collector.engine.tasks
        return all(tasks[d].polls >= 2 for d in polled) and all(
            tasks[d].readings >= 2 * n_tags_of[d] for d in CONNECTED)  # subscriptions too

    await site.until(polled_twice, 10, "two polls of every polled device, two rounds of readings from all")
    monkeypatch.setattr(site.collector, "outbox_stats", lambda: {"mqtt": {
        "depth_batches": 3, "depth_readings": 90, "bytes": 5000, "oldest_age_s": 12.5, "dropped_batches": 2,
        "dropped_readings": 60, "delivered_readings": 400, "delivery_rate": 1.5}})
    async with site.session.get(site.base + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        m = metrics_of(await r.text())
    for dev in CONNECTED:
        assert m[("shopfloor_device_state", (("device", dev), ("state", "online")))] == 1.0
        assert m[("shopfloor_device_state", (("device", dev), ("state", "offline")))] == 0.0
        assert m[("shopfloor_device_up", (("device", dev),))] == 1.0
        task = site.collector.engine.tasks[dev]
        polls = m[("shopfloor_device_poll_duration_seconds_count", (("device", dev),))]
        if dev in polled:
            assert 2 <= polls <= task.polls
            assert 0 < m[("shopfloor_device_poll_duration_seconds_sum", (("device", dev),))] < polls * INTERVAL
        else:
            assert polls == 0  # a subscription has no polls; its readings still count
        n_tags = len(next(d for d in site.cfg.devices if d.id == dev).tags)
        assert m[("shopfloor_device_readings_total", (("device", dev),))] >= 2 * n_tags
        assert m[("shopfloor_device_errors_total", (("device", dev),))] == 0
        assert m[("shopfloor_device_sequence", (("device", dev),))] >= 2
    assert m[("shopfloor_sink_connected", (("sink", "mqtt"),))] == 1.0
    published = m[("shopfloor_sink_published_total", (("sink", "mqtt"),))]
    assert published >= 1 and m[("shopfloor_sink_acked_total", (("sink", "mqtt"),))] <= published
    assert m[("shopfloor_sink_errors_total", (("sink", "mqtt"),))] == 0
    assert m[("shopfloor_sink_latency_seconds_count", (("sink", "mqtt"),))] >= 6
    assert m[("shopfloor_sink_latency_seconds_bucket", (("le", "+Inf"), ("sink", "mqtt")))] >= 6
    ent = (("indicator", "D2"), ("scope", "enterprise"))
    assert m[("shopfloor_indicator_value", ent)] == pytest.approx(7 / 8)
    assert m[("shopfloor_indicator_numerator", ent)] == 7 and m[("shopfloor_indicator_denominator", ent)] == 8
    assert m[("shopfloor_indicator_target", ent)] == pytest.approx(0.55)
    assert m[("shopfloor_indicator_passed", ent)] == 1.0
    d1 = (("indicator", "D1"), ("scope", "enterprise"))
    assert m[("shopfloor_indicator_value", d1)] == pytest.approx(7 / 9)
    assert m[("shopfloor_indicator_value", (("indicator", "D2"), ("scope", "workshop:ws-machining")))] == \
        pytest.approx(7 / 8)
    mq = (("sink", "mqtt"),)
    assert m[("shopfloor_outbox_depth_batches", mq)] == 3 and m[("shopfloor_outbox_depth_readings", mq)] == 90
    assert m[("shopfloor_outbox_bytes", mq)] == 5000
    assert m[("shopfloor_outbox_oldest_age_seconds", mq)] == 12.5
    assert m[("shopfloor_outbox_dropped_batches_total", mq)] == 2
    assert m[("shopfloor_outbox_dropped_readings_total", mq)] == 60
    assert m[("shopfloor_outbox_delivered_readings_total", mq)] == 400
    assert m[("shopfloor_outbox_delivery_rate", mq)] == 1.5
    assert m[("shopfloor_collector_devices", (("enabled", "true"),))] == 8


async def _d2_is(site: Site, num: int, den: int) -> bool:
    _, ind = await site.get("/api/indicators")
    f = ind["figures"]["D2"]
    return bool((f["numerator"], f["denominator"]) == (num, den))


# --------------------------------------------------------------------------------------------- JSON API


async def test_api_lists_devices_with_tags_and_indicators(site: Site) -> None:
    status, body = await site.get("/api/devices")
    assert status == 200
    assert [d["id"] for d in body["devices"]] == CONNECTED
    imm = next(d for d in body["devices"] if d["id"] == "imm-01")
    assert imm["protocol"] == "modbus" and imm["name"] == "注塑机 HTF-250" and imm["state"] == "online"
    assert imm["endpoint"] == next(d.endpoint for d in site.cfg.devices if d.id == "imm-01")
    tags = {t["name"]: t for t in imm["tags"]}
    assert list(tags) == ["machine_state", "barrel_temp", "mould_temp", "shot_count", "cycle_time",
                          "injection_pressure"]
    assert all(t["quality"] == "good" for t in tags.values())
    assert tags["barrel_temp"]["unit"] == "°C" and 150 <= tags["barrel_temp"]["value"] <= 250
    assert tags["machine_state"]["value"] in (0, 1, 2, 3)
    assert imm["values"]["barrel_temp"] == [tags["barrel_temp"]["value"], "°C", "good"]
    assert imm["seq"] >= 1 and imm["polls"] >= 1 and imm["errors"] == 0

    status, one = await site.get("/api/devices/cnc-01")
    assert status == 200 and one["protocol"] == "opcua"
    assert {t["name"]: t["unit"] for t in one["tags"]}["spindle_speed"] == "rpm"
    status, missing = await site.get("/api/devices/nope")
    assert status == 404 and missing == {"error": "no such device"}

    await site.until(lambda: _d2_is(site, 7, 8), 10, "live 联网率 7/8")
    status, ind = await site.get("/api/indicators")
    assert status == 200 and ind["defset"] == "v1" and ind["enterprise"] == "jx-hengda"
    assert ind["figures"]["D1"]["numerator"] == 7 and ind["figures"]["D1"]["denominator"] == 9
    assert ind["figures"]["D2"]["target"] == pytest.approx(0.55) and ind["figures"]["D2"]["passed"] is True

    status, full = await site.get("/api/status")
    assert status == 200
    assert full["gateway"]["workshop"] == "ws-machining" and full["gateway"]["uptime_s"] > 0
    assert full["gateway"]["topic_root"] == site.cfg.topic_root
    assert full["sink"]["connected"] is True and full["health"]["status"] == "ok"
    assert set(full["outbox"]) == set(site.collector.outbox_stats())  # per sink: {"mqtt": {...}}
    assert len(full["devices"]) == 8 and full["indicators"]["figures"]["D2"]["numerator"] == 7


async def test_a_device_that_goes_offline_shows_offline_in_api_and_metrics(site: Site) -> None:
    await site.workshop.stop_device("imm-01")

    async def offline() -> bool:
        _, d = await site.get("/api/devices/imm-01")
        return bool(d["state"] == "offline")

    await site.until(offline, 10, "imm-01 offline")
    _, d = await site.get("/api/devices/imm-01")
    assert d["online"] is False and d["reason"]
    async with site.session.get(site.base + "/metrics") as r:
        m = metrics_of(await r.text())
    assert m[("shopfloor_device_up", (("device", "imm-01"),))] == 0.0
    assert m[("shopfloor_device_state", (("device", "imm-01"), ("state", "offline")))] == 1.0
    assert m[("shopfloor_device_errors_total", (("device", "imm-01"),))] >= 1
    await site.until(lambda: _d2_is(site, 6, 8), 10, "live 联网率 6/8")


async def test_reconnects_are_counted_and_subscribers_show_publishes(site: Site) -> None:
    """imm-01 (Modbus, polled) and cnc-01 (OPC UA, subscribed) lose their simulator and get it back: each counts
    one reconnect, in the API, `collector status --json` and /metrics; the others none. cnc-01 shows the
    publishes its subscription delivered, not 0 polls."""
    async def device(dev: str) -> dict[str, Any]:
        return (await site.get(f"/api/devices/{dev}"))[1]  # type: ignore[no-any-return]

    before = {d: await device(d) for d in ("imm-01", "cnc-01")}
    assert before["imm-01"]["reconnects"] == 0 and before["cnc-01"]["reconnects"] == 0
    assert before["cnc-01"]["mode"] == "subscribe" and before["cnc-01"]["polls"] is None
    assert before["cnc-01"]["publishes"] >= 1
    assert before["imm-01"]["mode"] == "poll" and before["imm-01"]["polls"] >= 1
    assert before["imm-01"]["publishes"] is None
    for dev in ("imm-01", "cnc-01"):
        await site.workshop.stop_device(dev)
    for dev in ("imm-01", "cnc-01"):
        await site.until(lambda d=dev: _state_is(site, d, "offline"), 20, f"{dev} offline")
    for dev in ("imm-01", "cnc-01"):
        await site.workshop.start_device(dev)
    for dev in ("imm-01", "cnc-01"):
        await site.until(lambda d=dev: _state_is(site, d, "online"), 40, f"{dev} online again")
    after = {d: await device(d) for d in ("imm-01", "cnc-01")}
    assert after["imm-01"]["reconnects"] == 1 and after["cnc-01"]["reconnects"] == 1, after
    assert after["cnc-01"]["publishes"] > before["cnc-01"]["publishes"]

    async with site.session.get(site.base + "/metrics") as r:
        m = metrics_of(await r.text())
    for dev in CONNECTED:
        assert m[("shopfloor_device_reconnects_total", (("device", dev),))] == (1 if dev in after else 0), dev
    assert m[("shopfloor_device_publishes_total", (("device", "cnc-01"),))] >= after["cnc-01"]["publishes"]
    assert ("shopfloor_device_publishes_total", (("device", "imm-01"),)) not in m

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector.cli", "status", "--url", site.base, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    rows = {d["id"]: d for d in json.loads(out)["devices"]}
    assert rows["imm-01"]["reconnects"] == 1 and rows["cnc-01"]["reconnects"] == 1
    assert rows["knit-01"]["reconnects"] == 0 and rows["cnc-02"]["mode"] == "poll" and rows["cnc-02"]["polls"] >= 1
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector.cli", "status", "--url", site.base,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={"COLUMNS": "200", "PATH": "/usr/bin"})
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert "publishes" in text and "polls" in text and "1 reconnects" in text, text


async def _state_is(s: Site, dev: str, state: str) -> bool:
    _, d = await s.get(f"/api/devices/{dev}")
    return bool(d["state"] == state)


# --------------------------------------------------------------------------------------------- page, CLI


async def test_status_page_is_self_contained(site: Site) -> None:
    async with site.session.get(site.base + "/") as r:
        assert r.status == 200 and r.content_type == "text/html"
        html = await r.text()
    assert "数字化设备联网率" in html and "装备数控化率" in html and "api/status" in html
    for external in ('src="http', "src='http", 'href="http', "@import", "//cdn", "fonts.googleapis"):
        assert external not in html, external


async def test_collector_status_prints_the_same_picture(site: Site) -> None:
    await site.until(lambda: _d2_is(site, 7, 8), 10, "live 联网率 7/8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector.cli", "status", "--url", site.base,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={"COLUMNS": "160", "PATH": "/usr/bin"})
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    for dev in CONNECTED:
        assert dev in text
    assert "数字化设备联网率" in text and "87.5 %" in text and "[7/8]" in text
    assert "connected" in text and "health" in text and "ok" in text
    assert re.search(r"up \d+ s", text) and "0.0 h" not in text, text  # a young collector's uptime
    from collector.view import fmt_duration
    assert [fmt_duration(s) for s in (4.2, 600, 7200, 3 * 86400 + 4 * 3600)] == ["4 s", "10 min", "2.0 h", "3 d 4 h"]


HIDE_DEMO_EXTRA = ("import sys; sys.modules.update(rich=None, amqtt=None); from collector.cli import main; "
                   "raise SystemExit(main(sys.argv[1:]))")  # a gateway install: no `demo` extra


async def test_collector_status_without_the_demo_extra_prints_plain_text(site: Site) -> None:
    await site.until(lambda: _d2_is(site, 7, 8), 10, "live 联网率 7/8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HIDE_DEMO_EXTRA, "status", "--url", site.base,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin"})
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    for dev in CONNECTED:
        assert dev in text
    assert "数字化设备联网率 D2: 87.5 %" in text and "[7/8]" in text
    assert "MQTT: connected" in text and "health: ok" in text and "outbox mqtt: depth" in text, text


# --------------------------------------------------------------------------------------------- auth


async def test_token_guards_everything_but_healthz_and_is_never_logged(
        site: Site, caplog: pytest.LogCaptureFixture) -> None:
    token = "s3cret-t0ken-value"
    caplog.set_level(logging.DEBUG)
    cfg = site.cfg.http.model_copy(update={"listen": f"127.0.0.1:{free_port()}"})
    guarded = HttpServer(site.collector, cfg, token=token)
    await guarded.start()
    base = f"http://127.0.0.1:{guarded.port}"
    basic = "Basic " + base64.b64encode(f"operator:{token}".encode()).decode()
    try:
        for path in ("/", "/metrics", "/api/status", "/api/devices"):
            async with site.session.get(base + path) as r:
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"].startswith("Basic")
            async with site.session.get(base + path, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401, path
            async with site.session.get(base + path, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200, path
            async with site.session.get(base + path, headers={"Authorization": basic}) as r:
                assert r.status == 200, path
        async with site.session.get(base + "/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with site.session.post(base + "/api/reload") as r:
            assert r.status == 401
    finally:
        await guarded.stop()
    assert "event=http_listening" in caplog.text and "auth=token" in caplog.text
    assert token not in caplog.text


def test_public_listen_needs_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLLECTOR_HTTP_TOKEN", raising=False)
    base = {"site": {"enterprise_id": "e1"}, "http": {"listen": "0.0.0.0:8321"}}
    with pytest.raises(ConfigError) as exc:
        parse_config(copy.deepcopy(base))
    assert any(line.startswith("http.listen: '0.0.0.0:8321' is not a loopback address") for line in exc.value.lines)
    with pytest.raises(ConfigError) as exc:
        parse_config({**base, "http": {"listen": "0.0.0.0:8321", "token_file": str(tmp_path / "missing")}})
    assert exc.value.lines[0].startswith("http.token_file: cannot read a token")
    (tmp_path / "token").write_text("from-file\n")
    cfg = parse_config({**base, "http": {"listen": "0.0.0.0:8321", "token_file": str(tmp_path / "token")}})
    from collector.config import http_token
    assert http_token(cfg) == "from-file"
    monkeypatch.setenv("COLLECTOR_HTTP_TOKEN", "from-env")
    assert http_token(parse_config(copy.deepcopy(base))) == "from-env"
    # loopback, or disabled, needs none; a malformed address is named
    monkeypatch.delenv("COLLECTOR_HTTP_TOKEN")
    assert parse_config({**base, "http": {"listen": "[::1]:9000"}}).http.loopback
    assert parse_config({**base, "http": {"listen": "0.0.0.0:1", "enabled": False}}).http.enabled is False
    with pytest.raises(ConfigError) as exc:
        parse_config({**base, "http": {"listen": "8321"}})
    assert exc.value.lines[0].startswith("http.listen: '8321' is not host:port")
    assert parse_config({"site": {"enterprise_id": "e1"}}).http.enabled is True  # on by default


# --------------------------------------------------------------------------------------------- host names


PATHS = ("/", "/healthz", "/metrics", "/api/status", "/api/devices", "/api/devices/cnc-01", "/api/indicators")


async def test_a_foreign_host_or_origin_is_refused_on_every_endpoint(site: Site) -> None:
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 sends Host and Origin
    evil.example; without the Host check it could read the plant and trigger reloads."""
    port = site.http.port
    rebinding = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    for path in PATHS:
        async with site.session.get(site.base + path, headers=rebinding) as r:
            assert r.status == 421, path
            assert "evil.example" in await r.text()
        async with site.session.get(site.base + path, headers={"Host": f"evil.example:{port}"}) as r:
            assert r.status == 421, path
        async with site.session.get(site.base + path, headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403, path
    for headers in (rebinding, {"Origin": f"http://evil.example:{port}"}, {"Origin": "null"}):
        async with site.session.post(site.base + "/api/reload", headers=headers) as r:
            assert r.status in (403, 421), headers
    reloads = dict(site.collector.reload_counts)
    assert reloads == {"applied": 0, "rejected": 0}


async def test_the_listen_host_loopback_names_and_allowed_hosts_are_accepted(site: Site) -> None:
    cfg = site.cfg.http.model_copy(update={"listen": f"127.0.0.1:{free_port()}",
                                           "allowed_hosts": ["gateway-07.plant.local", "192.168.10.7"]})
    server = HttpServer(site.collector, cfg)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        for host in ("127.0.0.1", "localhost", "[::1]", "LOCALHOST.", "gateway-07.plant.local", "192.168.10.7"):
            for path in PATHS:
                async with site.session.get(base + path, headers={"Host": f"{host}:{server.port}"}) as r:
                    assert r.status == 200, (host, path)
            async with site.session.get(base + "/api/status", headers={"Host": host,
                                                                       "Origin": f"http://{host}"}) as r:
                assert r.status == 200, host
        for host in ("10.0.0.9", "gateway-08.plant.local", "plant.local"):
            async with site.session.get(base + "/api/status", headers={"Host": host}) as r:
                assert r.status == 421, host
        # same-origin reload passes the check (and is then refused only because no file was given)
        async with site.session.post(base + "/api/reload", headers={"Origin": base}) as r:
            assert r.status == 409
    finally:
        await server.stop()
    wildcard = HttpServer(site.collector, site.cfg.http.model_copy(update={"listen": "0.0.0.0:1"}), token="t")
    assert wildcard.host_allowed("192.168.10.7") and wildcard.host_allowed("localhost")
    assert not wildcard.host_allowed("evil.example")


def test_allowed_hosts_are_names_without_port(tmp_path: Path) -> None:
    base = {"site": {"enterprise_id": "e1"}}
    cfg = parse_config({**base, "http": {"allowed_hosts": ["Gateway-07.Plant.Local", "[fd00::7]"]}})
    assert cfg.http.allowed_hosts == ["gateway-07.plant.local", "fd00::7"]
    for bad in ("http://gw", "gw:8321", ""):
        with pytest.raises(ConfigError) as exc:
            parse_config({**base, "http": {"allowed_hosts": [bad]}})
        assert exc.value.lines[0].startswith(f"http.allowed_hosts: {bad!r} is not a host name") and "without scheme or port" in \
            exc.value.lines[0], exc.value.lines


# --------------------------------------------------------------------------------------------- the port taken


def test_run_refuses_to_start_when_its_http_port_is_taken(tmp_path: Path, state_dir: Path) -> None:
    import socket
    import subprocess

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    data = workshop_config(state_dir, free_port(), port)
    path = tmp_path / "second.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        result = subprocess.run([sys.executable, "-m", "collector.cli", "run", "-c", str(path)],
                                capture_output=True, text=True, timeout=60)
    finally:
        holder.close()
    assert result.returncode == 1, (result.stdout, result.stderr[-2000:])
    assert f"http.listen 127.0.0.1:{port}: cannot listen" in result.stderr
    assert "give this collector its own http.listen port" in result.stderr
    assert "Traceback" not in result.stderr


async def test_status_refuses_when_another_collector_answers(site: Site, tmp_path: Path) -> None:
    data = workshop_config(tmp_path, free_port(), site.http.port)
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump(data, allow_unicode=True))
    data["site"]["enterprise_id"], data["site"]["workshop"] = "jx-other", "ws-assembly"
    other = tmp_path / "second.yaml"
    other.write_text(yaml.safe_dump(data, allow_unicode=True))

    async def cli(*args: str) -> tuple[int | None, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector.cli", *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={"COLUMNS": "160", "PATH": "/usr/bin"})
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, out.decode(), err.decode()

    # three processes at once (none changes the running collector: the reload is refused)
    status_other, reload_other, status_same = await asyncio.gather(
        cli("status", "-c", str(other), "--json"), cli("reload", "-c", str(other)),
        cli("status", "-c", str(same), "--json"))
    code, out, err = status_other
    assert code == 1 and out == "", (out, err)
    assert "enterprise 'jx-hengda' workshop 'ws-machining'" in err, err
    assert "enterprise 'jx-other' workshop 'ws-assembly'" in err, err
    code, out, err = reload_other
    assert code == 1 and "enterprise 'jx-other'" in err, err
    code, out, err = status_same
    assert code == 0, err
    assert '"enterprise": "jx-hengda"' in out
