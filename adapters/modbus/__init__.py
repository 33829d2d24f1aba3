"""The Modbus protocol plugin (TCP, RTU over TCP, RTU on a serial line): README.md beside this file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.base import ProtocolPlugin

if TYPE_CHECKING:
    from adapters.modbus.config import ModbusDevice, ModbusTag

SCHEMES = ("tcp", "rtu+tcp", "serial")  # the endpoint schemes (config.py ENDPOINT_RULE), known without the models


def describe_tag(device: ModbusDevice, tag: ModbusTag) -> str:
    """`collector check --tags`: the table and the 0-based wire address(es) the tag reads."""
    assert tag.table is not None and tag.address is not None  # set by the device's validation
    where = f"{tag.table} {tag.address} (0-based wire address)"
    if tag.register_count() > 1:
        where += f" .. {tag.address + tag.register_count() - 1}"
    return where


def simulator(device: ModbusDevice) -> Any:
    """A Modbus server serving `device`; more devices on the same endpoint join it with `add_device`."""
    from simulators.modbus import ModbusServerSim

    return ModbusServerSim(device.endpoint, [device])


# the model and the adapter by name: the model is imported by the config loader (not by `collector --version`,
# `verify`, ...), the adapter only for a device that uses it (and pymodbus only for an RTU line)
PLUGIN = ProtocolPlugin(name="modbus", device_model="adapters.modbus.config:ModbusDevice", adapter="adapters.modbus.adapter:ModbusAdapter",
                        describe_tag=describe_tag, simulator=simulator, schemes=SCHEMES)
