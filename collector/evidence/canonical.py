"""The one byte form every hash and signature is computed over.

Canonical JSON: UTF-8, keys sorted, no spaces, non-ASCII as is, no NaN. Two implementations that agree on
JSON agree on these bytes, which is what lets a hub in another language check a record.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64
# what a signature covers besides the record's hash (which covers everything else: body, seq, ts, prev, key)
HEAD_FIELDS = ("v", "enterprise", "workshop", "seq", "ts", "prev", "hash", "key")


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (hex) of the record without its `hash` and `sig`."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k not in ("hash", "sig")})).hexdigest()


def head_of(record: dict[str, Any]) -> dict[str, Any]:
    """The signed head of a record: small enough to send alone, and it commits to the body through `hash`."""
    return {k: record.get(k) for k in HEAD_FIELDS}


def signed_bytes(head: dict[str, Any]) -> bytes:
    """The exact bytes an Ed25519 signature covers: a domain tag, then the canonical head."""
    return b"shopfloor-collector evidence v2\n" + canonical({k: head.get(k) for k in HEAD_FIELDS})
