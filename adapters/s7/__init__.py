"""Siemens S7 (S7-200 SMART, 300, 400, 1200, 1500) over ISO-on-TCP: config, address parser, planner,
adapter; the simulator is `simulators/s7.py`. See README.md here and docs/s7.md.

`PLUGIN_SPEC` holds what the protocol plugin registry needs (name, device model, adapter, `check --tags`
text, simulator, endpoint schemes). It is built on first access, so that loading a config (which imports
`adapters.s7.config`) does not import python-snap7.
"""

from __future__ import annotations

from typing import Any

# collector.config imports S7Device into its device union (until the plugin registry, h15): load it first, so
# that importing adapters.s7.config on its own does not meet a half-initialised collector.config
import collector.config  # noqa: F401

__all__ = ["PLUGIN_SPEC", "describe_tag", "simulator"]


def describe_tag(device: Any, tag: Any) -> str:
    """Where `check --tags` says a tag is read: `DB10 bytes 4..7 (DB10.DBD4 REAL)`."""
    return f"{tag.location.describe()} ({tag.address.strip()} {tag.location.type})"


def simulator(device: Any) -> Any:
    """The simulator of one `protocol: s7` device (an object with async start()/stop())."""
    from simulators.s7 import S7MachineSim

    return S7MachineSim(device)


def __getattr__(name: str) -> Any:
    if name == "PLUGIN_SPEC":
        from adapters.s7.adapter import S7Adapter
        from adapters.s7.config import S7Device

        spec = dict(name="s7", device_model=S7Device, adapter=S7Adapter, describe_tag=describe_tag,
                    simulator=simulator, schemes=("s7",))
        globals()["PLUGIN_SPEC"] = spec
        return spec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
