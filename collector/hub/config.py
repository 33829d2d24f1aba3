"""hub.yaml: where the hub's database, broker, key and page are. Secrets (the broker password, a database
password) come from the environment or a file, never from this file; errors name the field and the fix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from collector.config.errors import ConfigError, plain_errors
from collector.hub.bulletin import JIAXING


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HubMqtt(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str = "hub"
    password_file: Path | None = None  # else HUB_MQTT_PASSWORD; mode 0600
    client_id: str = "hub-1"  # one per hub process: its persistent session keeps what it has not yet acked
    topic_prefix: str = "cityhub"
    group: str = "hub"  # the shared-subscription group: $share/{group}/{topic_prefix}/+/evidence/#
    session_expiry_s: int = Field(default=7 * 86400, ge=0)
    keepalive_s: int = Field(default=30, ge=5)
    ca_file: Path | None = None  # TLS to the broker when set

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/") or v.startswith("$"):
            raise ValueError("topic_prefix must be a plain topic (no +, #, $ or leading/trailing /), e.g. cityhub")
        return v


class HubHttp(_Strict):
    listen: str | None = "127.0.0.1:8322"  # null: no page

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("listen must be HOST:PORT, e.g. 127.0.0.1:8322")
        return v


class HubConfig(_Strict):
    name: str = "嘉兴市"  # the city (or county) this hub reports for; the bulletin's title
    hub_id: str = "jiaxing-hub"  # names the hub in its receipts
    database: str = "postgresql://postgres@127.0.0.1:5432/hub"  # HUB_DATABASE_URL overrides
    state_dir: Path = Path("/var/lib/collector-hub")  # the hub's signing key (evidence-key.pem, 0600)
    counties: list[str] = Field(default_factory=lambda: list(JIAXING))
    mqtt: HubMqtt = Field(default_factory=HubMqtt)
    http: HubHttp = Field(default_factory=HubHttp)
    batch: int = Field(default=200, ge=1, le=10000)  # messages per database transaction
    # a demo hub only: pool the figures of enterprises that count simulated devices, under the banner
    # 含模拟设备，不可用于评价 (they are listed either way); a real hub leaves them out of the pooled figures
    count_simulated: bool = False

    @field_validator("counties")
    @classmethod
    def _counties(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("counties must list each county once (default: Jiaxing's nine)")
        return v

    def database_url(self) -> str:
        return os.environ.get("HUB_DATABASE_URL") or self.database

    def mqtt_password(self) -> str | None:
        env = os.environ.get("HUB_MQTT_PASSWORD")
        if env:
            return env
        if self.mqtt.password_file is None:
            return None
        path = self.mqtt.password_file
        try:
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise ConfigError("hub.yaml", [f"mqtt.password_file: {path} has mode {mode:o}; `chmod 600 {path}`"])
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError("hub.yaml", [f"mqtt.password_file: cannot read {path} ({exc.strerror})"]) from None


def parse_hub_config(data: Any, source: str = "hub.yaml") -> HubConfig:
    try:
        return HubConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(source, plain_errors(exc, HubConfig)) from None


def load_hub_config(path: str | Path) -> HubConfig:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read config: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(p), [f"not YAML: {exc}"]) from None
    return parse_hub_config(data, str(p))
