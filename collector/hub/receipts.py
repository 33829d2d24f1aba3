"""Hub-signed receipts: the format and its check live in `collector.evidence.receipts`, where the enterprise's
collector verifies them too (it imports nothing of the hub); the hub signs with `make_receipt`."""

from __future__ import annotations

from collector.evidence.receipts import DOMAIN, FIELDS, STATUSES, make_receipt, signed_bytes, verify_receipt

__all__ = ["DOMAIN", "FIELDS", "STATUSES", "make_receipt", "signed_bytes", "verify_receipt"]
