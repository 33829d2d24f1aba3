"""One supervised asyncio task per device.

A device task connects, polls at its interval (or subscribes), and on any failure closes the session,
reports the device `offline` with the reason and retries with jittered, capped exponential backoff. An
exception in one device's task never reaches another device or the process.

After every connect, a side task asks the adapter what identifies the device (`identify()`) and again once a
day while the connection lasts; it never delays a poll and its failures never fail the device (identity is
evidence, not a condition for being online).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapters.base import Adapter, AdapterContext, AdapterError, DeviceConfig, DeviceSkipped, create_adapter
from collector.failures import RepeatedFailure
from collector.model import DeviceState, Reading
from collector.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ReadingsSink = Callable[[str, list[Reading]], object]
StateSink = Callable[[str, DeviceState, str | None], None]
IdentitySink = Callable[[str, dict[str, Any]], None]
IDENTIFY_INTERVAL = 86400.0  # seconds between identity checks on one connection (and one at every connect)


class Backoff:
    """Jittered exponential backoff: base × 2^n, capped, with ±`jitter` spread so devices don't retry in step."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, jitter: float = 0.2,
                 rng: random.Random | None = None) -> None:
        self.base, self.cap, self.jitter = base, cap, jitter
        self.failures = 0
        self.rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.failures))
        self.failures += 1
        return delay * (1 + self.rng.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self.failures = 0


@dataclass(frozen=True, slots=True)
class TaskStats:
    """A device task's counters as HTTP, /metrics and the views read them (a copy: readers change nothing).
    A subscribing device is never polled: it counts the publishes it delivered instead."""

    mode: str
    subscribing: bool
    polls: int
    publishes: int
    poll_seconds: float
    last_poll_duration: float
    readings: int
    bad_readings: int
    errors: int
    reconnects: int
    answered: bool


class DeviceTask:
    """The life of one device: connect, poll or subscribe, back off on failure, forever until stopped."""

    def __init__(self, device: DeviceConfig, on_readings: ReadingsSink, on_state: StateSink,
                 backoff_cap: float = 30.0, adapter_factory: Callable[[DeviceConfig], Adapter] | None = None,
                 on_identity: IdentitySink | None = None, identify_interval: float = IDENTIFY_INTERVAL,
                 context: AdapterContext | None = None) -> None:
        self.device = device
        self.on_readings = on_readings
        self.on_state = on_state
        self.on_identity = on_identity
        self.identify_interval = identify_interval
        self._identify_task: asyncio.Task[None] | None = None
        self.backoff = Backoff(base=min(0.5, device.interval), cap=backoff_cap)
        shared = context if context is not None else AdapterContext()
        self.adapter_factory: Callable[[DeviceConfig], Adapter] = (
            adapter_factory if adapter_factory is not None else lambda d: create_adapter(d, shared))
        self.adapter: Adapter | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.polls = 0
        self.last_poll_duration = 0.0
        # Counters read by /metrics at scrape time (collector/metrics.py); they restart with the task.
        self.poll_seconds = 0.0
        self.readings = 0
        self.bad_readings = 0
        self.errors = 0
        # True after the first answer since start: data, a failure or a skip (the first snapshot waits for it).
        self.answered = False
        # A state or readings listener that raises is logged once (then once a minute) and survived.
        self._state_failures = RepeatedFailure(f"{device.id}:on_state", "listener", log, "listener")
        self._pipeline_failures = RepeatedFailure(device.id, "pipeline", log, "device")
        self.sessions = 0  # successful connects; every one after the first is a reconnect
        self.publishes = 0  # subscription notifications delivered (a subscribing device is never polled)
        self.subscribing = False

    @property
    def reconnects(self) -> int:
        """Sessions opened again after the first one ended (a lost connection, a skip, a dead subscription)."""
        return max(0, self.sessions - 1)

    @property
    def mode(self) -> str:
        return "subscribe" if self.subscribing else "poll"

    def stats(self) -> TaskStats:
        return TaskStats(self.mode, self.subscribing, self.polls, self.publishes, self.poll_seconds,
                         self.last_poll_duration, self.readings, self.bad_readings, self.errors, self.reconnects,
                         self.answered)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"device:{self.device.id}")

    async def stop(self) -> None:
        """Cancel the task and wait until it has really ended.

        One `cancel()` is not enough (collector/tasks.py): the loops also check `stopping`, and the cancel is
        repeated until the task has ended.
        """
        task = self.task
        if task is None:
            return
        self.stopping = True
        await cancel_and_wait(task, f"device:{self.device.id}")
        self.task = None

    async def _run(self) -> None:
        dev = self.device
        try:
            adapter = self.adapter_factory(dev)  # one per task: it connects and closes again on every attempt
        except Exception as exc:  # its module did not import (collector check names that before a start)
            log.exception("device=%s event=adapter_not_built", dev.id)
            self._set_state(DeviceState.OFFLINE, f"internal error: {type(exc).__name__}: {exc}")
            return
        self.adapter = adapter
        self.subscribing = adapter.wants_subscribe
        while not self.stopping:
            try:
                await adapter.connect()
                self.sessions += 1
                if self.sessions > 1:
                    log.info("device=%s event=reconnected reconnects=%d", dev.id, self.reconnects)
                self.backoff.reset()
                self._start_identify(adapter)
                if adapter.wants_subscribe:
                    await adapter.subscribe(self._published)
                    raise AdapterError("subscription ended")
                await self._poll_loop(adapter)
            except asyncio.CancelledError:
                self._stop_identify()
                await adapter.close()
                raise
            except DeviceSkipped as exc:
                self._set_state(DeviceState.DEGRADED, exc.reason)
                self._stop_identify()
                await adapter.close()
                await asyncio.sleep(getattr(dev, "degrade_for", dev.interval))
                continue
            except AdapterError as exc:
                self.errors += 1
                self._set_state(DeviceState.OFFLINE, exc.reason)
            except Exception as exc:  # a bug or an unexpected library error must not kill the task
                self.errors += 1
                log.exception("device=%s event=unexpected_error", dev.id)
                self._set_state(DeviceState.OFFLINE, f"internal error: {type(exc).__name__}: {exc}")
            self._stop_identify()
            await adapter.close()
            if self.stopping:
                return
            delay = self.backoff.next_delay()
            log.info("device=%s event=retry delay=%.2f", dev.id, delay)
            await asyncio.sleep(delay)

    def _published(self, readings: list[Reading]) -> None:
        self.publishes += 1
        self._deliver(readings)

    def _start_identify(self, adapter: Adapter) -> None:
        if self.on_identity is not None:
            self._identify_task = asyncio.create_task(self._identify_loop(adapter),
                                                      name=f"identify:{self.device.id}")

    def _stop_identify(self) -> None:
        """Cancel the identity task of the ending connection (no wait: a cancellation that a library swallows
        is caught by the loop's own check, so the task ends anyway before its next sleep)."""
        task, self._identify_task = self._identify_task, None
        if task is not None:
            task.cancel()

    async def _identify_loop(self, adapter: Adapter) -> None:
        """Identify now and then every `identify_interval` on this connection; a failure is logged only."""
        dev = self.device.id
        me = asyncio.current_task()
        while self._identify_task is me:
            try:
                identity = await adapter.identify()
            except AdapterError as exc:
                log.info("device=%s event=identify_failed reason=%s", dev, exc.reason.replace(" ", "_"))
            except Exception:
                log.warning("device=%s event=identify_error", dev, exc_info=True)
            else:
                if identity and self.on_identity is not None and self._identify_task is me:
                    try:
                        self.on_identity(dev, identity)
                    except Exception:
                        log.exception("device=%s event=identity_record_failed", dev)
            await asyncio.sleep(self.identify_interval)

    def _set_state(self, state: DeviceState, reason: str | None) -> None:
        """Report a state change; a listener's failure is logged and never ends this task (it is called from the
        `except` branches, outside the retry loop's `try`)."""
        self.answered = True
        try:
            self.on_state(self.device.id, state, reason)
        except Exception:
            self._state_failures.failed()

    def _deliver(self, readings: list[Reading]) -> None:
        self.answered = True
        self.readings += len(readings)
        self.bad_readings += sum(1 for r in readings if r.quality != "good")
        try:
            self.on_readings(self.device.id, readings)
        except Exception:
            self._pipeline_failures.failed()
        else:
            if self._pipeline_failures.count:
                self._pipeline_failures.ok()

    @property
    def phase(self) -> float:
        """This device's offset in its poll interval, from its id: devices spread over the interval instead of
        all polling at once (a burst of a hundred polls makes the last one wait for all the others), and a
        device keeps its phase across restarts."""
        return (zlib.crc32(self.device.id.encode()) % 10_000) / 10_000 * self.device.interval

    async def _poll_loop(self, adapter: Adapter) -> None:
        """Poll once at once, then on a fixed grid at this device's phase (no drift); a poll that overruns
        skips the missed slots."""
        interval = self.device.interval
        loop = asyncio.get_running_loop()
        phase = self.phase
        while not self.stopping:
            started = time.perf_counter()
            readings = await adapter.read()
            self.last_poll_duration = time.perf_counter() - started
            self.poll_seconds += self.last_poll_duration
            self.polls += 1
            self._deliver(readings)
            now = loop.time()
            next_at = now + interval - ((now - phase) % interval)  # the next slot k × interval + phase
            await asyncio.sleep(next_at - now)


class Engine:
    """Starts and stops the device tasks; knows adapters only through `adapters.base`."""

    def __init__(self, on_readings: ReadingsSink, on_state: StateSink, on_identity: IdentitySink | None = None,
                 context: AdapterContext | None = None) -> None:
        self.context = context if context is not None else AdapterContext()  # what the adapters learn
        self.on_readings = on_readings
        self.on_state = on_state
        self.on_identity = on_identity
        self.tasks: dict[str, DeviceTask] = {}

    def start_device(self, device: DeviceConfig) -> None:
        if device.id in self.tasks or not device.enabled:
            return
        task = DeviceTask(device, self.on_readings, self.on_state, on_identity=self.on_identity,
                          context=self.context)
        self.tasks[device.id] = task
        task.start()

    def task_stats(self, device_id: str) -> TaskStats | None:
        """The counters of a running device's task; None when it has none (disabled, removed)."""
        task = self.tasks.get(device_id)
        return None if task is None else task.stats()

    def running(self) -> list[str]:
        """The ids of the devices that have a task."""
        return list(self.tasks)

    async def stop_device(self, device_id: str) -> None:
        task = self.tasks.pop(device_id, None)
        if task is not None:
            await task.stop()

    async def stop(self) -> None:
        await asyncio.gather(*(self.stop_device(d) for d in list(self.tasks)))
