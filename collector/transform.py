"""The one value stage of every protocol: scale, offset, finiteness and range of a decoded value.

An adapter decodes what the device sent (registers, a Variant, ...) into a plain value and hands it here with
the quality the device gave it; what comes back is what the reading carries. Compiled once per tag
(`make_transform`), so the poll loop runs one closure per value and no option checks:

- numbers (never bools) become `value * scale + offset`; lists of numbers element by element;
- a NaN or infinite number is no measurement (and JSON cannot carry it): value None, quality `bad_decode`,
  never `good`;
- outside `range` (inclusive) the value is kept and the quality is `bad_out_of_range`;
- anything else (strings, bools, timestamps, None) passes unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from collector.model import Quality

Transform = Callable[[Any, str], tuple[Any, str]]
"""(decoded value, quality from the device) -> (value, quality) of the reading."""

Values = Literal["any", "int", "float"]

_BAD, _OUT = Quality.BAD_DECODE, Quality.BAD_OUT_OF_RANGE
_isfinite = math.isfinite


def make_transform(scale: float = 1.0, offset: float = 0.0, rng: tuple[float, float] | None = None,
                   values: Values = "any") -> Transform | None:
    """The tag's transform, or None when it would change nothing.

    `values` is what the caller knows of the decoded values: "int" or "float" (always a number of that kind:
    the Modbus codec for numeric types) lets the closure skip the type checks; "any" (OPC UA, whose values
    are whatever the server sends) checks each value."""
    scaled = scale != 1.0 or offset != 0.0
    if values == "any":
        return _any(scale, offset, scaled, rng)
    if values == "int" and not scaled and rng is None:
        return None  # an unscaled integer is always finite
    return _number(scale, offset, scaled, rng)


def _number(scale: float, offset: float, scaled: bool, rng: tuple[float, float] | None) -> Transform:
    if rng is None:
        if scaled:
            def scale_finite(v: Any, q: str) -> tuple[Any, str]:
                v = v * scale + offset
                return (v, q) if _isfinite(v) else (None, _BAD)

            return scale_finite

        def finite(v: Any, q: str) -> tuple[Any, str]:
            return (v, q) if _isfinite(v) else (None, _BAD)

        return finite
    lo, hi = rng

    def ranged(v: Any, q: str) -> tuple[Any, str]:
        if scaled:
            v = v * scale + offset
        if lo <= v <= hi:
            return v, q
        if not _isfinite(v):  # NaN fails every comparison, inf is outside any finite range
            return None, _BAD
        return v, _OUT

    return ranged


def _any(scale: float, offset: float, scaled: bool, rng: tuple[float, float] | None) -> Transform:
    number = _number(scale, offset, scaled, rng)

    def each(v: Any, q: str) -> tuple[Any, str]:
        t = type(v)
        if t is int or t is float:
            return number(v, q)
        if t is list:
            return _each(v, q)
        if isinstance(v, int | float) and not isinstance(v, bool):  # numpy-ish and int subclasses
            return number(v, q)
        return v, q

    def _each(items: list[Any], q: str) -> tuple[Any, str]:
        out: list[Any] = []
        worst = q
        for x in items:
            if isinstance(x, bool) or not isinstance(x, int | float):
                out.append(x)
                continue
            x, xq = number(x, q)
            if xq == _BAD:
                return None, _BAD
            if xq == _OUT:
                worst = _OUT
            out.append(x)
        return out, worst

    return each


def make_converter(decode: Callable[[Any, int], Any], scale: float = 1.0, offset: float = 0.0,
                   rng: tuple[float, float] | None = None, values: Values = "float") -> Callable[[Any, int], tuple[Any, str]]:
    """The value stage fused with a protocol's decoder for numbers read as good (Modbus, S7, MC: a value the
    device answered is good until the stage says otherwise): `(buffer, offset) -> (value, quality)` in one
    closure. The same rules as `make_transform`; fused because a second call per value cost ~3 % of the
    collector's CPU on a polled map (bench/profile.py)."""
    good = Quality.GOOD
    scaled = scale != 1.0 or offset != 0.0
    if values == "any":
        stage = _any(scale, offset, scaled, rng)
        return lambda b, o: stage(decode(b, o), good)
    if values == "int" and not scaled and rng is None:
        return lambda b, o: (decode(b, o), good)
    if rng is None:
        if scaled:
            def scale_finite(b: Any, o: int) -> tuple[Any, str]:
                v = decode(b, o) * scale + offset
                return (v, good) if _isfinite(v) else (None, _BAD)

            return scale_finite

        def finite(b: Any, o: int) -> tuple[Any, str]:
            v = decode(b, o)
            return (v, good) if _isfinite(v) else (None, _BAD)

        return finite
    lo, hi = rng

    def ranged(b: Any, o: int) -> tuple[Any, str]:
        v = decode(b, o)
        if scaled:
            v = v * scale + offset
        if lo <= v <= hi:
            return v, good
        if not _isfinite(v):
            return None, _BAD
        return v, _OUT

    return ranged
