"""Config models of `protocol: s7` devices and their tags (docs/s7.md, adapters/s7/README.md).

The endpoint is `s7://host[:102][?rack=0&slot=1]` or, for CPUs reached by TSAP (S7-200 SMART, LOGO!, a CP),
`s7://host?local_tsap=0x1000&remote_tsap=0x0300`. Rack and slot default by `family`: S7-300 0/2, S7-400 0/3
(check the CPU's slot in HW Config), S7-1200/1500 0/1; an S7-200 SMART uses TSAPs 0x1000/0x0300.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, PrivateAttr, field_validator, model_validator

from adapters.s7 import SCHEMES
from adapters.s7.address import S7Location, parse_address
from collector.config.base import DeviceBase, Endpoint, EndpointRule, Integer, Number, TagBase, other_protocol

__all__ = ["ENDPOINT_RULE", "FAMILY_DEFAULTS", "S7Device", "S7Tag", "parse_s7_endpoint"]

S7_FORMS = "s7://host[:102][?rack=0&slot=1] or s7://host?local_tsap=0x1000&remote_tsap=0x0300"
S7_PORT = 102
ENDPOINT_RULE = EndpointRule(schemes=SCHEMES, forms=S7_FORMS, what="an S7 endpoint", ports={"s7": S7_PORT})
S7Family = Literal["s7-200smart", "s7-300", "s7-400", "s7-1200", "s7-1500"]
# family -> (rack, slot) or (local TSAP, remote TSAP) when it connects by TSAP
FAMILY_DEFAULTS: dict[str, tuple[int, int]] = {"s7-300": (0, 2), "s7-400": (0, 3), "s7-1200": (0, 1),
                                               "s7-1500": (0, 1)}
TSAP_DEFAULTS: dict[str, tuple[int, int]] = {"s7-200smart": (0x1000, 0x0300)}
_QUERY_KEYS = ("rack", "slot", "local_tsap", "remote_tsap")


def _number(url: str, key: str, text: str, top: int) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value <= top:
        raise ValueError(f"'{url}': {key}={text} must be a number from 0 to {top}"
                         + (" (hex like 0x0300 is fine)" if "tsap" in key else ""))
    return value


def parse_s7_endpoint(url: str) -> tuple[Endpoint, dict[str, int]]:
    """`s7://host[:port]?rack=&slot=&local_tsap=&remote_tsap=` -> (endpoint, the given query numbers)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s7" or not parts.hostname:
        hint = f"; did you mean s7://{url}?" if "://" not in url else ""
        raise ValueError(f"'{url}' is not an S7 endpoint; use {S7_FORMS}{hint}")
    try:
        port = parts.port or S7_PORT
    except ValueError as exc:
        raise ValueError(f"'{url}': {exc}") from None
    numbers: dict[str, int] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _QUERY_KEYS:
            raise ValueError(f"'{url}': unknown parameter '{key}'; use {', '.join(_QUERY_KEYS)}")
        numbers[key] = _number(url, key, value, {"rack": 7, "slot": 31}.get(key, 0xFFFF))
    if ("local_tsap" in numbers) != ("remote_tsap" in numbers):
        raise ValueError(f"'{url}': give both local_tsap and remote_tsap, or neither")
    if "remote_tsap" in numbers and ("rack" in numbers or "slot" in numbers):
        raise ValueError(f"'{url}': rack/slot and TSAPs both choose the remote TSAP: give one of them")
    return Endpoint("s7", parts.hostname, port, "", {k: str(v) for k, v in numbers.items()}), numbers


class S7Tag(TagBase):
    """An S7 tag: `address` as in STEP 7 / TIA Portal (`DB10.DBD4`, `MW20`, `I0.0`, `VD104`), `type` an S7
    type (`REAL`, `INT`, `STRING[20]`, ...) when the operand size's default (BOOL/BYTE/WORD/DWORD) is not it."""

    address: str = Field(min_length=1, max_length=64)
    type: str | None = Field(default=None, max_length=32)
    _loc: S7Location | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _parse(self) -> S7Tag:
        try:
            self._loc = parse_address(self.address, self.type)
        except ValueError as exc:
            raise ValueError(f"tag '{self.name}': {exc}") from None
        if self.write.writable and self._loc.area == "I":
            raise ValueError(f"tag '{self.name}': write.allowed: {self.address} is an input (I/E), read-only (the "
                             "CPU refreshes it from the input modules every cycle); write a DB, M or Q address")
        return self

    @property
    def location(self) -> S7Location:
        assert self._loc is not None  # set by validation
        return self._loc

    @property
    def write_type(self) -> str:
        """The S7 type, the operand size's default filled in (BOOL for `M10.1`): what a written value must fit."""
        return self.location.type


class S7Device(DeviceBase):
    """A Siemens S7 CPU (S7-200 SMART, 300, 400, 1200, 1500) over ISO-on-TCP (port 102)."""

    endpoint_rule: ClassVar[EndpointRule] = ENDPOINT_RULE

    protocol: Literal["s7"] = "s7"
    family: S7Family = "s7-1200"
    timeout: Number = Field(default=2.0, gt=0, le=600, description="seconds per request")
    pdu_size: Integer = Field(default=480, ge=240, le=960, description="PDU size asked for; the CPU may "
                              "negotiate a smaller one")
    max_gap: Integer = Field(default=32, ge=0, le=1000, description="bytes of a hole still read to join "
                             "two tags into one item")
    coalesce: bool = True
    string_encoding: str = Field(default="gbk", description="code page of STRING/CHAR bytes")
    tags: Annotated[list[S7Tag], Field(min_length=1)]

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str, info: Any) -> str:
        """Overrides DeviceBase's: besides the rule's scheme and port, the rack/slot/TSAP query is checked."""
        try:
            parse_s7_endpoint(v)
        except ValueError as exc:
            raise ValueError(f"{exc}{other_protocol(v, cls)}") from None
        return v

    @field_validator("string_encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        import codecs

        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"'{v}' is not a known text encoding (e.g. gbk, utf-8, latin-1)") from None
        return v

    @property
    def parsed_endpoint(self) -> Endpoint:
        return parse_s7_endpoint(self.endpoint)[0]

    @property
    def connection(self) -> tuple[int, int, int, int]:
        """(local TSAP, remote TSAP, rack, slot): explicit TSAPs, else rack/slot from the endpoint or the
        family's defaults (the remote TSAP of a PG connection is 0x0100 | rack << 5 | slot)."""
        numbers = parse_s7_endpoint(self.endpoint)[1]
        if "remote_tsap" in numbers:
            return numbers["local_tsap"], numbers["remote_tsap"], 0, 0
        if self.family in TSAP_DEFAULTS and "rack" not in numbers and "slot" not in numbers:
            local, remote = TSAP_DEFAULTS[self.family]
            return local, remote, 0, 0
        rack, slot = FAMILY_DEFAULTS.get(self.family, (0, 1))
        rack, slot = numbers.get("rack", rack), numbers.get("slot", slot)
        return 0x0100, 0x0100 | rack << 5 | slot, rack, slot
