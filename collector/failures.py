"""Log a repeating failure without flooding the journal: the first with its traceback, then one line a minute
with the count, and the recovery.

A full disk fails the status flush every second; a status listener that raises fails at every state change or
acknowledgement. Either would otherwise write a traceback per event and hide everything else in the log.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class RepeatedFailure:
    """Counts the failures of one job (`name`) and logs them as `event={kind}_failed` (first, with the
    traceback), `event={kind}_failing` (at most once a minute, with the count) and `event={kind}_recovered`.
    Call `failed()` inside the `except` block, so the traceback is the current exception's."""

    def __init__(self, name: str, kind: str = "periodic", logger: logging.Logger | None = None,
                 label: str = "fn") -> None:
        self.name = name
        self.kind = kind
        self.label = label
        self.log = logger or log
        self.count = 0
        self.logged_at = 0.0

    def failed(self) -> None:
        self.count += 1
        now = time.monotonic()
        if self.count == 1:
            self.log.exception("event=%s_failed %s=%s", self.kind, self.label, self.name)
            self.logged_at = now
        elif now - self.logged_at >= 60:
            self.log.error("event=%s_failing %s=%s failures=%d", self.kind, self.label, self.name, self.count,
                           exc_info=True)
            self.logged_at = now

    def ok(self) -> None:
        if self.count:
            self.log.warning("event=%s_recovered %s=%s after_failures=%d", self.kind, self.label, self.name,
                             self.count)
            self.count = 0
