"""Ending asyncio tasks for sure, and the worker-thread calls they started.

One `cancel()` is not always enough on Python 3.11: `asyncio.wait_for` (used by pymodbus for every request,
and by much library code) returns the result and drops the cancellation when the awaited thing completes in
the same loop iteration, and the task carries on. Shutdown and reload must not hang on that.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


async def cancel_and_wait(task: asyncio.Task[None], what: str, retry: float = 0.5) -> None:
    """Cancel `task` until it has ended (re-cancelling every `retry` s); log it if it failed."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry)
    if not task.cancelled() and task.exception() is not None:
        log.error("task=%s event=task_failed error=%r", what, task.exception())


class ThreadCalls:
    """Calls handed to worker threads, kept until the thread returns, not only until the awaiting task ends.

    Cancelling a task that awaits `asyncio.to_thread` ends the task at once, but the call runs on in its thread.
    Whoever closes what such a call uses must first await `idle()`: closing a SQLite connection while another
    thread runs a query on it makes Python 3.11's sqlite3 read the handle `close()` has just set to NULL, a
    SIGSEGV (it was `collector run` exiting -11 on SIGTERM, during a shift-figures or period-figures refresh).
    """

    def __init__(self) -> None:
        self._running: set[asyncio.Future[Any]] = set()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the loop's default executor; a cancelled caller leaves it counted until it returns."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, functools.partial(contextvars.copy_context().run, fn, *args))
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        return await asyncio.shield(future)  # a cancellation must not mark the future done while fn still runs

    async def idle(self, note_after: float = 1.0) -> None:
        """Until every call handed over so far has returned (logged once when that takes over `note_after` s)."""
        if not self._running:
            return
        _, pending = await asyncio.wait(set(self._running), timeout=note_after)
        if pending:
            log.info("event=waiting_for_threads calls=%d (before closing what they use)", len(pending))
        while self._running:
            await asyncio.wait(set(self._running))
