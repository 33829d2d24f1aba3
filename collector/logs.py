"""Logging: one line per event, `key=value` (default) or JSON, journald-friendly (no timestamps under systemd)."""

from __future__ import annotations

import json
import logging
import os
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class KvFormatter(logging.Formatter):
    """`level=INFO logger=x key=value ...` on one line, also with a traceback: journald and grep see one
    event per line. The traceback goes into `exc="..."` with its newlines and quotes escaped."""

    def format(self, record: logging.LogRecord) -> str:
        exc_info, exc_text, stack_info = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            line = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = exc_info, exc_text, stack_info
        if exc_info:
            line += " exc=" + _quote(self.formatException(exc_info))
        if stack_info:
            line += " stack=" + _quote(stack_info)
        return line


class LibraryNoise(logging.Filter):
    """Library records about failures the collector handles itself become DEBUG records.

    asyncua logs ERROR tracebacks from its loops when an OPC UA server goes away, and a WARNING "... was called
    but connection is closed" for each teardown step of such a session; aiohttp logs an ERROR traceback for
    every malformed HTTP request. The collector reports what matters (one WARNING `event=state` line per
    device state change, with the reason, and a 400 to the client): at WARNING and ERROR these would drown it
    in `journalctl -p warning`; at DEBUG they are there when asked for (`--log-level debug`). An exception in
    one of our HTTP handlers stays an ERROR: that is our bug, not the client's. A handler filter, because it
    must see the records of every child logger.
    """

    TEARDOWN = "was called but connection is closed"  # asyncua's close_session / close_secure_channel

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or not self._noise(record):
            return True
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            return False
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True

    def _noise(self, record: logging.LogRecord) -> bool:
        library = record.name.partition(".")[0]
        exc = record.exc_info[1] if record.exc_info else None
        if library == "asyncua":
            return exc is not None or (isinstance(record.msg, str) and record.msg.endswith(self.TEARDOWN))
        # aiohttp: a request it could not parse (aiohttp.http_exceptions: BadHttpMessage, LineTooLong, ...)
        return library == "aiohttp" and exc is not None and type(exc).__module__ == "aiohttp.http_exceptions"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def setup_logging(level: str = "INFO", fmt: str = "kv", stream: object = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
        handler.setFormatter(KvFormatter(stamp + "level=%(levelname)s logger=%(name)s %(message)s"))
    handler.addFilter(LibraryNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("asyncua", "pymodbus", "snap7"):  # snap7: INFO lines for every (re)connect attempt
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
