"""The append-only audit log of write requests: one JSON line per request, in the state directory.

Every request gets exactly one line, whatever its end (ok, refused, failed), written and fsynced before the
answer goes out, so a power cut never loses a write the requester was told about. Lines are never rewritten;
`collector writes` reads them (a torn last line from a crash is skipped).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

AUDIT_FILE = "writes.jsonl"


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0

    def append(self, record: dict[str, Any]) -> None:
        """One line, appended with O_APPEND (one write call) and fsynced."""
        line = orjson.dumps(record, default=str) + b"\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.lines += 1


def read_audit(path: Path) -> Iterator[dict[str, Any]]:
    """The records in file order; a line that does not parse (a torn last line) is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    for raw in data.splitlines():
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield record
