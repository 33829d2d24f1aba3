"""Mitsubishi MC protocol (MELSEC 3E binary frame over TCP): `protocol: mc`, see README.md here.

`PLUGIN_SPEC` holds what the plugin registry needs (a `ProtocolPlugin` made from it in one line). It is built
on first access (PEP 562): importing the package must not import the adapter, since adapters.base and
collector.config import adapters.mc.config while they load.
"""

from __future__ import annotations

from typing import Any

# collector.config first: it imports adapters.mc.config for its device union (until the plugin registry
# builds that union), and adapters.mc.config builds on its base classes
import collector.config  # noqa: F401  # isort: skip

__all__ = ["PLUGIN_SPEC"]


def _simulator(device: Any) -> Any:
    from simulators.mc import McServerSim

    return McServerSim(device)


def __getattr__(name: str) -> Any:
    if name != "PLUGIN_SPEC":
        raise AttributeError(name)
    from adapters.mc.adapter import McAdapter, describe_tag
    from adapters.mc.config import McDevice

    return dict(name="mc", device_model=McDevice, adapter=McAdapter, describe_tag=describe_tag,
                simulator=_simulator, schemes=("mc",))
