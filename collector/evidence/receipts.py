"""Hub-signed receipts: what the hub says back about each record it was sent.

A receipt names the record (enterprise, workshop, seq, hash), what the hub did with it (`accepted`,
`duplicate` — held already, the same record — , `incident` — it contradicts what the hub holds — or `refused`
— not enrolled, not signed by an enrolled key), when, and why; it is signed with the hub's own Ed25519 key (the
same key files and fingerprint as a collector's, `collector.evidence.keys`, kept in the hub's state directory).
The enterprise keeps the receipt as the anchor of its head: the hub's signature says the hub held that record.

Here in `collector.evidence` because both ends use it: the hub signs (`make_receipt`), the enterprise's collector
checks (`verify_receipt`, collector/evidence/hub_anchors.py) with the hub's public key from its config.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from collector.evidence.canonical import canonical
from collector.evidence.keys import Signer, check_signature, fingerprint

DOMAIN = b"shopfloor-collector hub receipt v1\n"
FIELDS = ("v", "kind", "hub", "enterprise", "workshop", "seq", "hash", "status", "reason", "received_at",
          "hub_key")
STATUSES = ("accepted", "duplicate", "incident", "refused")


def signed_bytes(receipt: dict[str, Any]) -> bytes:
    return DOMAIN + canonical({k: receipt.get(k) for k in FIELDS})


def make_receipt(signer: Signer, *, hub: str, enterprise: str, workshop: str | None, seq: int | None,
                 record_hash: str | None, status: str, reason: str | None, received_at: str) -> dict[str, Any]:
    assert status in STATUSES, status
    r: dict[str, Any] = {"v": 1, "kind": "hub_receipt", "hub": hub, "enterprise": enterprise,
                         "workshop": workshop, "seq": seq, "hash": record_hash, "status": status,
                         "reason": reason, "received_at": received_at, "hub_key": signer.fingerprint}
    r["sig"] = signer.sign(signed_bytes(r))
    return r


def verify_receipt(receipt: dict[str, Any], hub_public: Ed25519PublicKey) -> str | None:
    """None when the receipt is the hub's and unedited, else why not (what a collector runs on a receipt)."""
    if receipt.get("kind") != "hub_receipt" or receipt.get("v") != 1:
        return "not a hub receipt (kind hub_receipt, v 1)"
    if receipt.get("hub_key") != fingerprint(hub_public):
        return f"signed by hub key {receipt.get('hub_key')}, not {fingerprint(hub_public)}"
    if not check_signature(hub_public, str(receipt.get("sig")), signed_bytes(receipt)):
        return "the hub's signature does not verify (forged or edited)"
    return None
