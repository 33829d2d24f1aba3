"""Anchoring: copies of the chain's signed head sent to others (evidence topic, later the city hub), and the
receipts that say where and when each copy went and was acknowledged.

A chain is only as good as a copy of its heads held by someone else: once a head is anchored, rewriting the
records before it (even re-signed with the collector's own key) no longer matches what the broker or the
hub holds. The head is anchored when it changes (a month closes, a register is imported) and at least once
a day. Receipts are JSON lines (`evidence-anchors.jsonl` in the state directory): `queued` when the anchor
entered the outbox, `acked` when the broker acknowledged it (PUBACK).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from collector.evidence.records import anchor_message

ANCHOR_FILE = "evidence-anchors.jsonl"
DAY = 86400.0


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def anchor_id(seq: int, queued_at: float) -> str:
    """One anchor: the head's seq and the time it was queued (the outbox row carries both)."""
    return f"{seq}@{queued_at:.3f}"


def _append(path: Path, entry: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")


def receipts(path: Path) -> list[dict[str, Any]]:
    """Every anchor, oldest first: id, seq, hash, reason, topic, queued_at and, once acknowledged, acked_at and
    broker. A line that does not read (a torn last write) is skipped."""
    by_id: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if not isinstance(e, dict) or "id" not in e:
            continue
        cur = by_id.setdefault(e["id"], {})
        cur.update({k: v for k, v in e.items() if k != "event"})
    return list(by_id.values())


def due(head: dict[str, Any] | None, path: Path, now: float, interval: float = DAY) -> str | None:
    """Why the head must be anchored now (`month_close`, `head`, `daily`), or None."""
    if head is None:
        return None
    done = receipts(path)
    if not any(r.get("hash") == head["hash"] for r in done):
        return "month_close" if head.get("body", {}).get("kind") == "monthly_summary" else "head"
    last = max((float(r.get("queued_at_ts", 0)) for r in done), default=0.0)
    return "daily" if now - last >= interval else None


def queue(head: dict[str, Any], reason: str, topic: str, path: Path, now: float | None = None) -> tuple[str, bytes]:
    """Record an anchor as queued; returns its id and the message to send (canonical JSON)."""
    now = time.time() if now is None else now
    msg = anchor_message(head, reason, iso(now))
    aid = anchor_id(int(head["seq"]), now)
    _append(path, {"event": "queued", "id": aid, "seq": head["seq"], "hash": head["hash"], "reason": reason,
                   "topic": topic, "queued_at": iso(now), "queued_at_ts": now})
    return aid, json.dumps(msg, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def acked(path: Path, aid: str, where: str, now: float | None = None) -> None:
    _append(path, {"event": "acked", "id": aid, "acked_at": iso(time.time() if now is None else now),
                   "broker": where})
