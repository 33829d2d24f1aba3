"""The OPC UA protocol plugin (poll or subscribe, with security): README.md beside this file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.base import ProtocolPlugin

if TYPE_CHECKING:
    from adapters.opcua.config import OpcUaDevice, OpcUaTag

SCHEMES = ("opc.tcp",)  # the endpoint schemes (config.py ENDPOINT_RULE), known without the models


def describe_tag(device: OpcUaDevice, tag: OpcUaTag) -> str:
    """`collector check --tags`: the node id or browse path the tag reads."""
    return tag.node


def simulator(device: OpcUaDevice) -> Any:
    """An OPC UA server with the device's nodes (simulators/opcua.py)."""
    from simulators.opcua import OpcUaMachineSim

    return OpcUaMachineSim(device)


# the model, the adapter and the commands by name: the model is imported by the config loader (not by
# `collector --version`, `verify`, ...), the adapter (and asyncua) only for a device that uses it
PLUGIN = ProtocolPlugin(name="opcua", device_model="adapters.opcua.config:OpcUaDevice",
                        adapter="adapters.opcua.adapter:OpcUaAdapter", describe_tag=describe_tag, simulator=simulator,
                        commands="adapters.opcua.commands:add_parsers", schemes=SCHEMES)
