"""A simulated machine: a state machine (running / idle / alarm / setup) and tag values that follow it.

Both protocol simulators (Modbus, OPC UA) use this model, so a machine behaves alike whatever it speaks.
Values are plain Python numbers, bools or strings; the protocol simulator encodes them.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from typing import Any

from collector.config import SimSpec, SimulateConfig, TagBase

STATES = ("idle", "running", "alarm", "setup")
STATE_CODES = {name: code for code, name in enumerate(STATES)}


class MachineModel:
    """The evolving state of one simulated machine. Call `tick()` before reading `value()`."""

    def __init__(self, device_id: str, simulate: SimulateConfig, tags: list[Any], clock: Any = time.time):
        seed = simulate.seed if simulate.seed is not None else zlib.crc32(device_id.encode())
        self.rng = random.Random(seed)
        self.cfg = simulate
        self.clock = clock
        self.state: str = simulate.script[0][0] if simulate.script else simulate.initial
        self.forced_state: str | None = None
        now = clock()
        self.script_start = now  # `simulate.script`: the states follow it from here, over and over
        self.state_since = now
        self.next_change = now + self.rng.uniform(*simulate.dwell)
        self.last_tick = now
        self.tags: dict[str, TagBase] = {t.name: t for t in tags}
        self.values: dict[str, Any] = {}
        for tag in tags:
            self.values[tag.name] = self._initial(tag)

    # -- state machine

    def force_state(self, state: str | None) -> None:
        """Pin the machine to a state (tests, fault injection); None resumes the random walk."""
        if state is not None and state not in STATE_CODES:
            raise ValueError(f"unknown state {state!r}; one of {STATES}")
        self.forced_state = state
        if state is not None:
            self._enter(state, self.clock())

    def scripted_state(self, now: float) -> str:
        """The state `simulate.script` says at `now` (it repeats): a known timeline tests can check against."""
        script = self.cfg.script
        pos = (now - self.script_start) % sum(seconds for _, seconds in script)
        for state, seconds in script:
            if pos < seconds:
                return state
            pos -= seconds
        return script[-1][0]

    def _enter(self, state: str, now: float) -> None:
        if state != self.state:
            self.state = state
            self.state_since = now

    def tick(self) -> None:
        now = self.clock()
        dt = max(0.0, now - self.last_tick)
        self.last_tick = now
        if self.forced_state is None and self.cfg.script:
            self._enter(self.scripted_state(now), now)
        elif self.forced_state is None and now >= self.next_change:
            names = list(self.cfg.states)
            weights = [self.cfg.states[n] for n in names]
            self._enter(self.rng.choices(names, weights)[0], now)
            self.next_change = now + self.rng.uniform(*self.cfg.dwell)
        for name, tag in self.tags.items():
            spec = tag.sim
            if spec is not None:
                self.values[name] = self._next(spec, self.values[name], dt, now)

    # -- values

    def _initial(self, tag: TagBase) -> Any:
        spec = tag.sim
        if spec is None:
            return 0
        if spec.kind == "constant":
            return spec.value if spec.value is not None else 0
        if spec.kind in ("walk", "wave"):
            return (spec.min + spec.max) / 2
        if spec.kind == "counter":
            return spec.value or 0
        if spec.kind == "choice":
            return spec.values[0] if spec.values else ""
        return self._next(spec, 0, 0.0, self.clock())

    def _next(self, spec: SimSpec, current: Any, dt: float, now: float) -> Any:
        running = self.state == "running"
        idle_value = spec.idle if spec.idle is not None else spec.min
        if spec.kind == "state":
            return self.state if isinstance(spec.value, str) else STATE_CODES[self.state]
        if spec.kind == "alarm":
            return self.state == "alarm"
        if spec.kind == "running":
            return self.state == "running"
        if spec.kind == "constant":
            return current
        if spec.kind == "counter":
            return current + spec.rate * dt if running else current
        if spec.kind == "choice":
            if not spec.values:
                return current
            return spec.values[STATE_CODES[self.state] % len(spec.values)] if not running else (
                current if current in spec.values and self.rng.random() > 0.01 else self.rng.choice(spec.values))
        if not running:
            return idle_value
        if spec.kind == "wave":
            mid, amp = (spec.max + spec.min) / 2, (spec.max - spec.min) / 2
            return mid + amp * math.sin(2 * math.pi * now / spec.period)
        # walk
        base = current if isinstance(current, int | float) and spec.min <= current <= spec.max else \
            (spec.min + spec.max) / 2
        step = (spec.max - spec.min) * spec.step * self.rng.uniform(-1, 1)
        return min(spec.max, max(spec.min, base + step))

    def value(self, tag_name: str) -> Any:
        return self.values.get(tag_name, 0)
