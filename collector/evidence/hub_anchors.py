"""The hub's receipts on the enterprise side: checked with the hub's public key, kept as the chain's hub anchors.

A receipt the hub signed for one of this collector's records says the hub held that record (`accepted`, or
`duplicate`: held already) from then on: a later rewrite of the chain before it no longer matches what the hub
holds. Each receipt is checked before it is kept: the hub's signature (`verify_receipt`), and that it names a
record of this chain (seq and hash) — a receipt for another collector of the same enterprise (same receipts
topic, another workshop) is skipped. A receipt whose signature does not verify is refused: logged once,
counted, never kept. `incident` and `refused` receipts are kept too (the hub's reason is what the enterprise
needs to see), but they anchor nothing.

Kept as JSON lines in `{state_dir}/hub-receipts.jsonl`, one per record and status; the enterprise report's footer
and `collector verify` read them. Imports nothing of the rest of the collector (collector/evidence rule).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from collector.evidence.keys import fingerprint, show_fingerprint
from collector.evidence.receipts import verify_receipt

log = logging.getLogger(__name__)

HUB_FILE = "hub-receipts.jsonl"
ANCHORING = ("accepted", "duplicate")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _chain(path: Path) -> dict[int, str]:
    """seq -> hash of the chain file (a line that does not read is skipped: `collector verify` names it)."""
    out: dict[int, str] = {}
    if not path.exists():
        return out
    for line in path.read_bytes().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("seq"), int):
            out[rec["seq"]] = str(rec.get("hash"))
    return out


def entries(path: Path) -> list[dict[str, Any]]:
    """Every kept receipt, oldest first: seq, hash, status, reason, hub, hub_key, received_at, kept_at, receipt."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and isinstance(e.get("receipt"), dict):
            out.append(e)
    return out


def anchors(path: Path) -> list[dict[str, Any]]:
    """The kept receipts that anchor a record: the hub accepted it (or held it already)."""
    return [e for e in entries(path) if e.get("status") in ANCHORING]


class HubReceipts:
    """What the hub sink's `on_receipt` calls with each receipt's payload (on the collector's loop)."""

    def __init__(self, state_dir: Path, chain_file: Path, hub_public: Ed25519PublicKey, workshop: str) -> None:
        self.path = state_dir / HUB_FILE
        self.chain_file = chain_file
        self.hub_public = hub_public
        self.workshop = workshop
        self.counts: dict[str, int] = {"accepted": 0, "duplicate": 0, "incident": 0, "refused": 0,
                                       "bad_signature": 0, "not_ours": 0, "unknown_record": 0}
        self._kept = {(e.get("seq"), e.get("hash"), e.get("status")) for e in entries(self.path)}
        self._logged: set[str] = set()

    def _once(self, key: str, level: int, msg: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, msg, *args)

    def take(self, payload: bytes) -> str:
        """Check one receipt and keep it when it verifies and names a record of this chain; returns what
        happened (a status, `bad_signature`, `not_ours` or `unknown_record`)."""
        try:
            r = json.loads(payload)
        except ValueError:
            r = None
        if not isinstance(r, dict):
            r = {}
        if r.get("workshop") not in (self.workshop, None):
            self.counts["not_ours"] += 1  # another collector of this enterprise: same receipts topic
            return "not_ours"
        problem = verify_receipt(r, self.hub_public)
        if problem is not None:
            self.counts["bad_signature"] += 1
            self._once("bad_signature", logging.ERROR, "event=hub_receipt_refused reason=%r count=%d (a receipt "
                       "the hub's key %s did not sign is never kept; logged once)", problem,
                       self.counts["bad_signature"], show_fingerprint(fingerprint(self.hub_public)))
            return "bad_signature"
        status, seq, rhash = str(r.get("status")), r.get("seq"), r.get("hash")
        if not isinstance(seq, int) or _chain(self.chain_file).get(seq) != rhash:
            self.counts["unknown_record"] += 1
            self._once(f"unknown:{seq}:{rhash}", logging.WARNING, "event=hub_receipt_unknown seq=%s hash=%s "
                       "status=%s reason=%r (the hub answered for a record this chain does not hold)", seq,
                       str(rhash)[:12], status, r.get("reason"))
            return "unknown_record"
        self.counts[status] = self.counts.get(status, 0) + 1
        if status not in ANCHORING:
            self._once(f"{status}:{seq}:{rhash}", logging.WARNING, "event=hub_%s seq=%s hash=%s reason=%r",
                       status, seq, str(rhash)[:12], r.get("reason"))
        key = (seq, rhash, status)
        if key not in self._kept:
            self._kept.add(key)
            entry = {"seq": seq, "hash": rhash, "status": status, "reason": r.get("reason"), "hub": r.get("hub"),
                     "hub_key": r.get("hub_key"), "received_at": r.get("received_at"), "kept_at": _now(),
                     "receipt": r}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
            if status in ANCHORING:
                log.info("event=hub_anchor seq=%s hash=%s hub=%s received_at=%s", seq, str(rhash)[:12],
                         r.get("hub"), r.get("received_at"))
        return status


def check(records: list[dict[str, Any]], kept: list[dict[str, Any]],
          hub_public: Ed25519PublicKey | None) -> list[tuple[dict[str, Any], str | None]]:
    """`collector verify`: each kept anchoring receipt against the chain (the record it names is still there,
    unchanged) and, with the hub's key, its signature. (entry, None) when it holds, else (entry, why not)."""
    by_seq = {r.get("seq"): r.get("hash") for r in records}
    out: list[tuple[dict[str, Any], str | None]] = []
    for e in kept:
        r = e["receipt"]
        problem = verify_receipt(r, hub_public) if hub_public is not None else None
        if problem is None and by_seq.get(r.get("seq")) != r.get("hash"):
            problem = (f"the hub holds record {r.get('seq')} with hash {str(r.get('hash'))[:12]}…, the chain "
                       + ("does not have it" if r.get("seq") not in by_seq else
                          f"has {str(by_seq[r.get('seq')])[:12]}… there: rewritten after the hub received it"))
        out.append((e, problem))
    return out
