"""The evidence chain: monthly summaries as JSON lines, each holding the hash of the previous record.

A record is one line: the canonical JSON (UTF-8, keys sorted, no spaces, non-ASCII as is) of
`{"seq", "ts", "prev", "body", "hash"}`, where `hash` = SHA-256 (hex) of the canonical JSON of the record
without `hash`, and `prev` is the previous record's `hash` (64 zeros for the first). Changing any byte of a
record breaks its own hash or the canonical form, and removing or reordering records breaks `prev`/`seq`, so
`collector verify` finds the first record that was edited.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

GENESIS = "0" * 64
CHAIN_FILE = "evidence-chain.jsonl"


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[IO[bytes]]:
    """An exclusive lock on the chain file: the collector and `collector report` may append at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read(path: Path) -> list[dict[str, Any]]:
    """Every record (raises ValueError on a line that is not JSON; `verify` says which)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def append(path: Path, body: dict[str, Any], unique_key: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    """Append a record holding `body`; with `unique_key` (body fields), skip it when a record with the same
    values is already there (returns None then). The chain must verify before anything is added to it."""
    with _locked(path) as f:
        f.seek(0)
        lines = f.read().splitlines()
        result = verify_records(lines)
        if not result.ok:
            raise ValueError(f"{path}: the chain is broken at record {result.broken_line}: {result.reason}; "
                             "nothing appended")
        records = [json.loads(ln) for ln in lines]
        if unique_key is not None:
            key = tuple(_get(body, k) for k in unique_key)
            if any(tuple(_get(r["body"], k) for k in unique_key) == key for r in records):
                return None
        prev = records[-1] if records else None
        record: dict[str, Any] = {
            "seq": (prev["seq"] + 1) if prev else 1,
            "ts": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "prev": prev["hash"] if prev else GENESIS,
            "body": body,
        }
        record["hash"] = record_hash(record)
        f.seek(0, 2)
        f.write(canonical(record) + b"\n")
        f.flush()
        return record


def _get(body: dict[str, Any], dotted: str) -> Any:
    cur: Any = body
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


@dataclass
class VerifyResult:
    ok: bool
    records: int
    broken_line: int | None = None  # 1-based line of the first broken record
    broken_seq: int | None = None
    reason: str | None = None


def verify_records(lines: list[bytes]) -> VerifyResult:
    prev_hash = GENESIS
    for i, line in enumerate(lines, start=1):
        seq: int | None = None
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return VerifyResult(False, i - 1, i, None, f"not a JSON record ({exc})")
        seq = rec.get("seq") if isinstance(rec.get("seq"), int) else None
        missing = {"seq", "ts", "prev", "body", "hash"} - set(rec)
        if missing:
            return VerifyResult(False, i - 1, i, seq, f"missing {', '.join(sorted(missing))}")
        if rec["seq"] != i:
            return VerifyResult(False, i - 1, i, seq, f"seq is {rec['seq']}, expected {i} (record removed or moved)")
        if rec["prev"] != prev_hash:
            return VerifyResult(False, i - 1, i, seq, "prev does not match the previous record's hash")
        if record_hash(rec) != rec["hash"]:
            return VerifyResult(False, i - 1, i, seq, "hash does not match the record's content (edited)")
        if canonical(rec) != line.rstrip(b"\r"):
            return VerifyResult(False, i - 1, i, seq, "the line is not in canonical form (edited)")
        prev_hash = rec["hash"]
    return VerifyResult(True, len(lines))


def verify(path: Path) -> VerifyResult:
    raw = path.read_bytes()
    lines = raw.splitlines()
    # an empty line in the middle is an edit too; only the final newline is expected
    if lines and not raw.endswith(b"\n"):
        return _with_truncation_check(lines)
    return verify_records(lines)


def _with_truncation_check(lines: list[bytes]) -> VerifyResult:
    result = verify_records(lines)
    if result.ok:
        return VerifyResult(False, len(lines) - 1, len(lines), len(lines), "the last record lost its line end")
    return result
