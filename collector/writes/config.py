"""The `write:` settings of a tag and the `writes:` switches of a device and of the whole collector.

Imported by collector/config.py (one field per model), so this module imports nothing of the collector: a
circular import would break `collector check`. Writing is off unless both switches and the tag say yes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


def _not_a_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"{str(v).lower()} is a yes/no value, not a number")
    return v


Limit = Annotated[float, BeforeValidator(_not_a_bool)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TagWrite(_Strict):
    """Per tag: may it be written, to which values, how often, and is the written value read back."""

    allowed: bool | list[Any] = Field(default=False, description="true, or the list of the only values "
                                      "accepted (an enumeration: recipe numbers, modes)")
    min: Limit | None = None
    max: Limit | None = None
    rate_limit: Annotated[int, BeforeValidator(_not_a_bool)] = Field(
        default=6, ge=1, le=600, description="accepted writes per minute to this tag")
    confirm: Literal["readback", "none"] = "readback"

    @model_validator(mode="after")
    def _limits_in_order(self) -> TagWrite:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"write.min {self.min:g} is above write.max {self.max:g}: swap them")
        if isinstance(self.allowed, list):
            if not self.allowed:
                raise ValueError("write.allowed: an empty list allows nothing: give the values, or false")
            if self.min is not None or self.max is not None:
                raise ValueError("give either a write.allowed list or write.min/max, not both")
        return self

    @property
    def writable(self) -> bool:
        return self.allowed is True or isinstance(self.allowed, list)

    @property
    def values(self) -> list[Any] | None:
        """The only values accepted, when `allowed` is a list."""
        return self.allowed if isinstance(self.allowed, list) else None


class DeviceWrites(_Strict):
    """A device's own switch: its tags can be written only when this and the global `writes.enabled` are on."""

    enabled: bool = False


class WritesConfig(_Strict):
    """The collector's switch and where the audit log lives."""

    enabled: bool = False
    audit_topic: str = Field(default="{root}/audit/writes", min_length=1,
                             description="MQTT topic of each audit record (not retained)")
    timeout: Limit = Field(default=10.0, gt=0, le=120, description="seconds a request may take, write and "
                           "readback, before it is answered `failed`")


READ_ONLY_TABLES = ("discrete_input", "input_register")


def write_table_problem(table: str | None, write: TagWrite) -> str | None:
    """A Modbus tag marked writable in a table Modbus cannot write (collector/config.py calls this)."""
    if write.writable and table in READ_ONLY_TABLES:
        return f"write.allowed: a {table} is read-only in Modbus (only coils and holding registers are written)"
    return None
