"""The evidence chain file: monthly summaries (and register imports, key records) as signed JSON lines.

The record format, its hash, signature and verification live in `collector/evidence/` (the hub reuses them);
this module owns the file: appending under a lock, never to a chain that does not verify, signing with the
state directory's key. The first record a key signs on a chain introduces it (a chain kept by an older,
unsigning version keeps its records; the first signed one commits to them through `prev`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from collector.evidence.canonical import GENESIS, canonical
from collector.evidence.keys import Signer, show_fingerprint
from collector.evidence.records import VerifyResult, key_body, sign_record, verify_lines

CHAIN_FILE = "evidence-chain.jsonl"

__all__ = ["CHAIN_FILE", "GENESIS", "ChainKeyError", "VerifyResult", "append", "head", "read", "rotate", "verify"]


class ChainKeyError(ValueError):
    """The state directory's key is not the key the chain is signed with: nothing is appended."""


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


def head(path: Path) -> dict[str, Any] | None:
    """The last record, if any."""
    records = read(path)
    return records[-1] if records else None


def _now_iso(now: float | None) -> str:
    t = dt.datetime.now(dt.UTC) if now is None else dt.datetime.fromtimestamp(now, dt.UTC)
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def _open_chain(f: IO[bytes], path: Path) -> tuple[list[dict[str, Any]], VerifyResult]:
    f.seek(0)
    lines = f.read().splitlines()
    result = verify_lines(lines)
    if not result.ok:
        raise ValueError(f"{path}: the chain is broken at record {result.broken_line}: {result.reason}; "
                         "nothing appended")
    return [json.loads(ln) for ln in lines], result


def _write(f: IO[bytes], records: list[dict[str, Any]], signer: Signer, enterprise: str, workshop: str,
           body: dict[str, Any], ts: str) -> dict[str, Any]:
    prev = records[-1] if records else None
    rec = sign_record(signer, enterprise=enterprise, workshop=workshop, seq=(prev["seq"] + 1) if prev else 1,
                      ts=max(ts, prev["ts"]) if prev else ts, prev=prev["hash"] if prev else GENESIS, body=body)
    f.seek(0, 2)
    f.write(canonical(rec) + b"\n")
    f.flush()
    records.append(rec)
    return rec


def append(path: Path, body: dict[str, Any], signer: Signer, *, enterprise: str, workshop: str,
           unique_key: tuple[str, ...] | None = None, now: float | None = None) -> dict[str, Any] | None:
    """Append a signed record holding `body`; with `unique_key` (body fields), skip it when a record with the
    same values is already there (returns None then). The chain must verify before anything is added, and be
    signed with `signer`'s key (a chain without a key gets a record introducing it first)."""
    with _locked(path) as f:
        records, result = _open_chain(f, path)
        if unique_key is not None:
            key = tuple(_get(body, k) for k in unique_key)
            if any(tuple(_get(r["body"], k) for k in unique_key) == key for r in records):
                return None
        ts = _now_iso(now)
        current = result.keys[-1] if result.keys else None
        if current is None:
            _write(f, records, signer, enterprise, workshop, key_body(signer.public, None), ts)
        elif current != signer.fingerprint:
            raise ChainKeyError(
                f"{path} is signed with key {show_fingerprint(current)}, but this state directory's key is "
                f"{show_fingerprint(signer.fingerprint)}: restore evidence-key.pem of {show_fingerprint(current)} "
                "from the backup (or start a new chain file and enrol the new key with the assessor); nothing "
                "appended")
        return _write(f, records, signer, enterprise, workshop, body, ts)


def rotate(path: Path, old: Signer, new: Signer, *, enterprise: str, workshop: str,
           now: float | None = None) -> dict[str, Any]:
    """Introduce `new` in a record signed by `old` (the chain's key); later records are signed by `new`."""
    with _locked(path) as f:
        records, result = _open_chain(f, path)
        current = result.keys[-1] if result.keys else None
        ts = _now_iso(now)
        if current is None:
            _write(f, records, old, enterprise, workshop, key_body(old.public, None), ts)
        elif current != old.fingerprint:
            raise ChainKeyError(f"{path} is signed with key {show_fingerprint(current)}, not with "
                                f"{show_fingerprint(old.fingerprint)}: only the chain's key can introduce another")
        return _write(f, records, old, enterprise, workshop, key_body(new.public, old.fingerprint), ts)


def _get(body: dict[str, Any], dotted: str) -> Any:
    cur: Any = body
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def verify(path: Path, enrolled: Any = None) -> VerifyResult:
    """The file's chain: hashes, order, signatures and, with `enrolled` (public key or fingerprint), the key."""
    raw = path.read_bytes()
    lines = raw.splitlines()
    result = verify_lines(lines, enrolled)
    # only the final newline is expected: a record without its line end may have been cut short
    if result.ok and lines and not raw.endswith(b"\n"):
        n = len(lines)
        return VerifyResult(False, n - 1, n, n, "the last record lost its line end", result.unsigned, result.keys,
                            result.enrolled)
    return result
