"""Where readings go: the MQTT broker (JSON or Sparkplug B), InfluxDB, and the durable outbox in front of them."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator

from collector.config.base import DEFAULT_PORTS, Integer, Number, Strict, _not_a_bool, url_with_scheme


class SparkplugConfig(Strict):
    """Sparkplug B ids (docs/sparkplug.md); empty means the site's enterprise id and workshop."""

    group_id: str | None = None
    edge_node_id: str | None = None
    primary_host_id: str | None = Field(
        default=None, description="wait for this Primary Host Application's STATE (online) before NBIRTH, and "
        "end the session when it goes offline; data waits in the outbox (docs/sparkplug.md)")

    @field_validator("group_id", "edge_node_id", "primary_host_id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and (not v or len(v) > 128 or any(c in v for c in "/+#")):
            raise ValueError(f"'{v[:40]}' is not a Sparkplug id: it must be 1 to 128 characters without '/', '+' "
                             "or '#'")
        return v


TOPIC_PLACEHOLDERS = ("enterprise", "workshop")


class MqttConfig(Strict):
    url: str = "mqtt://127.0.0.1:1883"
    topic_root: str = Field(default="factory/{enterprise}/{workshop}", min_length=1, max_length=1024)
    format: Literal["json", "sparkplug"] = "json"
    sparkplug: SparkplugConfig = Field(default_factory=SparkplugConfig)
    qos: Annotated[Literal[0, 1], BeforeValidator(_not_a_bool)] = 1
    # MQTT sends strings with a 16-bit length: paho's network thread dies on longer ones, so bound them here
    client_id: str | None = Field(default=None, min_length=1, max_length=256)
    username: str | None = Field(default=None, max_length=1024)
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: Integer = Field(default=30, ge=5, le=65535, description="seconds; MQTT carries it in 16 "
                               "bits")
    max_inflight: Integer = Field(default=100, ge=1, le=65535)
    reconnect_max_delay: Integer = Field(default=10, ge=1, le=300, description="seconds; reconnects back off "
                                     "from 1 s up to this")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return url_with_scheme(v, ("mqtt", "mqtts"), "a broker URL; use mqtt://host:1883 or mqtts://host:8883")

    @field_validator("topic_root")
    @classmethod
    def _topic_root(cls, v: str) -> str:
        """A topic the collector publishes under: placeholders {enterprise} and {workshop} only, and no MQTT
        wildcard (a broker refuses a PUBLISH to `factory/#`, which looks like a dead link, not a bad config)."""
        try:
            fields = [(f, conv, spec) for _, f, spec, conv in string.Formatter().parse(v) if f is not None]
        except ValueError as exc:
            raise ValueError(f"'{v}': {exc} (write {{enterprise}} or {{workshop}}; a literal brace as {{{{ or }}}})") \
                from None
        for name, conv, spec in fields:
            if name not in TOPIC_PLACEHOLDERS or conv or spec:
                raise ValueError(f"'{v}': {{{name}}} is not a placeholder; use {{enterprise}} (site.enterprise_id) "
                                 "or {workshop} (site.workshop)")
        literal = "".join(text for text, *_ in string.Formatter().parse(v))
        bad = [c for c in ("#", "+", "\0") if c in literal]
        if bad:
            raise ValueError(f"'{v}': '{bad[0]}' is an MQTT wildcard (or not allowed) in a topic the collector "
                             "publishes to; write a plain path like factory/{enterprise}/{workshop}")
        return v

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or DEFAULT_PORTS[parts.scheme]

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"



class OutboxConfig(Strict):
    """Durable store-and-forward per sink (docs/outbox.md)."""

    max_bytes: Integer = Field(default=512 * 1024 * 1024, ge=1024, le=2**50, description="payload bytes per sink")
    max_age: Number = Field(default=7 * 86400.0, gt=0, le=3660 * 86400, description="seconds")
    fsync: bool = Field(default=False, description="fsync every commit (power-loss safe, slower)")
    commit_interval: Number = Field(default=0.05, ge=0.005, le=5)
    live_share: Number = Field(default=0.5, gt=0, le=1, description="share of the link live data gets while a "
                              "backlog drains")
    memory_max_bytes: Integer = Field(default=64 * 1024 * 1024, ge=65536, le=2**40, description="bytes per sink "
                                      "held in memory while the outbox cannot write its disk")



class InfluxConfig(Strict):
    """An InfluxDB 2.x (or any `/api/v2/write` server) sink; the token comes from env or a file."""

    url: str
    org: str = "shopfloor"
    bucket: str = "shopfloor"
    token_env: str = "COLLECTOR_INFLUX_TOKEN"
    token_file: Path | None = None
    measurement: str | None = Field(default=None, description="default: the device's template name, else "
                                    "'device'")
    batch_rows: Integer = Field(default=500, ge=1, le=100_000, description="outbox rows (device cycles) per HTTP write")
    gzip: bool = True
    timeout: Number = Field(default=10.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return url_with_scheme(v, ("http", "https"), "an HTTP URL; use http://host:8086")


