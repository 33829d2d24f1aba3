"""Idle and incomplete connections against a real `collector run` with a low file-descriptor limit.

The field trial: 1,100 idle connections pinned the process at its 1,024 fds, `/healthz` was unreachable and the
idle sockets were never closed. Here a collector runs in a subprocess whose RLIMIT_NOFILE is 256 (set by
`preexec_fn`), with short `http.header_timeout`/`idle_timeout`; the test opens 300 connections that send
nothing or half a request head, and checks that `/healthz` still answers and that every one of them is closed.
"""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.broker import MosquittoProcess, free_port

NOFILE = 256
FLOOD = 300
WAVE = 30
TIMEOUT = 2.0


def low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def healthz(port: int, timeout: float) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def limited_collector(broker: MosquittoProcess, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    cfg = {"site": {"enterprise_id": "jx-limits", "workshop": "ws1"}, "devices": [],
           "mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}"}, "state_dir": str(tmp_path / "state"),
           "http": {"listen": f"127.0.0.1:{port}", "header_timeout": TIMEOUT, "idle_timeout": TIMEOUT}}
    path = tmp_path / "limits.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG"))}
    proc = subprocess.Popen([sys.executable, "-m", "collector.cli", "run", "-c", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=low_nofile)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if healthz(port, 1.0)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the collector did not answer /healthz"
            time.sleep(0.2)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_idle_and_incomplete_connections_neither_starve_healthz_nor_stay_open(
        limited_collector: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = limited_collector
    limits = Path(f"/proc/{proc.pid}/limits").read_text()
    assert f"Max open files            {NOFILE}                  {NOFILE}" in limits, limits  # it applies
    baseline = open_fds(proc.pid)
    socks: list[socket.socket] = []
    try:
        # in waves of 30 (a burst larger than the listen backlog would leave half-open sockets in the kernel's
        # queue that the collector never sees); all 300 arrive within about a second, far more than the cap
        for _ in range(FLOOD // WAVE):
            wave = []
            for _ in range(WAVE):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                wave.append(s)
            _, connected, _ = select.select([], wave, [], 3.0)
            assert len(connected) == WAVE
            for s in connected[::2]:  # half a request head: the line that would end it never comes
                s.send(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks += wave
            time.sleep(0.05)
        # while all of them are held open, /healthz answers
        started = time.monotonic()
        status, body = healthz(port, 10.0)
        assert status == 200 and body["status"] == "ok", body
        assert time.monotonic() - started < 10.0
        peak = open_fds(proc.pid)
        assert peak < NOFILE - 8, peak  # never at the limit: the cap closed the oldest idle ones first

        # every one of them gets closed: EOF (or a reset) on the client side
        open_ones = set(socks)
        deadline = time.monotonic() + 30
        while open_ones and time.monotonic() < deadline:
            readable, _, _ = select.select(list(open_ones), [], [], 0.5)
            for s in readable:
                try:
                    data = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    open_ones.discard(s)
        assert not open_ones, f"{len(open_ones)} of {FLOOD} idle connections still open after 30 s"
        time.sleep(2 * TIMEOUT)
        assert open_fds(proc.pid) <= baseline + 4, (baseline, open_fds(proc.pid))
        assert healthz(port, 5.0)[0] == 200
    finally:
        for s in socks:
            s.close()
    assert proc.poll() is None
    proc.terminate()
    _, err = proc.communicate(timeout=15)
    assert "Too many open files" not in err, err[-2000:]
    assert proc.returncode == 0, err[-2000:]


async def test_at_the_cap_the_oldest_idle_connection_makes_room(broker: MosquittoProcess, tmp_path: Path) -> None:
    """In-process, with http.max_connections 8: twenty idle sockets never hold more than 8 (+ the one being
    accepted) open, the oldest are closed first, the newest stay, and a request still gets through."""
    import asyncio

    from collector.app import Collector
    from collector.config import Settings, parse_config
    from collector.http import HttpServer

    cfg = parse_config({"site": {"enterprise_id": "jx-limits"}, "devices": [], "state_dir": str(tmp_path),
                        "mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}"},
                        "http": {"listen": f"127.0.0.1:{free_port()}", "max_connections": 8}})
    collector = Collector(cfg, Settings())
    await collector.start()
    server = HttpServer(collector)
    await server.start()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        assert server.max_connections == 8
        for _ in range(20):
            conns.append(await asyncio.open_connection("127.0.0.1", server.port))
            await asyncio.sleep(0.02)  # accepted one by one: the order of arrival is the order of eviction
        await asyncio.sleep(0.2)
        assert server.runner is not None and server.runner.server is not None
        assert len(server.runner.server.connections) <= 9
        assert server.closed_idle == 12
        for reader, _ in conns[:12]:  # the oldest twelve: closed by the server
            assert await asyncio.wait_for(reader.read(), 2) == b""
        for reader, _ in conns[-7:]:  # the newest: still open
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head = await asyncio.wait_for(reader.readline(), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        writer.close()
    finally:
        for _, w in conns:
            w.close()
        await server.stop()
        await collector.stop()
