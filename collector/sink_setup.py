"""The sinks a config asks for, built in one place: the MQTT connection, its control publisher, and the list of
outbox sinks that the wiring (collector/app.py) loops over without naming any of them.

This is the one module that reads the sink sections of the config (`mqtt`, `influx`, `evidence`, `evidence.hub`)
and the `COLLECTOR_MQTT_*` / `COLLECTOR_HUB_PASSWORD` settings: the sinks themselves import only
`collector.model` (tests/test_layering_sinks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from collector.config import CollectorConfig, MqttConfig, Settings, read_secret
from collector.sinks.base import Sink
from collector.sinks.control import ControlPublisher
from collector.sinks.evidence import EvidenceSink
from collector.sinks.hub import HubEvidenceSink
from collector.sinks.influx import InfluxSettings, InfluxSink
from collector.sinks.mqtt import MqttConnection, MqttSettings
from collector.sinks.mqtt_data import MqttDataSink


def mqtt_settings(cfg: CollectorConfig, settings: Settings) -> MqttSettings:
    """Resolve the broker settings: the config, then `COLLECTOR_*` overrides; the password only from env/file."""
    m = cfg.mqtt
    if settings.mqtt_url:
        m = MqttConfig.model_validate({**m.model_dump(), "url": settings.mqtt_url})
    password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else read_secret(
        None, m.password_file)
    return MqttSettings(
        host=m.host, port=m.port, topic_root=cfg.topic_root, qos=m.qos,
        client_id=m.client_id or f"shopfloor-collector-{cfg.site.enterprise_id}-{cfg.site.workshop}",
        username=settings.mqtt_username or m.username, password=password, tls=m.tls,
        ca_file=str(m.ca_file) if m.ca_file else None, cert_file=str(m.cert_file) if m.cert_file else None,
        key_file=str(m.key_file) if m.key_file else None, keepalive=m.keepalive, max_inflight=m.max_inflight,
        reconnect_max_delay=m.reconnect_max_delay,
    )


def influx_settings(cfg: CollectorConfig) -> InfluxSettings:
    """The InfluxDB sink's settings; the token only from env or file."""
    ic = cfg.influx
    assert ic is not None
    measurements = {d.id: ic.measurement or d.template or "device" for d in cfg.devices}
    return InfluxSettings(url=ic.url, org=ic.org, bucket=ic.bucket, token=read_secret(ic.token_env, ic.token_file),
                          enterprise=cfg.site.enterprise_id, workshop=cfg.site.workshop, measurements=measurements,
                          batch_rows=ic.batch_rows, gzip=ic.gzip, timeout=ic.timeout)


HUB_PASSWORD_ENV = "COLLECTOR_HUB_PASSWORD"


def hub_settings(cfg: CollectorConfig) -> MqttSettings:
    """The hub broker's settings (`evidence.hub`): MQTT 5 with a persistent session for the receipts, the
    enterprise's user name (default its 统一社会信用代码), the password only from env or file."""
    h = cfg.evidence.hub
    assert h is not None
    return MqttSettings(
        host=h.host, port=h.port, topic_root=cfg.topic_root, qos=1,
        client_id=h.client_id or f"shopfloor-collector-{cfg.site.enterprise_id}-{cfg.site.workshop}-hub",
        username=h.username or cfg.hub_enterprise, password=read_secret(HUB_PASSWORD_ENV, h.password_file),
        tls=h.scheme == "mqtts", ca_file=str(h.ca_file) if h.ca_file else None,
        cert_file=str(h.cert_file) if h.cert_file else None, key_file=str(h.key_file) if h.key_file else None,
        keepalive=h.keepalive, max_inflight=HubEvidenceSink.WINDOW, reconnect_max_delay=cfg.mqtt.reconnect_max_delay,
        mqtt5=True, session_expiry=h.session_expiry, log_name="hub")


@dataclass
class SinkSet:
    """What `build_sinks` makes: the connection (started and stopped by the collector), the control topics'
    publisher, and the outbox sinks, the MQTT data sink first (its link is the one /healthz reports)."""

    mqtt: MqttConnection
    control: ControlPublisher
    sinks: list[Sink]
    hub: HubEvidenceSink | None = None  # on its own connection; its receipts go to `hub.on_receipt`


def build_sinks(cfg: CollectorConfig, settings: Settings, state_dir: Path) -> SinkSet:
    """`mqtt.format` picks the data sink on the connection: JSON (docs/mqtt.md) or a Sparkplug B edge node
    (docs/sparkplug.md); the evidence sink rides the same connection; `influx:` adds an InfluxDB sink."""
    conn = MqttConnection(mqtt_settings(cfg, settings))
    data: Sink
    if cfg.mqtt.format == "sparkplug":
        from collector.sinks.sparkplug import SparkplugSettings, SparkplugSink

        sp = cfg.mqtt.sparkplug
        # built before the control publisher: its NDEATH goes out before the offline gateway status
        data = SparkplugSink(conn, SparkplugSettings(group_id=sp.group_id or cfg.site.enterprise_id,
                                                     edge_node_id=sp.edge_node_id or cfg.site.workshop,
                                                     state_file=state_dir / "sparkplug.json",
                                                     primary_host_id=sp.primary_host_id))
        control = ControlPublisher(conn, gateway_status=False)  # NBIRTH says online; the will is NDEATH
    else:
        control = ControlPublisher(conn)
        data = MqttDataSink(conn)
    sinks: list[Sink] = [data, EvidenceSink(conn, cfg.evidence_topic)]
    if cfg.influx is not None:
        sinks.append(InfluxSink(influx_settings(cfg)))
    hub = None
    if cfg.evidence.hub is not None:
        enterprise = cfg.hub_enterprise
        assert enterprise is not None  # the config requires it
        hub = HubEvidenceSink(MqttConnection(hub_settings(cfg)), cfg.evidence.hub.topic_prefix, enterprise,
                              cfg.site.workshop)
        sinks.append(hub)
    return SinkSet(conn, control, sinks, hub)
