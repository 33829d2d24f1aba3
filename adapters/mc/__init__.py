"""Mitsubishi MC protocol (MELSEC 3E binary frame over TCP): `protocol: mc`, see README.md here.

`PLUGIN_SPEC` holds what the plugin registry needs (a `ProtocolPlugin` made from it in one line).
"""

from __future__ import annotations

# collector.config first: it imports adapters.mc.config for its device union (until the plugin registry
# builds that union), and adapters.mc.config builds on its base classes
import collector.config  # noqa: F401  # isort: skip
from adapters.mc.adapter import McAdapter, describe_tag
from adapters.mc.config import McDevice


def _simulator(device: McDevice) -> object:
    from simulators.mc import McServerSim

    return McServerSim(device)


PLUGIN_SPEC = dict(name="mc", device_model=McDevice, adapter=McAdapter, describe_tag=describe_tag,
                   simulator=_simulator, schemes=("mc",))

__all__ = ["PLUGIN_SPEC", "McAdapter", "McDevice"]
