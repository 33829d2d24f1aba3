"""systemd's notify protocol (sd_notify(3)) without a dependency: READY, STATUS, RELOADING, STOPPING, WATCHDOG.

The protocol is one datagram of `KEY=VALUE` lines to the AF_UNIX socket named by `$NOTIFY_SOCKET` (a path, or
an abstract name starting with `@`). Outside systemd the variable is absent and every call is a no-op, so the
same code runs under `collector run` in a terminal, in tests and on a gateway.

The watchdog pings come from a task on the asyncio event loop itself: if the loop hangs (a blocking call, a
deadlock, a busy loop) the pings stop, systemd's `WatchdogSec=` expires, and the unit is killed and restarted
(`Restart=on-failure`). A ping from a separate thread would keep a dead loop alive, which is the failure we
want systemd to see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; `enabled` is False (and sending does nothing) when not run by systemd."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.sock: socket.socket | None = None
        if address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.setblocking(False)
        self.sent = 0
        self.errors = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def _target(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):  # abstract namespace: a leading NUL byte instead of '@'
            return b"\0" + self.address[1:].encode()
        return self.address

    def notify(self, *lines: str) -> bool:
        """Send one datagram; never raises (a lost notification must not take the collector down)."""
        if self.sock is None:
            return False
        try:
            self.sock.sendto("\n".join(lines).encode(), self._target())
        except OSError as exc:
            self.errors += 1
            if self.errors <= 3 or self.errors % 100 == 0:
                log.warning("event=notify_failed errno=%s errors=%d", exc.errno, self.errors)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def reloading(self) -> bool:
        """Before a reload; systemd ≥ 253 wants MONOTONIC_USEC with it (CLOCK_MONOTONIC, µs)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The ping period in seconds (half of `WatchdogSec=`), or None when systemd set no watchdog for us.

    Follows sd_watchdog_enabled(3): `WATCHDOG_USEC` is the timeout; `WATCHDOG_PID`, when present, must be our pid
    (a child process must not take the parent's watchdog).
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        timeout = int(usec) / 1_000_000
    except ValueError:
        return None
    return timeout / 2 if timeout > 0 else None


async def watchdog_loop(notifier: Notifier, interval: float,
                        alive: Callable[[], bool] = lambda: True) -> None:
    """Ping `WATCHDOG=1` every `interval` s from this event loop while `alive()` holds.

    `alive` lets the collector withhold the ping when a part it cannot live without has died, so systemd
    restarts it instead of letting it run on half-dead.
    """
    while True:
        ok = False
        with contextlib.suppress(Exception):
            ok = alive()
        if ok:
            notifier.watchdog()
        else:
            log.error("event=watchdog_withheld reason=collector_not_alive")
        await asyncio.sleep(interval)


def start_watchdog(notifier: Notifier, env: Mapping[str, str] | None = None,
                   alive: Callable[[], bool] = lambda: True) -> asyncio.Task[None] | None:
    """Start the ping task when systemd asked for a watchdog (`WatchdogSec=`); None otherwise."""
    interval = watchdog_interval(env)
    if not notifier.enabled or interval is None:
        return None
    log.info("event=watchdog_enabled interval=%.1f", interval)
    return asyncio.create_task(watchdog_loop(notifier, interval, alive), name="sd-watchdog")
