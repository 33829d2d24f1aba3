"""Config of `protocol: mc` devices (Mitsubishi MELSEC, MC protocol 3E binary frame over TCP)."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from adapters.mc import SCHEMES
from adapters.mc.address import MAX_NUMBER, McAddress, parse_address
from collector.config.base import (
    SUBPATH,
    DeviceBase,
    Endpoint,
    EndpointRule,
    Integer,
    Number,
    TagBase,
    other_protocol,
    url_with_scheme,
)

__all__ = ["DEFAULT_PORT", "ENDPOINT_RULE", "WORDS_PER_TYPE", "McDevice", "McTag", "parse_mc_endpoint", "tag_words"]

DEFAULT_PORT = 5000  # no standard port: the one most often opened for SLMP/MC in the CPU's Ethernet settings
WORDS_PER_TYPE = {"BOOL": 1, "INT": 1, "UINT": 1, "WORD": 1, "DINT": 2, "UDINT": 2, "DWORD": 2, "REAL": 2,
                  "LREAL": 4}
TYPES = "BOOL, INT, UINT, WORD, DINT, UDINT, DWORD, REAL, LREAL, STRING[n]"
_LIKELY = {"FLOAT": "REAL", "FLOAT32": "REAL", "DOUBLE": "LREAL", "FLOAT64": "LREAL", "INT16": "INT",
           "UINT16": "UINT", "INT32": "DINT", "UINT32": "UDINT", "BIT": "BOOL", "STR": "STRING[n]"}
_STRING = re.compile(r"^STRING\[(\d{1,4})\]$")
ENDPOINT_FORM = "mc://host:port (e.g. mc://192.168.3.39:5000)"
ENDPOINT_RULE = EndpointRule(schemes=SCHEMES, forms=ENDPOINT_FORM, what="an MC protocol endpoint",
                             ports={"mc": DEFAULT_PORT})


def parse_mc_endpoint(url: str) -> Endpoint:
    """`mc://host[:port]` -> Endpoint; ValueError with the expected form."""
    try:
        url_with_scheme(url, ("mc",), "an MC protocol endpoint")
    except ValueError as exc:
        hint = f"; did you mean mc://{url}?" if "://" not in url else ""
        raise ValueError(f"{exc}; use {ENDPOINT_FORM}{hint}") from None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return Endpoint("mc", parts.hostname or "", parts.port or DEFAULT_PORT)


def string_length(type_: str) -> int | None:
    m = _STRING.match(type_)
    return int(m.group(1)) if m else None


def tag_words(type_: str) -> int:
    """Words a value of `type_` spans (a STRING[n]: two characters a word)."""
    n = string_length(type_)
    return (n + 1) // 2 if n is not None else WORDS_PER_TYPE[type_]


class McTag(TagBase):
    """An MC tag: `address` as GX Works writes it (`D100`, `D100.3`, `M10`, `X1F`), `type` a PLC type."""

    address: str = Field(min_length=1, max_length=32)
    type: str | None = Field(default=None, description=f"{TYPES}; default BOOL for bits, INT for words")

    @field_validator("type", mode="before")
    @classmethod
    def _type_known(cls, v: Any) -> Any:
        if v is None:
            return v
        text = str(v).strip().upper().replace(" ", "")
        n = string_length(text)
        if text in WORDS_PER_TYPE or (n is not None and 1 <= n <= 1920):
            return text
        if text.startswith("STRING"):
            raise ValueError(f"'{v}': a string type gives its length in characters, STRING[1] to STRING[1920]")
        hint = f"; did you mean {_LIKELY[text]}?" if text in _LIKELY else ""
        raise ValueError(f"'{v}' is not an MC tag type; use one of {TYPES}{hint}")

    def parsed(self, xy_base: int = 16) -> McAddress:
        return parse_address(self.address, xy_base)

    def value_type(self, xy_base: int = 16) -> str:
        """The type, with the default filled in from the address."""
        return self.type or ("BOOL" if self.parsed(xy_base).is_bit else "INT")

    def problem(self, xy_base: int) -> str | None:
        """What is wrong with the address or its fit with the type (None when it is fine)."""
        try:
            addr = self.parsed(xy_base)
        except ValueError as exc:
            return str(exc)
        type_ = self.value_type(xy_base)
        if addr.is_bit and type_ != "BOOL":
            what = f"{addr.device.name} is a bit device" if addr.device.is_bit else f"{self.address} is one bit"
            return f"{what}: its type must be BOOL (or leave type: out); a {type_} lives in word devices (D, W, R, ...)"
        if not addr.is_bit and type_ == "BOOL":
            return (f"{self.address} is a word: a BOOL picks one of its bits, write {self.address}.0 to "
                    f"{self.address}.F")
        if addr.number + tag_words(type_) - 1 > MAX_NUMBER:
            return f"a {type_} at {self.address} runs past device number {MAX_NUMBER}"
        if self.write.writable and addr.device.name == "X":
            return ("write.allowed: X is an input, read-only (the CPU refreshes it from the input modules every "
                    "scan); write a Y, M, D, ... address")
        return None

    @property
    def write_type(self) -> str:
        """The type with the address's default filled in (BOOL for `M10`): what a written value must fit."""
        return self.value_type()


class McDevice(DeviceBase):
    """A Mitsubishi PLC (Q, L, iQ-R, FX5/iQ-F) or an MC-speaking module, read with the 3E binary frame."""

    endpoint_rule: ClassVar[EndpointRule] = ENDPOINT_RULE

    protocol: Literal["mc"] = "mc"
    timeout: Number = Field(default=2.0, gt=0, le=60, description="seconds per request (also the PLC's "
                            "monitoring timer)")
    network: Integer = Field(default=0, ge=0, le=255, description="network number (0: the connected station)")
    pc: Integer = Field(default=0xFF, ge=0, le=255, description="PC number (255: the connected station)")
    module_io: Integer = Field(default=0x03FF, ge=0, le=0xFFFF, description="request destination module I/O no.")
    station: Integer = Field(default=0, ge=0, le=255, description="request destination module station no.")
    xy_notation: Literal["hex", "octal"] = "hex"
    max_points: Integer = Field(default=960, ge=1, le=960, description="words per batch read (3E: 960)")
    max_gap: Integer = Field(default=32, ge=0, le=960, description="unused words a read may span to join tags")
    tags: list[McTag] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str, info: Any) -> str:
        """Replaces DeviceBase's, for the port-range message; names another protocol's scheme as the base does."""
        try:
            parse_mc_endpoint(v)
        except ValueError as exc:
            raise ValueError(f"{exc}{other_protocol(v, cls)}") from None
        return v

    @property
    def parsed_endpoint(self) -> Endpoint:
        return parse_mc_endpoint(self.endpoint)

    @property
    def xy_base(self) -> int:
        return 8 if self.xy_notation == "octal" else 16

    @model_validator(mode="after")
    def _check_addresses(self) -> McDevice:
        """Every malformed address, each under its tag's path and naming the tag."""
        problems = []
        for j, tag in enumerate(self.tags):
            problem = tag.problem(self.xy_base)
            if problem:
                problems.append(f"{SUBPATH}tags[{j}].address: tag '{tag.name}': {problem}")
        if problems:
            raise ValueError("\n".join(problems))
        return self
