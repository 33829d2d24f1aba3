"""The service's event loop choice and GC settings (collector/runtime.py)."""

from __future__ import annotations

import gc

from collector.runtime import GEN0_THRESHOLD, loop_name, run, tune_gc


async def _which() -> str:
    return loop_name()


def test_auto_takes_uvloop_and_asyncio_can_be_chosen() -> None:
    assert run(_which(), "auto") == "uvloop"
    assert run(_which(), "uvloop") == "uvloop"
    assert run(_which(), "asyncio") == "asyncio"


def test_tune_gc_freezes_the_start_up_heap_and_raises_gen0() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold()[0] == GEN0_THRESHOLD
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
