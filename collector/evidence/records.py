"""Building signed records and checking them: one record, one anchor message, a whole chain.

A signed record (v2) is `{"v": 2, "enterprise", "workshop", "seq", "ts", "prev", "key", "body", "hash", "sig"}`:
`hash` is SHA-256 of the canonical record without `hash` and `sig`; `sig` is Ed25519 (base64) over the signed
head (`canonical.signed_bytes`), which holds `hash` and so commits to the body. `key` is the signing key's
fingerprint. Records of older versions (v1: `seq, ts, prev, body, hash`, no signature) may only come before
the first signed record; that record's `prev` then commits to them.

Keys enter the chain in records whose body is `{"kind": "key", "public_key", "fingerprint", "replaces"}`: the
first one is signed by the key it introduces; a rotation is signed by the key it replaces, and every later
record by the new key. A chain verifies against an enrolled key when every signature verifies along that
path and the enrolled key signed at least one record (its signature covers everything before it through
`prev`, the rotations signed by it everything after).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from collector.evidence.canonical import GENESIS, canonical, head_of, record_hash, signed_bytes
from collector.evidence.keys import (
    KeyFileError,
    Signer,
    check_signature,
    fingerprint,
    public_b64,
    public_from_b64,
    show_fingerprint,
)

V1_FIELDS = {"seq", "ts", "prev", "body", "hash"}
V2_FIELDS = V1_FIELDS | {"v", "enterprise", "workshop", "key", "sig"}
ANCHOR_FIELDS = ("v", "enterprise", "workshop", "seq", "ts", "prev", "hash", "key", "sig")


def key_body(new: Ed25519PublicKey, replaces: str | None) -> dict[str, Any]:
    return {"kind": "key", "public_key": public_b64(new), "fingerprint": fingerprint(new), "replaces": replaces}


def sign_record(signer: Signer, *, enterprise: str, workshop: str, seq: int, ts: str, prev: str,
                body: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"v": 2, "enterprise": enterprise, "workshop": workshop, "seq": seq, "ts": ts,
                              "prev": prev, "key": signer.fingerprint, "body": body}
    record["hash"] = record_hash(record)
    record["sig"] = signer.sign(signed_bytes(record))
    return record


def anchor_message(record: dict[str, Any], reason: str, queued_at: str) -> dict[str, Any]:
    """What goes to the evidence topic and the hub: the signed head, verifiable alone with the public key."""
    return {"kind": "evidence_head", **{k: record.get(k) for k in ANCHOR_FIELDS}, "reason": reason,
            "body_kind": record.get("body", {}).get("kind"), "queued_at": queued_at}


def verify_anchor(message: dict[str, Any], public_key: Ed25519PublicKey, fp: str | None = None) -> str | None:
    """Check an anchor message (or any signed record's head) with the enterprise's public key alone.

    Returns None when it verifies, else the reason. This is the hub's check: it needs no chain and no body.
    `fp`: the key's fingerprint when the caller has it already (the hub keeps it with the parsed key)."""
    missing = [k for k in ANCHOR_FIELDS if message.get(k) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    if message["v"] != 2:
        return f"format v{message['v']} is not a signed head"
    fp = fp or fingerprint(public_key)
    if message["key"] != fp:
        return f"signed by key {show_fingerprint(str(message['key']))}, not {show_fingerprint(fp)}"
    if not check_signature(public_key, str(message["sig"]), signed_bytes(head_of(message))):
        return "the signature does not verify (forged or edited)"
    return None


@dataclass
class VerifyResult:
    ok: bool
    records: int  # records verified before the first broken one (all of them when ok)
    broken_line: int | None = None  # 1-based line of the first broken record
    broken_seq: int | None = None
    reason: str | None = None
    unsigned: int = 0  # leading records of an older version, without signature
    keys: list[str] = field(default_factory=list)  # fingerprints in the order the chain introduced them
    enrolled: str | None = None  # the fingerprint checked against, when one was given


def _ts(value: Any) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


class _Broken(Exception):
    pass


def verify_lines(lines: list[bytes], enrolled: Ed25519PublicKey | str | None = None) -> VerifyResult:
    """Hashes, order, time order and every signature; then, with `enrolled` (a public key or a fingerprint),
    that the chain is signed by that key. Never raises on bad input: the result names the record."""
    enrolled_fp = enrolled if isinstance(enrolled, str) or enrolled is None else fingerprint(enrolled)
    res = VerifyResult(True, 0, enrolled=enrolled_fp)
    prev_hash, prev_ts = GENESIS, None
    known: dict[str, Ed25519PublicKey] = {}
    introduced_at: dict[str, int] = {}
    signed: dict[str, int] = {}  # fingerprint -> last line it signed
    current: str | None = None

    def broken(i: int, seq: Any, reason: str) -> VerifyResult:
        res.ok, res.records, res.broken_line, res.reason = False, i - 1, i, reason
        res.broken_seq = seq if isinstance(seq, int) else None
        return res

    for i, line in enumerate(lines, start=1):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return broken(i, None, f"not a JSON record ({exc})")
        seq = rec.get("seq")
        is_signed = "sig" in rec or "v" in rec
        missing = (V2_FIELDS if is_signed else V1_FIELDS) - set(rec)
        if missing:
            return broken(i, seq, f"missing {', '.join(sorted(missing))}")
        if seq != i:
            return broken(i, seq, f"seq is {seq}, expected {i} (a record was removed, added or moved)")
        if rec["prev"] != prev_hash:
            return broken(i, seq, "prev does not match the previous record's hash (a record was removed or "
                                  "replaced before it)")
        try:
            digest, form = record_hash(rec), canonical(rec)
        except ValueError as exc:  # NaN or Infinity: no canonical form
            return broken(i, seq, f"not canonical JSON ({exc})")
        if digest != rec["hash"]:
            return broken(i, seq, "hash does not match the record's content (edited)")
        if form != line.rstrip(b"\r"):
            return broken(i, seq, "the line is not in canonical form (edited)")
        ts = _ts(rec["ts"])
        if ts is None:
            return broken(i, seq, f"ts {rec['ts']!r} is not a time with a zone")
        if prev_ts is not None and ts < prev_ts:
            return broken(i, seq, f"ts {rec['ts']} is earlier than record {i - 1}'s (back-dated)")
        body = rec["body"] if isinstance(rec["body"], dict) else {}
        closes = _ts((body.get("period") or {}).get("closes")) if isinstance(body.get("period"), dict) else None
        if body.get("kind") == "monthly_summary" and closes is not None and ts < closes:
            return broken(i, seq, f"dated {rec['ts']}, before its period closes ({body['period']['closes']}): "
                                  "back-dated")
        if not is_signed:
            if current is not None:
                return broken(i, seq, "unsigned, after signing began (inserted or stripped of its signature)")
            res.unsigned += 1
        else:
            try:
                current = _check_signed(rec, current, known, introduced_at, i)
            except _Broken as exc:
                return broken(i, seq, str(exc))
            signed[str(rec["key"])] = i
        prev_hash, prev_ts = rec["hash"], ts
    res.records = len(lines)
    res.keys = list(known)
    if enrolled_fp is not None:
        return _check_enrolled(res, enrolled, enrolled_fp, known, introduced_at, signed, len(lines))
    return res


def _check_signed(rec: dict[str, Any], current: str | None, known: dict[str, Ed25519PublicKey],
                  introduced_at: dict[str, int], line: int) -> str:
    """Check one signed record against the chain's key at this point; returns the key from here on."""
    body = rec["body"] if isinstance(rec["body"], dict) else {}
    fp = str(rec["key"])
    new: Ed25519PublicKey | None = None
    if body.get("kind") == "key":
        try:
            new = public_from_b64(str(body.get("public_key")))
        except KeyFileError as exc:
            raise _Broken(f"the key record holds no valid public key ({exc})") from None
        if fingerprint(new) != body.get("fingerprint"):
            raise _Broken("the key record's fingerprint does not match its public key")
        if body.get("replaces") != current:
            raise _Broken(f"the key record replaces {body.get('replaces')!r}, but the chain's key is {current!r}")
    if current is None:
        if new is None:
            raise _Broken("signed, but no key was introduced before it")
        signer = new  # the first key signs its own introduction
    elif fp != current:
        raise _Broken(f"signed by key {show_fingerprint(fp)}, but the chain's key here is "
                      f"{show_fingerprint(current)} (introduced at record {introduced_at[current]})")
    else:
        signer = known[current]
    if fp != fingerprint(signer):
        raise _Broken(f"names key {show_fingerprint(fp)}, which did not sign it")
    if not check_signature(signer, str(rec["sig"]), signed_bytes(head_of(rec))):
        raise _Broken(f"the signature does not verify with key {show_fingerprint(fp)} (forged or edited)")
    if new is None:
        return current if current is not None else fp
    nfp = fingerprint(new)
    known[nfp] = new
    introduced_at[nfp] = line
    return nfp


def _check_enrolled(res: VerifyResult, enrolled: Ed25519PublicKey | str | None, fp: str,
                    known: dict[str, Ed25519PublicKey], introduced_at: dict[str, int], signed: dict[str, int],
                    n: int) -> VerifyResult:
    def fail(line: int, reason: str) -> VerifyResult:
        res.ok, res.records, res.broken_line, res.broken_seq, res.reason = False, line - 1, line, line, reason
        return res

    if not known:
        return fail(1, "no record is signed (a chain from a version before signing): the enrolled key "
                       f"{show_fingerprint(fp)} vouches for none of it" if n else "the chain is empty")
    if fp not in known:
        first = min(introduced_at.values())
        return fail(first, f"signed by key {', '.join(show_fingerprint(k) for k in known)}, not by the enrolled "
                           f"key {show_fingerprint(fp)} (rewritten with another key?)")
    if not isinstance(enrolled, str) and enrolled is not None and \
            public_b64(known[fp]) != public_b64(enrolled):  # the same 128-bit fingerprint, another key
        return fail(introduced_at[fp], "the key with the enrolled fingerprint is not the enrolled public key")
    if fp not in signed:
        return fail(introduced_at[fp], f"the enrolled key {show_fingerprint(fp)} is introduced here but signed "
                                       "no record: nothing it signed vouches for the chain")
    return res


def chain_keys(records: list[dict[str, Any]]) -> dict[str, Ed25519PublicKey]:
    """The public keys a (verified) chain introduces, by fingerprint."""
    out: dict[str, Ed25519PublicKey] = {}
    for r in records:
        body = r.get("body")
        if isinstance(body, dict) and body.get("kind") == "key":
            try:
                pub = public_from_b64(str(body.get("public_key")))
            except KeyFileError:
                continue
            out[fingerprint(pub)] = pub
    return out


def check_anchor(records: list[dict[str, Any]], message: dict[str, Any],
                 public_key: Ed25519PublicKey | None = None) -> str | None:
    """An anchored head against a (verified) chain: the message's signature, then that the chain still holds
    that record. None when both hold, else the reason (a chain rewritten or cut short after the anchor)."""
    pub = public_key or chain_keys(records).get(str(message.get("key")))
    if pub is None:
        return f"signed by key {show_fingerprint(str(message.get('key')))}, which the chain never introduced"
    bad = verify_anchor(message, pub)
    if bad is not None:
        return f"the anchor itself: {bad}"
    seq = message.get("seq")
    rec = records[seq - 1] if isinstance(seq, int) and 0 < seq <= len(records) else None
    if rec is None:
        return f"the chain has {len(records)} record(s); the anchored head is record {seq} (cut short)"
    if rec.get("hash") != message.get("hash"):
        return f"record {seq} is not the anchored one (hash {str(rec.get('hash'))[:16]}…, anchored " \
               f"{str(message.get('hash'))[:16]}…): rewritten after it was anchored"
    return None
