"""The test suite's MQTT helpers: a private mosquitto per test module that a test may stop and start again
(an outage), with persistence or an extra listener (TLS) when asked, and ports handed out once.

Test-only: a gateway install does not ship it. `collector demo` starts its broker with
`collector.demo_broker.Mosquitto`, which this builds on.
"""

from __future__ import annotations

import socket
from pathlib import Path

from collector.demo_broker import Mosquitto

_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, never the same one twice in this process: the kernel may hand a just
    closed ephemeral port out again, and two simulators asked for in a row must not get the same one."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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
