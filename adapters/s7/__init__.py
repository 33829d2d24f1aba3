"""The Siemens S7 protocol plugin (S7-200 SMART, 300, 400, 1200, 1500 over ISO-on-TCP): README.md beside this
file, an overview in docs/s7.md; the simulator is `simulators/s7.py`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.base import ProtocolPlugin

if TYPE_CHECKING:
    from adapters.s7.config import S7Device, S7Tag

SCHEMES = ("s7",)  # the endpoint schemes (config.py ENDPOINT_RULE), known without the models


def describe_tag(device: S7Device, tag: S7Tag) -> str:
    """`collector check --tags`: where a tag is read, e.g. `DB10 bytes 4..7 (DB10.DBD4 REAL)`."""
    return f"{tag.location.describe()} ({tag.address.strip()} {tag.location.type})"


def simulator(device: S7Device) -> Any:
    """A python-snap7 server with the device's areas and DBs (simulators/s7.py)."""
    from simulators.s7 import S7MachineSim

    return S7MachineSim(device)


# the model and the adapter by name: the model is imported by the config loader (not by `collector --version`,
# `verify`, ...), the adapter (and python-snap7) only for a device that uses it
PLUGIN = ProtocolPlugin(name="s7", device_model="adapters.s7.config:S7Device", adapter="adapters.s7.adapter:S7Adapter",
                        describe_tag=describe_tag, simulator=simulator, schemes=SCHEMES)
