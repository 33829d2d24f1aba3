"""`MqttConnection.stop` when a closing hook's publish failed: the link dropped while the hooks sent (seen under
load in CI: `collector run` exited 1 after SIGTERM with paho's "The client is not currently connected")."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pytest

from collector.sinks.mqtt import MqttConnection, MqttSettings
from tests.support.broker import MosquittoProcess, free_port


async def test_stop_returns_when_a_closing_publish_failed() -> None:
    if not MosquittoProcess.available():
        pytest.fail("mosquitto is not installed: `apt-get install mosquitto` (.ci/run does it)")
    broker = MosquittoProcess(free_port())
    broker.start()
    conn = MqttConnection(MqttSettings(host="127.0.0.1", port=broker.port, topic_root="t/stop"))
    try:
        await conn.start(wait=5.0)
        assert conn.connected
        failed = mqtt.MQTTMessageInfo(1)
        failed.rc = mqtt.MQTT_ERR_NO_CONN  # what paho hands back for a publish while the link is down
        with pytest.raises(RuntimeError):
            failed.is_published()  # paho raises here: stop() must not
        conn.closing_hooks.append(lambda: failed)
        started = time.monotonic()
        await conn.stop(wait=3.0)
        assert time.monotonic() - started < 2.0  # a failed publish is settled: nothing to wait for
    finally:
        broker.stop()
