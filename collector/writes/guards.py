"""The guard rails that need no device: pure checks of a request against the config, and the rate limiter.

Each check returns None or (code, detail); `service.py` runs them in order and stops at the first refusal.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from collector.writes.config import TagWrite

Refusal = tuple[str, str]
_NUMERIC = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "float",
                      "double"})
# S7 and MC (IEC 61131-3) type names, as their tags spell them
_PLC_NUMERIC = frozenset({"BYTE", "SINT", "USINT", "WORD", "INT", "UINT", "DWORD", "DINT", "UDINT", "REAL", "LREAL",
                          "LINT", "ULINT", "LWORD"})


def _kind(tag_type: str) -> str:
    """A type name -> bool, string, number, raw or the name itself (a type that is not written)."""
    if tag_type in ("bool", "BOOL"):
        return "bool"
    if tag_type in ("string", "CHAR") or tag_type.startswith(("STRING", "WSTRING")):
        return "string"
    if tag_type in _NUMERIC or tag_type in _PLC_NUMERIC:
        return "number"
    return tag_type


def type_problem(tag_type: str | None, value: Any) -> Refusal | None:
    """Does `value` (as JSON gave it) fit the tag's declared type? None for an OPC UA tag without `type:`
    (the adapter checks the node's DataType)."""
    if tag_type is None:
        if value is None or isinstance(value, dict | list):
            return "type_mismatch", f"{type(value).__name__} is not a value a node takes here"
        return None
    kind = _kind(tag_type)
    if kind == "bool":
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return None
        return "type_mismatch", f"the tag is bool: give true or false, not {value!r}"
    if kind == "string":
        return None if isinstance(value, str) else ("type_mismatch", f"the tag is a string, not {value!r}")
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return "type_mismatch", f"the tag is {tag_type}: give a number, not {value!r}"
        return None
    if kind == "raw":
        return None  # the codec checks the words
    return "type_mismatch", f"a {tag_type} tag cannot be written"


def range_problem(rule: TagWrite, value: Any) -> Refusal | None:
    """`allowed:` list, then `min`/`max` (numbers only: a bool or string has no range)."""
    values = rule.values
    if values is not None:
        if any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in values):
            return None
        return "out_of_range", f"{value!r} is not one of the allowed values {values}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if rule.min is not None and value < rule.min:
        return "out_of_range", f"{value!r} is below write.min {rule.min:g}"
    if rule.max is not None and value > rule.max:
        return "out_of_range", f"{value!r} is above write.max {rule.max:g}"
    return None


class RateLimiter:
    """At most `limit` accepted writes per tag in any 60 s (a sliding window of the accepted ones)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window: float = 60.0) -> None:
        self.clock = clock
        self.window = window
        self._times: dict[tuple[str, str], deque[float]] = {}

    def check(self, key: tuple[str, str], limit: int) -> Refusal | None:
        """None and the write counted, or the refusal with the seconds until the next write may go."""
        now = self.clock()
        times = self._times.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= limit:
            wait = times[0] + self.window - now
            return "rate_limited", f"{limit} writes per minute to this tag; the next in {wait:.0f} s"
        times.append(now)
        return None
