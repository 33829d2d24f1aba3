"""Ending asyncio tasks for sure.

One `cancel()` is not always enough on Python 3.11: `asyncio.wait_for` (used by pymodbus for every request,
and by much library code) returns the result and drops the cancellation when the awaited thing completes in
the same loop iteration, and the task carries on. Shutdown and reload must not hang on that.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[None], what: str, retry: float = 0.5) -> None:
    """Cancel `task` until it has ended (re-cancelling every `retry` s); log it if it failed."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry)
    if not task.cancelled() and task.exception() is not None:
        log.error("task=%s event=task_failed error=%r", what, task.exception())
