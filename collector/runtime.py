"""How the service process runs: its event loop and its garbage-collector settings.

Both were chosen by profiling at saturation (docs/BENCHMARKS.md, "What limits us now"):
- uvloop, where installed (Linux and macOS), makes each socket round trip cheaper: about 8 % of the
  collector's CPU per reading on the contiguous bench map, 12 % on the sparse one, where every Modbus request
  is a send, a wake-up and a receive. `COLLECTOR_EVENT_LOOP=asyncio` chooses the standard loop.
- The hot path allocates about one tracked object per reading (a `Reading`, its answer tuple). With CPython's
  default gen-0 threshold of 700 that is a collection every few hundred readings, and the older collections
  walk the whole start-up heap (config, libraries): 18 % of a core at 200 k readings/s, under 1 % after.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

log = logging.getLogger(__name__)

GEN0_THRESHOLD = 50_000
T = TypeVar("T")
EventLoopChoice = Literal["auto", "asyncio", "uvloop"]


def loop_name() -> str:
    """The running loop's implementation, for the logs and the status API."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def run(main: Coroutine[Any, Any, T], event_loop: EventLoopChoice = "auto") -> T:
    """`asyncio.run(main)` on uvloop when it is installed (or asked for), else on the standard loop."""
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise SystemExit("COLLECTOR_EVENT_LOOP=uvloop, but uvloop is not installed "
                                 "(pip install uvloop, or set COLLECTOR_EVENT_LOOP=auto)") from None
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def tune_gc() -> None:
    """Move everything alive after start-up out of the collector's sight (`gc.freeze`) and collect the young
    generation every 50 k allocations instead of every 700. Reference cycles are still collected."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
