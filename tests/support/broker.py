"""The test suite's MQTT helpers: a private mosquitto per test module that a test may stop and start again
(an outage), with persistence or an extra listener (TLS) when asked, and ports handed out once.

Test-only: a gateway install does not ship it. `collector demo` starts its broker with
`collector.demo_broker.Mosquitto`, which this builds on.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

from collector.demo_broker import Mosquitto

_HANDED_OUT: set[int] = set()
# Below the kernel's ephemeral range (32768+: what bind(0) and outgoing connections get) and below bench/e2e.py's
# 20000+: a port handed out here is not taken by a connection before the test binds it. Under pytest-xdist each
# worker has its own slice, so two workers never hand out the same port.
_LOW, _HIGH = 10_000, 20_000


def _slice() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = (_HIGH - _LOW) // max(count, 1)
    low = _LOW + size * (index % max(count, 1))
    return low, low + size


_NEXT: list[int] = []


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, never the same one twice in this process (two simulators asked for in a
    row must not get the same one), from this process's slice of 10000-19999; it starts at a random place, so
    that two suites running at once on one machine rarely meet."""
    low, high = _slice()
    if not _NEXT:
        _NEXT.append(random.randrange(low, high))
    for _ in range(high - low):
        port = _NEXT[0]
        _NEXT[0] = port + 1 if port + 1 < high else low
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port left in {low}-{high - 1}")


class MosquittoProcess(Mosquitto):
    """A private mosquitto on host:port with a throw-away config; can be stopped and started again."""

    def __init__(self, port: int, host: str = "127.0.0.1", persistence_dir: Path | None = None,
                 listener_options: list[str] | None = None, extra: list[str] | None = None) -> None:
        super().__init__(port, host)
        self.persistence_dir = persistence_dir
        self.listener_options = listener_options or []  # e.g. certfile/keyfile lines for a TLS listener
        self.extra = extra or []  # e.g. password_file / acl_file lines; `allow_anonymous false` wins over ours

    def config_lines(self) -> list[str]:
        base = [line for line in super().config_lines() if not line.startswith("persistence")]
        if "allow_anonymous false" in self.extra:
            base = [line for line in base if not line.startswith("allow_anonymous")]
        lines = [base[0], *self.listener_options, *base[1:]]
        if self.persistence_dir is not None:
            lines += ["persistence true", f"persistence_location {self.persistence_dir}/"]
        else:
            lines.append("persistence false")
        return [*lines, *self.extra]
