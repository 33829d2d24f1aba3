"""sd_notify and the systemd watchdog, against a fake notify socket (a bound AF_UNIX datagram socket).

The point of the watchdog is that the pings come from the event loop: a blocked loop must stop them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.notify import Notifier, start_watchdog, watchdog_interval, watchdog_loop


class FakeNotifySocket:
    """What systemd listens on: records (monotonic time, message) of every datagram, in a thread."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.messages.append((time.monotonic(), data.decode()))

    def pings(self) -> list[float]:
        with self.lock:
            return [t for t, m in self.messages if m == "WATCHDOG=1"]

    def texts(self) -> list[str]:
        with self.lock:
            return [m for _, m in self.messages]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[FakeNotifySocket]:
    fake = FakeNotifySocket(str(tmp_path / "notify.sock"))
    yield fake
    fake.close()


async def test_a_blocked_loop_stops_the_watchdog_pings(notify_socket: FakeNotifySocket) -> None:
    notifier = Notifier(notify_socket.address)
    env = {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}  # WatchdogSec=0.2 → ping every 0.1 s
    task = start_watchdog(notifier, env)
    assert task is not None
    try:
        await asyncio.sleep(0.55)
        before = len(notify_socket.pings())
        assert before >= 4, notify_socket.texts()

        blocked_at = time.monotonic()
        time.sleep(0.8)  # noqa: ASYNC251 - the hung loop systemd must notice
        unblocked_at = time.monotonic()
        await asyncio.sleep(0)  # let anything already in flight land
        during = [t for t in notify_socket.pings() if blocked_at + 0.05 < t < unblocked_at]
        assert during == [], "WATCHDOG=1 was sent while the loop was blocked"
        gap_start = max(t for t in notify_socket.pings() if t <= blocked_at + 0.05)
        assert unblocked_at - gap_start > 0.2, "the gap exceeds WatchdogSec: systemd would restart us"

        await asyncio.sleep(0.35)  # the loop runs again: pings resume
        assert len([t for t in notify_socket.pings() if t > unblocked_at]) >= 2
    finally:
        task.cancel()
        notifier.close()


async def test_pings_are_withheld_while_the_collector_is_not_alive(notify_socket: FakeNotifySocket) -> None:
    notifier = Notifier(notify_socket.address)
    alive = {"ok": True}
    task = asyncio.create_task(watchdog_loop(notifier, 0.05, lambda: alive["ok"]))
    try:
        await asyncio.sleep(0.2)
        n = len(notify_socket.pings())
        assert n >= 2
        alive["ok"] = False
        await asyncio.sleep(0.1)
        settled = len(notify_socket.pings())
        await asyncio.sleep(0.3)
        assert len(notify_socket.pings()) == settled
    finally:
        task.cancel()
        notifier.close()


def test_messages_and_abstract_socket() -> None:
    fake = FakeNotifySocket(f"@shopfloor-test-{uuid.uuid4().hex}")
    notifier = Notifier.from_env({"NOTIFY_SOCKET": fake.address})
    try:
        assert notifier.enabled
        assert notifier.ready("collecting from 6 devices")
        assert notifier.reloading() and notifier.stopping() and notifier.watchdog()
        deadline = time.monotonic() + 2
        while len(fake.texts()) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        ready, reloading, stopping, ping = fake.texts()
        assert ready == "READY=1\nSTATUS=collecting from 6 devices"
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=") and int(reloading.split("=")[-1]) > 0
        assert (stopping, ping) == ("STOPPING=1", "WATCHDOG=1")
    finally:
        notifier.close()
        fake.close()


def test_outside_systemd_everything_is_a_no_op(tmp_path: Path) -> None:
    n = Notifier.from_env({})
    assert not n.enabled and n.ready() is False and n.watchdog() is False
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # meant for another pid
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    # a socket nobody listens on: the failure is counted, never raised
    gone = Notifier(str(tmp_path / "nobody.sock"))
    assert gone.watchdog() is False and gone.errors == 1
    gone.close()


# --------------------------------------------------------------------------------------------- the unit file

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy/systemd/shopfloor-collector.service"
ANALYZE = shutil.which("systemd-analyze")


def test_unit_is_type_notify_with_watchdog_and_env_file_keys_are_known() -> None:
    from collector.config import Settings

    lines = [ln.strip() for ln in UNIT.read_text(encoding="utf-8").splitlines()]
    for want in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=on-failure", "User=shopfloor",
                 "StateDirectory=shopfloor-collector", "ConfigurationDirectory=shopfloor-collector",
                 "ExecReload=/bin/kill -HUP $MAINPID", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "PrivateTmp=yes", "Environment=COLLECTOR_STATE_DIR=/var/lib/shopfloor-collector"):
        assert want in lines, want
    assert any(ln.startswith("ExecStart=") and ln.endswith(" run -c /etc/shopfloor-collector/workshop.yaml")
               for ln in lines)
    env = (ROOT / "deploy/systemd/collector.env.example").read_text(encoding="utf-8")
    keys = {ln.lstrip("#").split("=", 1)[0] for ln in env.splitlines() if re.match(r"^#?COLLECTOR_\w+=", ln)}
    known = {f"COLLECTOR_{name.upper()}" for name in Settings.model_fields}
    assert keys and keys <= known, keys - known
    assert "COLLECTOR_HTTP_TOKEN" in keys
    assert not re.search(r"^COLLECTOR_\w*(TOKEN|PASSWORD)=\S", env, re.M), "no secret in the example"


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")
def test_unit_sandbox_rates_ok_or_better_as_documented() -> None:
    assert ANALYZE is not None
    proc = subprocess.run([ANALYZE, "security", "--offline=true", str(UNIT)], capture_output=True, text=True,
                          timeout=60)
    m = re.search(r"Overall exposure level for shopfloor-collector\.service: (\d+\.\d) (\w+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    level, rating = float(m[1]), m[2]
    assert rating in ("OK", "SAFE"), proc.stdout
    docs = (ROOT / "docs/operations.md").read_text(encoding="utf-8")
    assert f"Overall exposure level for shopfloor-collector.service: {m[1]} {rating}" in docs, \
        "docs/operations.md shows a different figure: update it"
    assert level < 4.0


def test_unit_allows_arm_uarts_raises_the_fd_limit_and_documents_an_installed_path() -> None:
    lines = [ln.strip() for ln in UNIT.read_text(encoding="utf-8").splitlines()]
    allowed = {ln.split("=", 1)[1] for ln in lines if ln.startswith("DeviceAllow=")}
    for name in ("ttyS", "ttyUSB", "ttyACM", "ttyAMA", "ttymxc", "ttyO"):
        assert f"char-{name} rw" in allowed, name
    limit = next(ln for ln in lines if ln.startswith("LimitNOFILE="))
    assert int(limit.split("=", 1)[1]) >= 4096
    # Documentation= names a file the install steps of docs/operations.md create (a wheel has no docs/)
    doc = next(ln for ln in lines if ln.startswith("Documentation=")).split("=", 1)[1]
    assert doc.startswith("file:///usr/share/doc/shopfloor-collector/")
    ops = (ROOT / "docs/operations.md").read_text(encoding="utf-8")
    assert "install -D -m 0644 -t /usr/share/doc/shopfloor-collector docs/*.md" in ops
    assert (ROOT / "docs" / Path(doc).name).exists()


def test_collector_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    proc = subprocess.run([sys.executable, "-m", "collector.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"collector {version('shopfloor-collector')}"
