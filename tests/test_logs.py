"""Log lines: one event per line in both formats, tracebacks included (journald, grep)."""

from __future__ import annotations

import io
import json
import logging

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
