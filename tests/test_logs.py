"""Log lines: one event per line in both formats, tracebacks included (journald, grep)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import pytest

from collector.logs import setup_logging


@pytest.fixture
def restore_root() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def _log_a_failure() -> None:
    try:
        raise ValueError('bad "answer"\nsecond line')
    except ValueError:
        logging.getLogger("collector.engine").exception("device=%s event=unexpected_error", "imm-01")


def test_kv_puts_a_traceback_on_the_same_line(restore_root: object) -> None:
    out = io.StringIO()
    setup_logging("INFO", "kv", out)
    _log_a_failure()
    logging.getLogger("collector.app").info("event=after")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first = lines[0]
    assert "level=ERROR logger=collector.engine device=imm-01 event=unexpected_error exc=\"Traceback" in first
    assert '\\nValueError: bad \\"answer\\"\\nsecond line"' in first
    assert lines[1].endswith("level=INFO logger=collector.app event=after")


def test_json_keeps_the_traceback_in_one_field(restore_root: object) -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", out)
    _log_a_failure()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["level"] == "error" and rec["msg"] == "device=imm-01 event=unexpected_error"
    assert rec["exc"].startswith("Traceback") and rec["exc"].endswith('ValueError: bad "answer"\nsecond line')


def test_a_periodic_job_that_keeps_failing_is_logged_once_then_once_a_minute(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from collector import app

    now = [1000.0]
    monkeypatch.setattr(app.time, "monotonic", lambda: now[0])
    caplog.set_level("INFO", logger="collector.app")
    f = app._Failures("flush")
    for _ in range(30):  # a full disk: every second for 30 s
        try:
            raise OSError("No space left on device")
        except OSError:
            f.failed()
        now[0] += 1
    assert [r.getMessage() for r in caplog.records] == ["event=periodic_failed fn=flush"]
    assert caplog.records[0].exc_info is not None
    now[0] += 60
    try:
        raise OSError("No space left on device")
    except OSError:
        f.failed()
    f.ok()
    assert [r.getMessage() for r in caplog.records][1:] == ["event=periodic_failing fn=flush failures=31",
                                                            "event=periodic_recovered fn=flush after_failures=31"]


async def _send_malformed_request(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nthis is no header\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_a_malformed_http_request_writes_no_error_traceback(restore_root: object, tmp_path: Path,
                                                                 level: str) -> None:
    """The collector's own HTTP server (aiohttp) answers 400; aiohttp's ERROR traceback becomes DEBUG."""
    from collector.app import Collector
    from collector.broker import free_port
    from collector.config import Settings, parse_config
    from collector.http import HttpServer

    cfg = parse_config({"site": {"enterprise_id": "e"}, "state_dir": str(tmp_path),
                        "http": {"enabled": True, "listen": f"127.0.0.1:{free_port()}"}, "devices": []})
    out = io.StringIO()
    setup_logging(level, "kv", out)
    server = HttpServer(Collector(cfg, Settings()))
    await server.start()
    try:
        assert (await _send_malformed_request(server.port)).split(b"\r\n")[0].endswith(b" 400 Bad Request")
        await asyncio.sleep(0.05)
    finally:
        await server.stop()
    lines = [line for line in out.getvalue().splitlines() if "logger=aiohttp" in line]
    if level == "INFO":
        assert lines == []
    else:
        assert len(lines) == 1 and "level=DEBUG logger=aiohttp.server" in lines[0]
        assert 'exc="Traceback' in lines[0] and "BadHttpMessage" in lines[0]


def test_a_device_state_change_is_one_warning_line_with_its_reason(restore_root: object, tmp_path: Path) -> None:
    """`journalctl -p warning` must show a device going offline (and back), not only library noise."""
    from collector.model import DeviceState
    from collector.status import StatusStore, StatusTracker

    out = io.StringIO()
    setup_logging("INFO", "kv", out)
    tracker = StatusTracker(StatusStore(tmp_path / "status.db", 60), ["imm-01"])
    tracker.set_state("imm-01", DeviceState.ONLINE)  # first contact: no news
    tracker.set_state("imm-01", DeviceState.OFFLINE, "connection refused")
    tracker.set_state("imm-01", DeviceState.OFFLINE, "no answer within 1 s")  # same state, new reason
    tracker.set_state("imm-01", DeviceState.OFFLINE, "no answer within 1 s")  # nothing new: no line
    tracker.set_state("imm-01", DeviceState.ONLINE)
    tracker.store.close()
    lines = [line.partition("level=")[2] for line in out.getvalue().splitlines()]
    assert lines == [
        "INFO logger=collector.status device=imm-01 event=state state=online from=never_seen reason=-",
        "WARNING logger=collector.status device=imm-01 event=state state=offline from=online "
        "reason=connection_refused",
        "INFO logger=collector.status device=imm-01 event=state state=offline from=offline "
        "reason=no_answer_within_1_s",
        "WARNING logger=collector.status device=imm-01 event=state state=online from=offline reason=-",
    ]


async def test_a_bug_in_an_http_handler_stays_an_error(restore_root: object) -> None:
    """Only the client's malformed requests are quieted: an exception in our own handler is our bug."""
    from aiohttp import web

    from collector.broker import free_port

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug of ours")

    app = web.Application()
    app.router.add_get("/", broken)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)  # as collector/http.py has it
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    out = io.StringIO()
    setup_logging("INFO", "kv", out)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 500")
        writer.close()
        await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    (line,) = [line for line in out.getvalue().splitlines() if "logger=aiohttp" in line]
    assert "level=ERROR logger=aiohttp.server" in line and "RuntimeError: a bug of ours" in line
