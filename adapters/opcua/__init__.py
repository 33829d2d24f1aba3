"""The OPC UA protocol plugin (poll or subscribe, with security): README.md beside this file."""

from __future__ import annotations

from typing import Any

from adapters.base import ProtocolPlugin
from adapters.opcua.commands import add_parsers
from adapters.opcua.config import ENDPOINT_RULE, OpcUaDevice, OpcUaTag


def describe_tag(device: OpcUaDevice, tag: OpcUaTag) -> str:
    """`collector check --tags`: the node id or browse path the tag reads."""
    return tag.node


def simulator(device: OpcUaDevice) -> Any:
    """An OPC UA server with the device's nodes (simulators/opcua.py)."""
    from simulators.opcua import OpcUaMachineSim

    return OpcUaMachineSim(device)


# the adapter by name: its module (and asyncua) is imported only for a device that uses it
PLUGIN = ProtocolPlugin(name="opcua", device_model=OpcUaDevice, adapter="adapters.opcua.adapter:OpcUaAdapter",
                        describe_tag=describe_tag, simulator=simulator, commands=add_parsers, schemes=ENDPOINT_RULE.schemes)
