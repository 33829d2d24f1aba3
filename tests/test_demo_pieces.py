"""Pieces of `make demo` and `collector run` that the end-to-end tests don't reach on their own."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import yaml

from collector.app import Collector
from collector.config import Settings, parse_config
from collector.demo_broker import DemoBroker, EmbeddedBroker
from simulators.workshop import Workshop
from tests.conftest import Recorder
from tests.support.broker import MosquittoProcess, free_port
from tests.test_backbone import demo_on_free_ports


async def test_embedded_broker_carries_retained_messages_without_mosquitto() -> None:
    port = free_port()
    broker = EmbeddedBroker(port)
    await broker.start()
    try:
        # amqtt runs on this loop: paho's blocking calls go to a thread
        pub = await asyncio.to_thread(Recorder, "127.0.0.1", port, "nothing/#")
        info = pub.client.publish("demo/retained", b'{"state": "online"}', qos=1, retain=True)
        await asyncio.to_thread(info.wait_for_publish, 5)
        rec = await asyncio.to_thread(Recorder, "127.0.0.1", port, "demo/#")
        msg = await rec.wait_for(lambda: rec.last("demo/retained"), 10, "the retained message")
        assert msg.json() == {"state": "online"} and msg.retain
        rec.close()
        pub.close()
    finally:
        await broker.stop()


async def test_demo_broker_uses_a_broker_that_answers_and_starts_one_otherwise(broker: MosquittoProcess) -> None:
    assert await DemoBroker(broker.host, broker.port).start() == "external"
    port = free_port()
    demo = DemoBroker("127.0.0.1", port)
    kind = await demo.start()
    try:
        assert kind == ("mosquitto" if MosquittoProcess.available() else "amqtt")
        rec = Recorder("127.0.0.1", port, "#")
        rec.close()
    finally:
        await demo.stop()


async def test_sequence_numbers_keep_rising_across_restarts(broker: MosquittoProcess, state_dir: Path) -> None:
    data = demo_on_free_ports(state_dir, broker.port)
    data["devices"] = [d for d in data["devices"] if d["id"] == "knit-01"]
    data["assets"] = []
    cfg = parse_config(data)
    workshop = Workshop(cfg)
    await workshop.start()
    rec = Recorder(broker.host, broker.port, f"{cfg.topic_root}/devices/knit-01/data")
    try:
        for round_ in (1, 2):
            collector = Collector(cfg, Settings())
            await collector.start()
            await rec.wait_for(lambda r=round_: len(rec.messages) >= 3 * r, 15, f"data in round {round_}")
            await collector.stop()
            await asyncio.sleep(0.2)
        seqs = [m.json()["seq"] for m in rec.messages]
        assert seqs == list(range(1, len(seqs) + 1)), seqs  # no reuse, no gap across the restart
    finally:
        rec.close()
        await workshop.stop()


def assert_demo_output(stdout: str) -> None:
    """What `collector demo --plain` prints on its last screen: the broker it used, the figures, every machine
    online (the S7-1200 line and the FX5U press on MC too) and the simulated banner."""
    assert "broker: external" in stdout
    assert "数字化设备联网率 D2" in stdout and "装备数控化率 D1: 77.7 %  [7/9]" in stdout
    assert "cnc-01" in stdout and "online" in stdout
    for dev in ("pack-01", "press-01"):
        lines = [ln for ln in stdout.splitlines() if dev in ln]
        assert lines and "online" in lines[-1], (dev, lines)
    assert "含模拟设备，不可用于评价" in stdout  # the demo counts its simulators, and says so


def retained_under(broker: MosquittoProcess, root: str) -> set[str]:
    """The retained topics (with a payload) under root/#: the broker sends them right after the SUBACK, so
    they are all in once none has come for a while."""
    rec = Recorder(broker.host, broker.port, f"{root}/#")
    try:
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 0.4:
            if len(rec.messages) != seen:
                seen, quiet_since = len(rec.messages), time.monotonic()
            time.sleep(0.05)
    finally:
        rec.close()
    return {m.topic for m in rec.messages if m.retain and m.payload}


def test_demo_exits_zero_after_its_duration_and_clears_its_retained_topics_on_a_broker_it_did_not_start(
        broker: MosquittoProcess, tmp_path: Path) -> None:
    """`make demo` on a developer's or plant's broker must not leave a demo workshop's statuses behind; with
    --keep-retained they stay (and show what was cleared otherwise). Other retained topics are untouched.
    Both runs go at once (each its own workshop, ports and state), and each exits 0 after its --duration."""
    from collector.demo_broker import clear_retained

    other = Recorder(broker.host, broker.port, "nothing/#")
    other.client.publish("plant/line-1/status", b'{"state": "online"}', qos=1, retain=True).wait_for_publish(5)
    other.close()

    roots: dict[bool, str] = {}
    runs: dict[bool, subprocess.Popen[str]] = {}
    try:
        for keep in (True, False):
            state = tmp_path / f"state-{keep}"
            state.mkdir()
            data = demo_on_free_ports(state, broker.port)
            data["site"]["workshop"] = f"ws-keep-{keep}".lower()
            path = tmp_path / f"demo-{keep}.yaml"
            path.write_text(yaml.safe_dump(data, allow_unicode=True))
            roots[keep] = parse_config(data).topic_root
            runs[keep] = subprocess.Popen(
                [sys.executable, "-m", "collector.cli", "demo", "-c", str(path), "--duration", "3", "--plain",
                 *(["--keep-retained"] if keep else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        outputs = {keep: run.communicate(timeout=60) for keep, run in runs.items()}
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.communicate()
    for keep, run in runs.items():
        assert run.returncode == 0, outputs[keep][1][-2000:]
        assert_demo_output(outputs[keep][0])
    kept_out, cleared_out = outputs[True][0], outputs[False][0]
    assert "cleared" not in kept_out
    kept_left = retained_under(broker, roots[True])
    # the demo's retained topics: gateway, per-device status and state, indicators
    assert f"{roots[True]}/gateway/status" in kept_left and f"{roots[True]}/devices/imm-01/status" in kept_left, kept_left
    assert f"{roots[True]}/indicators" in kept_left, kept_left
    kept = len(kept_left)
    assert retained_under(broker, roots[False]) == set()
    n = int(cleared_out.split("broker: cleared ")[1].split()[0])
    assert n >= kept - 2, (n, kept, cleared_out[-500:])  # about as many as the kept run left
    assert retained_under(broker, "plant") == {"plant/line-1/status"}  # not the demo's: left alone
    # the kept run's topics, cleared by the same function the demo uses
    assert len(clear_retained(broker.host, broker.port, f"{roots[True]}/#")) == kept
    assert retained_under(broker, roots[True]) == set()


def test_demo_without_its_extra_names_the_extra_to_install(tmp_path: Path) -> None:
    """A gateway install has neither rich nor amqtt: the demo says which extra brings them, no traceback."""
    code = ("import sys; sys.modules.update(rich=None, amqtt=None); from collector.cli import main; "
            "raise SystemExit(main(['demo', '--duration', '1']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "shopfloor-collector[demo]" in result.stderr and "missing: rich, amqtt" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_stopped_mosquitto_leaves_no_folder_behind_and_starts_again() -> None:
    from collector.demo_broker import Mosquitto, port_answers

    if not Mosquitto.available():
        import pytest
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    broker = Mosquitto(free_port())
    broker.start()
    assert (broker.dir / "mosquitto.conf").exists() and port_answers(broker.host, broker.port, 1.0)
    broker.stop()
    assert not broker.dir.exists()
    broker.start()  # a restart writes its throw-away config again
    assert port_answers(broker.host, broker.port, 1.0)
    broker.stop()
    assert not broker.dir.exists()
