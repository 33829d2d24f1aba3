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
