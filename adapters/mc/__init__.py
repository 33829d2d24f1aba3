"""The Mitsubishi MC protocol plugin (MELSEC 3E binary frame over TCP): README.md beside this file, an overview in
docs/mc.md; the simulator is `simulators/mc.py`."""

from __future__ import annotations

from typing import Any

from adapters.base import ProtocolPlugin
from adapters.mc.adapter import McAdapter, describe_tag
from adapters.mc.config import ENDPOINT_RULE, McDevice


def simulator(device: McDevice) -> Any:
    """An asyncio 3E binary server over the device's memory (simulators/mc.py)."""
    from simulators.mc import McServerSim

    return McServerSim(device)


PLUGIN = ProtocolPlugin(name="mc", device_model=McDevice, adapter=McAdapter, describe_tag=describe_tag,
                        simulator=simulator, schemes=ENDPOINT_RULE.schemes)
