"""Garbage-collector settings for the long-running service.

The hot path allocates about one tracked object per reading (a `Reading`, its tuple of answers); with
CPython's default gen-0 threshold of 700 that is a collection every few hundred readings, and each older
collection walks the whole start-up heap (config, libraries). Measured on the contiguous bench map at 100 ms
(docs/BENCHMARKS.md): 18 % of a core in the collector before, under 1 % after.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000


def tune_for_service() -> None:
    """Move everything alive after start-up out of the collector's sight (`gc.freeze`) and collect the young
    generation every 50 k allocations instead of every 700. Reference cycles are still collected."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
