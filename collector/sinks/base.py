"""What every outbox sink offers the wiring (collector/app.py) and its sender (collector/delivery.py).

A sink owns one outbox queue (`q_{name}`), its encoder and its transport. The wiring loops over the list that
`collector/sinks/build.py` makes from the config and never names a sink: it encodes each batch with every sink
that `feeds` on data, hands anchors to the sinks that feed on anchors, and on each acknowledgement deletes the
row, counts it as 联网率 evidence when the sink `proves_delivery`, and records a `receipt` when the sink gives one.

Sinks import only `collector.model`, each other and their encoders (tests/test_layering_sinks.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from collector.model import Batch, DeviceState, Reading, Row

AckCallback = Callable[[Row], None]
Feeds = Literal["data", "anchors", "chain"]


class Sink(Protocol):
    """One outbox queue and where its rows go: name, encoder, transport, link state, acknowledgements."""

    name: str  # the outbox queue (an identifier: `q_{name}`)
    feeds: Feeds  # "data": every batch is encoded for it; "anchors": the evidence chain's signed heads;
    # "chain": the heads and every chain record in full (the hub)
    proves_delivery: bool  # its acknowledgement of a good batch is the 联网率 evidence (INDICATORS.md)
    live_share: float | None  # its sender's live/backlog split; None: `outbox.live_share`
    on_ack: AckCallback | None  # set by the wiring: called once per acknowledged row

    def encode(self, batch: Batch) -> bytes:
        """The row stored for this sink: encoded once, at append time (the hot path)."""

    def receipt(self, row: Row) -> str | None:
        """Where an acknowledged row now is (a URL for the anchoring receipt), or None."""

    # the transport the sender drives (collector/delivery.py `Transport`)
    @property
    def connected(self) -> bool: ...

    @property
    def generation(self) -> int: ...

    async def wait_connected(self) -> None: ...

    def capacity(self) -> int: ...

    def in_flight(self) -> set[int]: ...

    async def send(self, rows: list[Row], historical: list[bool]) -> None: ...

    async def close(self) -> None:
        """Release what the sink holds of its own (a shared MQTT connection is stopped by its owner)."""

    def stats(self) -> dict[str, Any]: ...


class DeviceStatus(Protocol):
    """What a status listener is told (collector.status.DeviceStatus); sinks import only collector.model."""

    device: str
    state: DeviceState


@runtime_checkable
class FollowsDevices(Protocol):
    """A sink that follows the device states and reads the latest values (Sparkplug: DBIRTH/DDEATH)."""

    latest: Callable[[str], Mapping[str, Reading]]

    def status_changed(self, st: DeviceStatus) -> None: ...
