"""The only types that adapters, the engine and sinks share.

A `Reading` is one value of one tag at one instant. It is created once by an adapter and then only read:
the pipeline, the status tracker and every sink look at the same object.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Quality:
    """Quality strings carried by every reading.

    `good` is the only quality that counts as a good sample for the indicators (INDICATORS.md). OPC UA
    status codes other than Good/Uncertain map to `bad_<CodeName>` (e.g. `bad_NodeIdUnknown`).
    """

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"
    BAD_OUT_OF_RANGE = "bad_out_of_range"
    BAD_ILLEGAL_ADDRESS = "bad_illegal_address"
    BAD_DEVICE_EXCEPTION = "bad_device_exception"
    BAD_DECODE = "bad_decode"
    BAD_TIMEOUT = "bad_timeout"
    BAD_NOT_CONNECTED = "bad_not_connected"
    BAD_STALE = "bad_stale"

    @staticmethod
    def is_good(quality: str) -> bool:
        return quality == Quality.GOOD


@dataclass(slots=True)
class Reading:
    """One value of one tag.

    Timestamps are POSIX seconds (float, UTC). `source_ts` is the device's own time where the protocol has one
    (OPC UA SourceTimestamp), else the moment the answer arrived; `receive_ts` is always the collector's clock.
    """

    device: str
    tag: str
    value: Any
    unit: str | None
    quality: str
    source_ts: float
    receive_ts: float

    @property
    def good(self) -> bool:
        return self.quality == Quality.GOOD


class DeviceState(StrEnum):
    """The state of a configured device, as published on its retained status topic."""

    NEVER_SEEN = "never_seen"
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"


@dataclass(slots=True)
class Batch:
    """One poll cycle of one device, as it travels to the sinks.

    `seq` rises per device across restarts. `good_ts` is the time of the cycle when it holds at least one good,
    fresh sample (INDICATORS.md), else None: delivery of such a batch makes its time bucket a good bucket.
    `historical` marks data delivered after an outage.
    """

    device: str
    seq: int
    ts: float
    readings: list[Reading]
    good_ts: float | None = None
    historical: bool = False


@dataclass(slots=True)
class Row:
    """A batch as stored in the outbox for one sink: already encoded for that sink."""

    id: int
    device: str
    seq: int
    created: float
    good_ts: float | None
    n: int
    payload: bytes
