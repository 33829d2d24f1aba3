"""The control topics: retained device statuses, the gateway status (and its will), the indicator snapshot and
the monthly records, published directly on the MQTT connection (QoS 1), never through the outbox: when no
broker is connected they are lost, and the collector republishes them at every (re)connect (docs/mqtt.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from collector.sinks.mqtt import MqttConnection, Will, iso

log = logging.getLogger("collector.sinks.mqtt")


class ControlPublisher:
    """The JSON control topics under `{root}`. `gateway_status=False` (a Sparkplug node, whose will is NDEATH)
    publishes no retained `online`: it would outlive a crash. The offline status at shutdown is sent in both."""

    def __init__(self, conn: MqttConnection, gateway_status: bool = True) -> None:
        self.conn = conn
        self.root = conn.root
        self.gateway_status = gateway_status
        self.gateway_info: Callable[[], dict[str, Any]] | None = None  # what the gateway status carries too
        if gateway_status:
            conn.set_will(self.will())
        conn.on_connect_hooks.append(self.publish_gateway)
        conn.closing_hooks.append(self._offline)

    @property
    def gateway_topic(self) -> str:
        return f"{self.root}/gateway/status"

    def device_topic(self, device: str, kind: str) -> str:
        return f"{self.root}/devices/{device}/{kind}"

    def will(self) -> Will:
        """The gateway's offline status, sent by the broker when the connection is lost."""
        return self.gateway_topic, orjson.dumps({"state": "offline", "reason": "connection lost"}), 1, True

    def _offline(self) -> mqtt.MQTTMessageInfo:
        """At shutdown: the retained offline status, which the connection waits for before it disconnects."""
        payload = {"state": "offline", "reason": "shutdown", "ts": iso(time.time())}
        return self.conn.client.publish(self.gateway_topic, orjson.dumps(payload), qos=1, retain=True)

    @property
    def connected(self) -> bool:
        return self.conn.connected

    def publish_json(self, topic: str, payload: dict[str, Any], retain: bool = False, qos: int = 1) -> None:
        self.conn.publish(topic, orjson.dumps(payload), qos=qos, retain=retain)

    def publish_gateway(self) -> None:
        """The retained gateway status: `online` plus what `gateway_info` adds (outbox figures, counts)."""
        if not self.gateway_status:
            return
        payload: dict[str, Any] = {"state": "online", "ts": iso(time.time())}
        if self.gateway_info is not None:
            payload.update(self.gateway_info())
        self.publish_json(self.gateway_topic, payload, retain=True)

    def publish_status(self, status: dict[str, Any]) -> None:
        payload = {
            "device": status["device"],
            "state": status["state"],
            "since": iso(status.get("since")),
            "reason": status.get("reason"),
            "last_good_data": iso(status.get("last_good")),
            "ts": iso(time.time()),
        }
        self.publish_json(self.device_topic(status["device"], "status"), payload, retain=True)

    def publish_indicators(self, snapshot: dict[str, Any]) -> None:
        self.publish_json(f"{self.root}/indicators", snapshot, retain=True)

    def publish_monthly(self, record: dict[str, Any]) -> None:
        """A closed month's signed record, retained under `{root}/indicators/monthly/YYYY-MM`."""
        self.publish_json(f"{self.root}/indicators/monthly/{record['body']['period']['label']}", record,
                          retain=True)
