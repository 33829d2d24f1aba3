"""The site (who the collector belongs to) and its HTTP endpoint: plain models that need no protocol plugin, so
the hub, the reports and the live figures can use them without loading any adapter."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from collector.config.base import Integer, Number, Strict
from collector.credit_code import credit_code_problem


class SiteConfig(Strict):
    enterprise_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    enterprise_name: str | None = None
    credit_code: str | None = Field(default=None, description="统一社会信用代码 (GB 32100-2015, 18 characters, "
                                    "check character verified): shown in the report header")
    county: str | None = None
    city: str | None = None
    workshop: str = Field(default="main", max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    timezone: str = "Asia/Shanghai"

    @field_validator("credit_code")
    @classmethod
    def _credit_code(cls, v: str | None) -> str | None:
        if v is None:
            return None
        code = v.strip().upper()
        problem = credit_code_problem(code)
        if problem:
            raise ValueError(f"'{v}' {problem}; copy it from the business licence (营业执照)")
        return code

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone '{v}'; use an IANA name like Asia/Shanghai") from None
        return v



class HttpConfig(Strict):
    """The status page, /healthz, /metrics and the JSON API (docs/operations.md).

    On by default: a gateway runs unattended and this is how its keepers see it works. The token (env
    `COLLECTOR_HTTP_TOKEN` or `token_file`) is required when `listen` is not a loopback address.
    """

    listen: str = "127.0.0.1:8321"
    enabled: bool = True
    token_file: Path | None = None
    stall_after: Number = Field(default=120.0, gt=0, le=7 * 86400, description="/healthz fails when a non-empty outbox has "
                               "delivered nothing for this many seconds")
    allowed_hosts: list[str] = Field(default_factory=list, description="host names (no port) a request's Host "
                                     "may carry besides the listen host, localhost, 127.0.0.1 and [::1]")
    header_timeout: Number = Field(default=10.0, gt=0, le=300, description="seconds a new connection has to "
                                  "send a complete request head")
    idle_timeout: Number = Field(default=30.0, gt=0, le=3600, description="seconds a kept-alive connection may "
                                "wait for its next request")
    max_connections: Integer = Field(default=256, ge=4, le=65536, description="open connections at most (also "
                                 "bounded by the file-descriptor limit); the oldest idle one makes room")

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, v: list[str]) -> list[str]:
        out = []
        for name in v:
            host = name.strip().lower()
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            if not host or any(c in host for c in "/ @") or (":" in host and host.count(":") < 2):
                raise ValueError(f"'{name}' is not a host name: give the name or address alone, without scheme "
                                 "or port (e.g. gateway-07.plant.local, 192.168.10.7)")
            out.append(host)
        return out

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"'{v}' is not host:port (e.g. 127.0.0.1:8321, 0.0.0.0:8321, [::1]:8321)")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def loopback(self) -> bool:
        import ipaddress

        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
