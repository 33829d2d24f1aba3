"""The Mitsubishi MC protocol plugin (MELSEC 3E binary frame over TCP): README.md beside this file, an overview in
docs/mc.md; the simulator is `simulators/mc.py`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.base import ProtocolPlugin

if TYPE_CHECKING:
    from adapters.mc.config import McDevice, McTag

SCHEMES = ("mc",)  # the endpoint schemes (config.py ENDPOINT_RULE), known without the models


def describe_tag(device: McDevice, tag: McTag) -> str:
    """Where `collector check --tags` says a tag is read."""
    from adapters.mc.config import tag_words

    addr = tag.parsed(device.xy_base)
    type_ = tag.value_type(device.xy_base)
    default = f" (type {type_} by default)" if tag.type is None else ""
    if addr.device.is_bit:
        return f"{addr.device.name} point {addr.number} (read in word {addr.word()}, bit {addr.number % 16}){default}"
    words = tag_words(type_)
    where = f"{addr.device.name} {addr.number}" + (f" bit {addr.bit}" if addr.bit is not None else "")
    return where + (f" .. {addr.number + words - 1} ({words} words)" if words > 1 else "") + default


def simulator(device: McDevice) -> Any:
    """An asyncio 3E binary server over the device's memory (simulators/mc.py)."""
    from simulators.mc import McServerSim

    return McServerSim(device)


# the model and the adapter by name: the model is imported by the config loader (not by `collector --version`,
# `verify`, ...), the adapter only for a device that uses it
PLUGIN = ProtocolPlugin(name="mc", device_model="adapters.mc.config:McDevice", adapter="adapters.mc.adapter:McAdapter",
                        describe_tag=describe_tag, simulator=simulator, schemes=SCHEMES)
