"""The indicators' parameters (INDICATORS.md): targets, the shift calendar, and the evidence chain's anchoring."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from collector.config.base import DEFAULT_PORTS, Integer, Number, Strict, url_with_scheme

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class EvidenceHubConfig(Strict):
    """The hub's broker, the enterprise's credentials there and the hub's public key (docs/hub.md).

    The enterprise's 统一社会信用代码 is its MQTT user name and its topic level at the hub
    (`{topic_prefix}/{code}/evidence/…`, receipts on `{topic_prefix}/{code}/receipt`); the broker's ACL lets it
    publish only there. The password comes from `COLLECTOR_HUB_PASSWORD` or `password_file`, never from here."""

    url: str = Field(description="the hub's broker: mqtts://host[:8883] (a bare host:port means mqtts); plain "
                     "mqtt:// only to a loopback address or with allow_plaintext")
    username: str | None = Field(default=None, max_length=1024, description="default: site.credit_code")
    password_file: Path | None = Field(default=None, description="mode 0600; or env COLLECTOR_HUB_PASSWORD")
    public_key: str = Field(description="the hub's receipt key: the path of its evidence-key.pub or the base64 "
                            "`collector hub key` prints")
    fingerprint: str | None = Field(default=None, description="the hub key's fingerprint as the hub operator "
                                    "published it: public_key must match it")
    topic_prefix: str = "cityhub"
    enterprise: str | None = Field(default=None, description="the topic level: default site.credit_code (the "
                                   "broker's ACL ties it to the user name)")
    client_id: str | None = Field(default=None, min_length=1, max_length=256, description="default "
                                  "shopfloor-collector-{enterprise_id}-{workshop}-hub")
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    allow_plaintext: bool = Field(default=False, description="allow mqtt:// to a host off loopback (the "
                                  "password then crosses the network in clear)")
    keepalive: Integer = Field(default=30, ge=5, le=65535)
    session_expiry: Integer = Field(default=7 * 86400, ge=0, le=2**32 - 1, description="seconds the hub's "
                                    "broker keeps receipts for this collector while it is away")
    live_interval: Number = Field(default=60.0, ge=0, le=86400, description="seconds between the signed live "
                                  "snapshots sent to the hub (最近上报, 本月至今); 0: none")

    @field_validator("url", mode="before")
    @classmethod
    def _scheme(cls, v: object) -> object:
        if isinstance(v, str) and v and "://" not in v:
            return f"mqtts://{v}"  # TLS unless asked otherwise: the link crosses the Internet
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return url_with_scheme(v, ("mqtt", "mqtts"), "the hub's broker; use mqtts://hub.example:8883")

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#\0") or v.startswith(("/", "$")) or v.endswith("/"):
            raise ValueError(f"'{v}' is not a topic prefix: a plain path without + # $ or leading/trailing /, "
                             "as the hub's mqtt.topic_prefix (default cityhub)")
        return v

    @field_validator("enterprise")
    @classmethod
    def _level(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/+#\0")):
            raise ValueError(f"'{v}' is not one topic level: the enterprise's 统一社会信用代码, e.g. "
                             "91330402MA2B3C4D53")
        return v

    @field_validator("public_key")
    @classmethod
    def _key(cls, v: str) -> str:
        from collector.evidence.keys import KeyFileError, load_public

        try:
            load_public(v)
        except KeyFileError as exc:
            raise ValueError(f"{exc}; ask the hub operator for the output of `collector hub key` (a fingerprint "
                             "alone cannot check a signature: put it in evidence.hub.fingerprint)") from None
        return v

    @model_validator(mode="after")
    def _checks(self) -> EvidenceHubConfig:
        from collector.evidence.keys import KeyFileError, fingerprint, load_public, normal_fingerprint

        if self.fingerprint is not None:
            try:
                want = normal_fingerprint(self.fingerprint)
            except KeyFileError as exc:
                raise ValueError(f"fingerprint: {exc}") from None
            got = fingerprint(load_public(self.public_key))
            if got != want:
                raise ValueError(f"public_key has fingerprint {got}, not the fingerprint {self.fingerprint} given: "
                                 "the key file is not the hub's (ask the hub operator for `collector hub key`)")
        if self.scheme == "mqtt" and self.host not in LOOPBACK and not self.allow_plaintext:
            raise ValueError(f"url {self.url}: plain MQTT to {self.host} would send the enterprise's password in "
                             "clear; use mqtts://… (port 8883), or set allow_plaintext: true on a private network")
        if self.scheme == "mqtt" and (self.cert_file or self.key_file or self.ca_file):
            raise ValueError("ca_file, cert_file and key_file need an mqtts:// url")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (the client certificate and its key)")
        return self

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or DEFAULT_PORTS[parts.scheme]


class EvidenceConfig(Strict):
    """Anchoring the evidence chain (docs/indicators.md): where the signed chain heads are sent."""

    topic: str = Field(default="{root}/evidence/head", description="MQTT topic of the signed heads (retained, "
                       "QoS 1, through the outbox); {root}, {enterprise} and {workshop} are filled in")
    anchor_interval: Number = Field(default=86400.0, ge=60, le=7 * 86400,
                                    description="seconds between anchors of an unchanged "
                                   "head (a changed head is anchored at once)")
    hub: EvidenceHubConfig | None = Field(default=None, description="the city/county hub: the chain's records "
                                          "and heads go there through the outbox, its receipts come back "
                                          "(docs/hub.md, \"The enterprise side\")")

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v or any(c in v for c in "#+") or v.startswith("/"):
            raise ValueError(f"'{v}' is not a topic to publish to (no wildcards # +, no leading /)")
        try:
            v.format(root="r", enterprise="e", workshop="w")
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"'{v}': only {{root}}, {{enterprise}} and {{workshop}} can be filled in") from None
        return v



class IndicatorTargets(Strict):
    cnc_rate: Number = Field(default=0.70, ge=0, le=1)
    networking_rate: Number = Field(default=0.55, ge=0, le=1)


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SHIFT = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)-([01]?\d|2[0-4]):([0-5]\d)$")


class CalendarConfig(Strict):
    """Shift calendar (expected time of the 联网率 evidence rule): working days, shifts, holidays, 调休 days.

    A shift is `"HH:MM-HH:MM"`; one that ends at or before its start runs past midnight and belongs to the day
    it starts on. `workdays` are extra working days (调休补班) that override `working_days` and `holidays`.
    """

    working_days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS[:5]))
    shifts: list[str] = Field(min_length=1)
    holidays: list[dt.date] = Field(default_factory=list)
    workdays: list[dt.date] = Field(default_factory=list)

    @field_validator("shifts")
    @classmethod
    def _shift_form(cls, v: list[str]) -> list[str]:
        for s in v:
            if not _SHIFT.match(str(s).strip()):
                raise ValueError(f"shift '{s}' is not HH:MM-HH:MM (quote it in YAML, e.g. \"08:00-20:00\")")
        return [str(s).strip() for s in v]

    def shift_minutes(self) -> list[tuple[int, int]]:
        """Each shift as (start, end) minutes after the midnight of its day; end may exceed 1440."""
        out = []
        for s in self.shifts:
            m = _SHIFT.match(s)
            assert m is not None
            a = int(m[1]) * 60 + int(m[2])
            b = int(m[3]) * 60 + int(m[4])
            out.append((a, b if b > a else b + 1440))
        return out


class IndicatorConfig(Strict):
    """Parameters of INDICATORS.md (defset v1); seconds for durations."""

    publish_interval: Number = Field(default=60.0, ge=0.1, le=86400)
    bucket: Number = Field(default=300.0, ge=1, le=86400)
    coverage: Number = Field(default=0.80, ge=0, le=1)
    day_share: Number = Field(default=0.50, ge=0, le=1)
    stale_after: Number = Field(default=900.0, gt=0, le=30 * 86400)
    live_window: Number | None = Field(default=None, gt=0, le=7 * 86400, description="default 2 x bucket")
    scope: Literal["all", "key_process"] = "all"
    pledge: str | None = Field(default=None, description="企业承诺 text in the report footer (default: a standard "
                               "pledge in the report's language)")
    # Count devices whose identity says simulator (demos only): every output then carries SIMULATED_BANNER
    allow_simulated: bool = False
    targets: IndicatorTargets = Field(default_factory=IndicatorTargets)
    calendar: CalendarConfig | None = None

    @property
    def live_window_s(self) -> float:
        return self.live_window if self.live_window is not None else 2 * self.bucket


