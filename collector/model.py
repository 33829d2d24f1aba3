"""The only types that adapters, the engine and sinks share.

A `Reading` is one value of one tag at one instant. It is created once by an adapter and then only read:
the pipeline, the status tracker and every sink look at the same object.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

_F32 = struct.Struct("<f")


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


def float32_shortest(value: float) -> float:
    """The float32 `value` as the float whose repr is the shortest decimal that reads back as the same float32.

    A float32 held as a Python float prints with noise digits (`230.00572204589844` for the float32 nearest
    230.0057): the sinks print floats with `repr`, the shortest decimal of the *float64*. Up to 6 significant
    digits at most one decimal maps to a normal float32 (FLT_DIG), so the first of 6, 7 and 8 correctly rounded
    digits that round-trips is the shortest (ties to even, as `%g` rounds); 9 always do. A subnormal has fewer
    digits of its own: the search starts at 1. Call it once per value, where a float32 is decoded. The search
    costs ~1-2 µs; most values repeat from poll to poll, so the last few thousand are remembered.
    """
    if not value:
        return value  # ±0 (the memo would answer -0.0 with 0.0, which compares equal)
    known = _SHORTEST.get(value)
    if known is not None:
        return known
    pack, unpack = _F32.pack, _F32.unpack
    d = value
    try:
        for fmt in _NORMAL if not -_FLT_MIN < value < _FLT_MIN else _SUBNORMAL:
            d = float(fmt % value)
            if unpack(pack(d))[0] == value:
                break  # 9 digits always do (a NaN ends the loop as a NaN)
    except OverflowError:  # not a float32 at all: leave it to the caller's checks
        return value
    if len(_SHORTEST) >= _SHORTEST_MAX:
        _SHORTEST.clear()
    _SHORTEST[value] = d
    return d


_SHORTEST: dict[float, float] = {}  # float32 value -> its shortest form (a NaN never hits, and costs nothing)
_SHORTEST_MAX = 4096
_FLT_MIN = 1.1754943508222875e-38  # the smallest normal float32
_NORMAL = ("%.6g", "%.7g", "%.8g", "%.9g")  # `%` formats faster than an f-string here
_SUBNORMAL = tuple(f"%.{p}g" for p in range(1, 10))
