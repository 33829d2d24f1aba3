"""The signed live snapshot a collector sends its hub once a minute: who is on line now, and this month so far.

Not evidence (no seq, no chain: the month's figures that count are the signed monthly summary), but signed with
the same enterprise key, so the hub shows only what the enterprise's own collector said. The hub keeps the latest
per (enterprise, workshop): the county operator sees which collectors are alive before a month closes (最近上报),
and the figures so far (本月至今). QoS 0 and no outbox: a lost snapshot is replaced by the next one.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from collector.evidence.canonical import canonical
from collector.evidence.keys import Signer, check_signature, fingerprint, show_fingerprint

KIND = "live_snapshot"
DOMAIN = b"shopfloor-collector live v1\n"
FIELDS = ("v", "kind", "enterprise", "workshop", "ts", "figures", "month", "banner", "key")


def _fractions(figures: Any) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name in ("D1", "D2"):
        f = figures.get(name) if isinstance(figures, dict) else None
        if isinstance(f, dict) and isinstance(f.get("numerator"), int) and isinstance(f.get("denominator"), int):
            out[name] = {"numerator": f["numerator"], "denominator": f["denominator"]}
    return out


def signed_bytes(msg: dict[str, Any]) -> bytes:
    return DOMAIN + canonical({k: msg.get(k) for k in FIELDS})


def live_message(signer: Signer, snapshot: dict[str, Any], workshop: str) -> dict[str, Any]:
    """The hub's copy of `{root}/indicators` (docs/mqtt.md): D1 and D2 now and this month so far, as fractions,
    and the banner when simulated devices are counted."""
    month = (snapshot.get("periods") or {}).get("month") if isinstance(snapshot.get("periods"), dict) else None
    msg: dict[str, Any] = {
        "v": 1, "kind": KIND, "enterprise": snapshot.get("enterprise"), "workshop": workshop,
        "ts": snapshot.get("ts"), "figures": _fractions(snapshot.get("figures")),
        "month": ({"label": (month.get("period") or {}).get("label"), "figures": _fractions(month.get("figures"))}
                  if isinstance(month, dict) else None),
        "banner": snapshot.get("banner"), "key": signer.fingerprint}
    msg["sig"] = signer.sign(signed_bytes(msg))
    return msg


def verify_live(msg: dict[str, Any], public_key: Ed25519PublicKey, fp: str | None = None) -> str | None:
    """None when `msg` is a live snapshot signed by `public_key`, else why not."""
    if msg.get("kind") != KIND or msg.get("v") != 1:
        return "not a live snapshot (kind live_snapshot, v 1)"
    fp = fp or fingerprint(public_key)
    if msg.get("key") != fp:
        return f"signed by key {show_fingerprint(str(msg.get('key')))}, not {show_fingerprint(fp)}"
    try:
        data = signed_bytes(msg)
    except ValueError as exc:
        return f"not canonical JSON ({exc})"
    if not check_signature(public_key, str(msg.get("sig")), data):
        return "the signature does not verify (forged or edited)"
    return None
