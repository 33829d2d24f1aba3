"""`simulators.tasks.cancel_tasks`: what every simulator's `stop()` uses to end its tickers."""

from __future__ import annotations

import asyncio

from simulators.tasks import cancel_tasks


async def test_every_task_is_cancelled_and_awaited_and_none_is_skipped() -> None:
    ended: list[str] = []

    async def ticker(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append(name)

    a = asyncio.create_task(ticker("a"))
    b = asyncio.create_task(ticker("b"))
    await asyncio.sleep(0)  # both are asleep
    await cancel_tasks(a, None, b)
    assert ended == ["a", "b"]
    assert a.cancelled() and b.cancelled()
    await cancel_tasks(None)  # nothing to stop: no error
    await cancel_tasks(a)  # already ended: no error


async def test_the_callers_own_task_is_not_cancelled() -> None:
    """The ticker's CancelledError is swallowed; the caller carries on after the await."""
    task = asyncio.create_task(asyncio.sleep(3600))
    await cancel_tasks(task)
    current = asyncio.current_task()
    assert task.cancelled()
    assert current is not None and current.cancelling() == 0
