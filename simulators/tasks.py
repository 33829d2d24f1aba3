"""Stopping a simulator's background tasks (the tickers that advance its `MachineModel`).

A ticker only sleeps and updates values, so one `cancel()` ends it; its `CancelledError` is the expected end
and not the caller's. (The collector's `collector.tasks.cancel_and_wait` handles tasks that may swallow a
cancel; simulators may not import it, see tests/test_layering.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel every task given (None: nothing there), then wait until each has ended."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
