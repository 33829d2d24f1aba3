"""Modbus config models: the device, its tags, and the wire constants its codec and planner share.

Built on the core's config base (collector/config/base.py); this module is what `protocol: modbus` in the YAML
validates against (README.md beside it lists every option).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from adapters.modbus import SCHEMES
from collector.config.base import (
    SUBPATH,
    DeviceBase,
    EndpointRule,
    Integer,
    Number,
    TagBase,
    _not_a_bool,
    write_table_problem,
)

ENDPOINT_RULE = EndpointRule(
    schemes=SCHEMES,
    forms="tcp://host:port, rtu+tcp://host:port or serial:///dev/ttyUSB0?baudrate=9600&parity=N",
    what="a Modbus endpoint",
    ports={"tcp": 502, "rtu+tcp": 502},
)


ModbusTable = Literal["coil", "discrete_input", "input_register", "holding_register"]
ModbusType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string", "raw"
]
ByteOrder = Literal["ABCD", "BADC", "CDAB", "DCBA"]
BYTE_ORDER_ALIASES = {"ABCDEFGH": "ABCD", "BADCFEHG": "BADC", "GHEFCDAB": "CDAB", "HGFEDCBA": "DCBA",
                      "AB": "ABCD", "BA": "BADC"}
REGISTERS_PER_TYPE = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2,
                      "int64": 4, "uint64": 4, "float64": 4}
CLASSIC_TABLES: dict[int, ModbusTable] = {0: "coil", 1: "discrete_input", 3: "input_register",
                                          4: "holding_register"}
BIT_TABLES = ("coil", "discrete_input")


def parse_classic_register(value: int | str, address_base: int) -> tuple[ModbusTable, int]:
    """Turn `40001` / `400001` / `30001` / `10001` / `00001` into (table, 0-based wire address)."""
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError(f"register '{value}' is not a classic Modbus reference like 40001 or 400001")
    n = int(text)
    six = len(text) == 6 or n >= 100000
    table_digit, offset = (n // 100000, n % 100000) if six else (n // 10000, n % 10000)
    if table_digit not in CLASSIC_TABLES:
        raise ValueError(f"register '{value}': the first digit must be 0 (coil), 1 (discrete input), "
                         "3 (input register) or 4 (holding register)")
    address = offset - address_base
    if address < 0:
        raise ValueError(f"register '{value}' is below the first register with address_base {address_base}")
    return CLASSIC_TABLES[table_digit], address


def _size(type_: str | None, count: int | None) -> int:
    if type_ in ("string", "raw"):
        return count or 1
    return REGISTERS_PER_TYPE.get(type_ or "uint16", 1)



class ModbusTag(TagBase):
    """A Modbus tag. Give `table` + `address` (0-based, as on the wire) or a classic `register` (40001)."""

    type: ModbusType = "uint16"
    count: Integer | None = Field(default=None, ge=1, le=125, description="registers of a string or raw tag")
    bit: Integer | None = Field(default=None, ge=0, le=15)
    byte_order: ByteOrder | None = None
    table: ModbusTable | None = None
    address: Integer | None = Field(default=None, ge=0, le=65535)
    register_ref: int | str | None = Field(default=None, alias="register")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("byte_order", mode="before")
    @classmethod
    def _alias_byte_order(cls, v: Any) -> Any:
        return BYTE_ORDER_ALIASES.get(str(v).upper(), str(v).upper()) if v is not None else v

    @field_validator("address")
    @classmethod
    def _address_fits(cls, v: int | None, info: ValidationInfo) -> int | None:
        size = _size(info.data.get("type"), info.data.get("count"))
        if v is not None and v + size - 1 > 65535:
            raise ValueError(f"address {v} + {size} registers runs past the last address 65535")
        return v

    def register_count(self) -> int:
        """How many 16-bit registers (or bits, for coils) the tag occupies."""
        return _size(self.type, self.count)

    @model_validator(mode="after")
    def _check_address(self) -> ModbusTag:
        if (self.address is None) == (self.register_ref is None):
            raise ValueError("give either table + address (0-based) or a classic register like 40001")
        if self.address is not None and self.table is None:
            raise ValueError("an address needs a table: coil, discrete_input, input_register or holding_register")
        if self.type in ("string", "raw") and self.count is None:
            raise ValueError(f"tag '{self.name}': a {self.type} tag needs count: the number of registers it spans")
        problem = self.table_problem()
        if problem:
            raise ValueError(f"tag '{self.name}': {problem}")
        return self

    def table_problem(self) -> str | None:
        """What does not fit between the tag's type, `bit` and its table (None when it fits or no table yet)."""
        if self.table is None:
            return None
        if problem := write_table_problem(self.table, self.write):
            return problem
        if self.table in BIT_TABLES:
            if self.type != "bool":
                return f"a {self.table} holds bits: its type must be bool"
            if self.bit is not None:
                return f"a {self.table} holds one bit per address: remove bit:"
            return None
        if self.bit is not None and self.type != "bool":
            return f"bit: picks one bit of a register for type bool; a {self.type} tag has no bit (remove it)"
        if self.type == "bool" and self.bit is None:
            return f"a bool in a {self.table} needs bit: 0..15 (which bit of the register)"
        return None



class ModbusDevice(DeviceBase):
    protocol: Literal["modbus"] = "modbus"
    unit_id: Integer = Field(default=1, ge=0, le=255)
    address_base: Annotated[Literal[0, 1], BeforeValidator(_not_a_bool)] = 1
    byte_order: ByteOrder = "ABCD"
    timeout: Number = Field(default=1.0, gt=0, le=600)
    retries: Integer = Field(default=1, ge=0, le=10)
    inter_request_delay: Number = Field(default=0.0, ge=0, le=60)
    pause_after_connect: Number = Field(default=0.0, ge=0, le=60)
    max_gap: Integer | None = Field(default=None, ge=0, le=125, description="registers (or bits) of hole a "
                                    "request may read over; unset: from the link's cost model (planner.py)")
    max_registers: Integer = Field(default=125, ge=1, le=125)
    max_bits: Integer = Field(default=2000, ge=1, le=2000)
    coalesce: bool = True
    max_outstanding: Integer = Field(default=1, ge=1, le=32, description="requests of one poll cycle in flight "
                                     "at once (Modbus TCP only)")
    degrade_after: Integer = Field(default=3, ge=1, le=1000)
    degrade_for: Number = Field(default=30.0, ge=0, le=86400, description="seconds; a degraded device is "
                               "probed again after this")
    tags: list[ModbusTag] = Field(min_length=1)
    # Read once per connect and once a day as identity evidence (a serial-number register), never polled
    identity: list[ModbusTag] = Field(default_factory=list)

    endpoint_rule: ClassVar[EndpointRule] = ENDPOINT_RULE

    @field_validator("byte_order", mode="before")
    @classmethod
    def _alias_byte_order(cls, v: Any) -> Any:
        return BYTE_ORDER_ALIASES.get(str(v).upper(), str(v).upper())

    def config_warnings(self, where: str) -> list[str]:
        from adapters.modbus.lint import device_warnings

        return device_warnings(where, self)

    @model_validator(mode="after")
    def _pipelining(self) -> ModbusDevice:
        """Several outstanding requests need transaction ids (Modbus TCP) and a device that takes requests back
        to back; RTU matches an answer to the one request on the line, so it can never have more than one."""
        if self.max_outstanding > 1:
            scheme = self.endpoint.split("://", 1)[0].lower()
            if scheme != "tcp":
                raise ValueError(f"{SUBPATH}max_outstanding: {self.max_outstanding} needs a tcp:// endpoint (Modbus TCP); "
                                 f"Modbus RTU ({scheme}://) has no transaction id and never has more than one "
                                 "request outstanding: remove max_outstanding or set it to 1")
            if self.inter_request_delay:
                raise ValueError(f"{SUBPATH}max_outstanding: {self.max_outstanding} sends requests back to back, which "
                                 "contradicts inter_request_delay: set max_outstanding: 1 or remove "
                                 "inter_request_delay")
        return self

    @model_validator(mode="after")
    def _resolve_registers(self) -> ModbusDevice:
        """Turn classic `register:` references into table + address with this device's address_base. Every
        problem is reported, each under its tag's path (see `SUBPATH` in `format_errors`)."""
        problems = []
        for field_, j, tag in [*(("tags", j, t) for j, t in enumerate(self.tags)),
                               *(("identity", j, t) for j, t in enumerate(self.identity))]:
            if tag.register_ref is None:
                continue
            try:
                tag.table, tag.address = parse_classic_register(tag.register_ref, self.address_base)
            except ValueError as exc:
                problems.append(f"{SUBPATH}{field_}[{j}].register: tag '{tag.name}': {exc}")
                continue
            problem = tag.table_problem()
            if problem:
                problems.append(f"{SUBPATH}{field_}[{j}]: tag '{tag.name}': register {tag.register_ref} is a "
                                f"{tag.table}: {problem}")
            elif tag.address + tag.register_count() - 1 > 65535:
                problems.append(f"{SUBPATH}{field_}[{j}].register: tag '{tag.name}': register {tag.register_ref} runs "
                                "past address 65535")
        if problems:
            raise ValueError("\n".join(problems))
        return self


