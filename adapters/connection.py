"""The connection half the lean Modbus MBAP and MC 3E clients share (`OneConnectionClient`), apart from
adapters/base.py so that loading the protocol registry does not import asyncio; `from adapters.base import
OneConnectionClient` still works."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

log = logging.getLogger(__name__)


class OneConnectionClient(asyncio.Protocol):
    """A lean asyncio TCP client that owns exactly one connection (build a new client to reconnect): what the
    Modbus MBAP and MC 3E clients share. `connect()` gives up after `timeout` without cancelling the caller's
    task (asyncio.wait, not wait_for: a cancellation of our own that could get lost on 3.11), and a connection
    that completes after it gave up is closed at once; a late `connection_lost` can never hit a newer one.

    Subclasses hold their pending request in `_waiter`, implement `close()` and `data_received()`, and say
    with `_lost(exc)` what a dropped connection fails the pending request with."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._connecting = False
        self._used = False
        self._lock = asyncio.Lock()
        self._buffer = b""
        self._waiter: asyncio.Future[Any] | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None

    def close(self) -> None:
        raise NotImplementedError

    def _lost(self, exc: Exception | None) -> Exception:
        """The error a pending request fails with when the peer drops the connection."""
        raise NotImplementedError

    async def connect(self) -> bool:
        """Connect within `timeout`; False if refused, unreachable or too slow."""
        if self._transport is not None:
            return True
        if self._used:
            return False  # one connection per client: a late connection_lost must not hit a new one
        self._used = True
        loop = asyncio.get_running_loop()
        self._connecting = True
        attempt = loop.create_task(loop.create_connection(lambda: self, self.host, self.port))
        try:
            await asyncio.wait((attempt,), timeout=self.timeout)
        finally:
            self._connecting = False  # a connection made after this point is closed in connection_made
            if not attempt.done():
                attempt.cancel()
                attempt.add_done_callback(lambda t: t.cancelled() or t.exception())  # nothing to log
        if not attempt.done() or attempt.cancelled():
            self.close()  # connection_made may have run already
            return False
        exc = attempt.exception()
        if exc is not None:
            if isinstance(exc, OSError):
                log.debug("connect to %s:%s failed: %s", self.host, self.port, exc)
                return False
            raise exc
        return self._transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._connecting:  # connect() gave up already
            transport.close()
            return
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._buffer = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._buffer = b""
        self._fail(self._lost(exc))

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
