"""One supervised asyncio task per device.

A device task connects, polls at its interval (or subscribes), and on any failure closes the session,
reports the device `offline` with the reason and retries with jittered, capped exponential backoff. An
exception in one device's task never reaches another device or the process.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections.abc import Callable

from adapters.base import Adapter, AdapterError, DeviceConfig, DeviceSkipped, create_adapter
from collector.failures import RepeatedFailure
from collector.model import DeviceState, Reading
from collector.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ReadingsSink = Callable[[str, list[Reading]], object]
StateSink = Callable[[str, DeviceState, str | None], None]


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


class DeviceTask:
    """The life of one device: connect, poll or subscribe, back off on failure, forever until stopped."""

    def __init__(self, device: DeviceConfig, on_readings: ReadingsSink, on_state: StateSink,
                 backoff_cap: float = 30.0, adapter_factory: Callable[[DeviceConfig], Adapter] = create_adapter
                 ) -> None:
        self.device = device
        self.on_readings = on_readings
        self.on_state = on_state
        self.backoff = Backoff(base=min(0.5, device.interval), cap=backoff_cap)
        self.adapter_factory = adapter_factory
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
        while not self.stopping:
            adapter = self.adapter_factory(dev)
            self.adapter = adapter
            try:
                await adapter.connect()
                self.backoff.reset()
                if adapter.wants_subscribe:
                    await adapter.subscribe(lambda readings: self._deliver(readings))
                    raise AdapterError("subscription ended")
                await self._poll_loop(adapter)
            except asyncio.CancelledError:
                await adapter.close()
                raise
            except DeviceSkipped as exc:
                self._set_state(DeviceState.DEGRADED, exc.reason)
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
            await adapter.close()
            if self.stopping:
                return
            delay = self.backoff.next_delay()
            log.info("device=%s event=retry delay=%.2f", dev.id, delay)
            await asyncio.sleep(delay)

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

    def __init__(self, on_readings: ReadingsSink, on_state: StateSink) -> None:
        self.on_readings = on_readings
        self.on_state = on_state
        self.tasks: dict[str, DeviceTask] = {}

    def start_device(self, device: DeviceConfig) -> None:
        if device.id in self.tasks or not device.enabled:
            return
        task = DeviceTask(device, self.on_readings, self.on_state)
        self.tasks[device.id] = task
        task.start()

    async def stop_device(self, device_id: str) -> None:
        task = self.tasks.pop(device_id, None)
        if task is not None:
            await task.stop()

    async def stop(self) -> None:
        await asyncio.gather(*(self.stop_device(d) for d in list(self.tasks)))
