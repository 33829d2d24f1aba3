"""One message from an enterprise, checked and stored: the hub's core rule.

A message is an anchor (`kind: evidence_head`, the signed head alone) or a full signed record (with `body`:
a monthly summary, a key record). It is checked in this order, and the first failure decides:

1. `refused` (nothing stored, no incident): the sender is not enrolled; the record names another enterprise than
   the sender's (the broker authenticated the sender: the topic level is its MQTT user); not signed by a key
   enrolled for it; a body that does not match its hash; a signature that does not verify.
2. `incident` (stored in `incidents`, the enterprise shows 数据异常): the record contradicts what the hub holds —
   another record at the same seq, a prev that is not the held predecessor's hash, a held successor whose prev
   is not this hash, a time before its held predecessor's or after its successor's, a monthly summary dated before
   its period closes, a record signed by a key after that key's rotation.
3. `duplicate`: the same record again; stored once (a body that arrives after its head fills it in); the
   receipt given the first time is given again.
4. `accepted`: stored, with a hub-signed receipt.

A row lock on the chain (enterprise, workshop) orders two hub processes that receive records of the same chain.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from collector.evidence.canonical import record_hash
from collector.evidence.keys import KeyFileError, Signer, fingerprint, public_from_b64, show_fingerprint
from collector.evidence.records import V2_FIELDS, verify_anchor
from collector.hub.receipts import make_receipt

HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Outcome:
    status: str  # accepted | duplicate | incident | refused
    reason: str | None
    receipt: dict[str, Any]


def iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ts(value: Any) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


class _Decided(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def ingest(conn: psycopg.Connection[Any], msg: Any, sender: str, signer: Signer, hub: str,
           received_at: str | None = None) -> Outcome:
    """Check and store one message from `sender` (the enrolled credit code the broker authenticated). Runs in
    a savepoint of the caller's transaction: a refused or incident message changes only the incidents table."""
    now = received_at or iso_now()
    m: dict[str, Any] = msg if isinstance(msg, dict) else {}
    workshop = m.get("workshop") if isinstance(m.get("workshop"), str) else None
    seq = m.get("seq") if isinstance(m.get("seq"), int) and not isinstance(m.get("seq"), bool) else None
    rhash = m.get("hash") if isinstance(m.get("hash"), str) else None

    def outcome(status: str, reason: str | None) -> Outcome:
        return Outcome(status, reason, make_receipt(signer, hub=hub, enterprise=sender, workshop=workshop,
                                                    seq=seq, record_hash=rhash, status=status, reason=reason,
                                                    received_at=now))

    with conn.transaction():
        try:
            return _check_and_store(conn, m, sender, workshop, seq, rhash, now, outcome)
        except _Decided as d:
            if d.status == "incident":
                conn.execute("INSERT INTO incidents (enterprise_id, workshop, seq, hash, reason, message, "
                             "received_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                             (sender, workshop, seq, rhash, d.reason, Jsonb(m), now))
            return outcome(d.status, d.reason)


def _check_and_store(conn: psycopg.Connection[Any], m: dict[str, Any], sender: str, workshop: str | None,
                     seq: int | None, rhash: str | None, now: str, outcome: Any) -> Outcome:
    ent = conn.execute("SELECT id, collector_id FROM enterprises WHERE id = %s", (sender,)).fetchone()
    if ent is None:
        raise _Decided("refused", f"{sender} is not enrolled at this hub (`collector hub enroll`)")
    if not m:
        raise _Decided("refused", "not a JSON object")
    if m.get("enterprise") != ent["collector_id"]:
        raise _Decided("refused", f"the record names enterprise {m.get('enterprise')!r}, but it came from "
                                  f"{sender} (enrolled collector id {ent['collector_id']!r})")
    if workshop is None or seq is None or seq < 1 or rhash is None or not HEX64.fullmatch(rhash):
        raise _Decided("refused", "not a signed record or head (workshop, seq ≥ 1, hash of 64 hex digits)")
    full = "body" in m
    body: dict[str, Any] = m["body"] if isinstance(m.get("body"), dict) else {}
    fp = str(m.get("key"))
    key = conn.execute("SELECT public_key, retired_after FROM keys WHERE fingerprint = %s AND enterprise_id = %s",
                       (fp, sender)).fetchone()
    if key is None:
        raise _Decided("refused", f"signed by key {show_fingerprint(fp)}, which is not enrolled for {sender}")
    if full:
        record = {k: m[k] for k in V2_FIELDS if k in m}
        try:
            if record_hash(record) != rhash:
                raise _Decided("refused", "the body does not match the record's hash (edited)")
        except ValueError as exc:
            raise _Decided("refused", f"not canonical JSON ({exc})") from None
    pub_b64 = key["public_key"]
    learned = None
    if pub_b64 is None:  # enrolled by fingerprint: the key record that introduces it brings the key
        if not (full and body.get("kind") == "key" and body.get("fingerprint") == fp and
                body.get("replaces") is None):
            raise _Decided("refused", f"key {show_fingerprint(fp)} is enrolled by fingerprint only: send the "
                                      "chain's key record first (it carries the public key)")
        pub_b64 = learned = str(body.get("public_key"))
    try:
        pub = public_from_b64(pub_b64)
    except KeyFileError as exc:
        raise _Decided("refused", f"the enrolled key is unusable ({exc})") from None
    bad = verify_anchor(m, pub)
    if bad is not None:
        raise _Decided("refused", bad)
    ts = _ts(m.get("ts"))
    if ts is None:
        raise _Decided("refused", f"ts {m.get('ts')!r} is not a time with a zone")
    if key["retired_after"] is not None and seq > key["retired_after"]:
        raise _Decided("incident", f"record {seq} is signed by key {show_fingerprint(fp)}, which was rotated "
                                   f"away at record {key['retired_after']}")
    period: dict[str, Any] = body["period"] if isinstance(body.get("period"), dict) else {}
    closes = _ts(period.get("closes"))
    if body.get("kind") == "monthly_summary" and closes is not None and ts < closes:
        raise _Decided("incident", f"record {seq} is dated {m.get('ts')}, before its period closes "
                                   f"({period.get('closes')}): back-dated")
    if learned is not None:
        conn.execute("UPDATE keys SET public_key = %s WHERE fingerprint = %s", (learned, fp))

    conn.execute("INSERT INTO chains (enterprise_id, workshop) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                 (sender, workshop))
    conn.execute("SELECT 1 FROM chains WHERE enterprise_id = %s AND workshop = %s FOR UPDATE", (sender, workshop))
    held = conn.execute("SELECT hash, body IS NULL AS headless, receipt, received_at FROM records "
                        "WHERE enterprise_id = %s AND workshop = %s AND seq = %s", (sender, workshop, seq)).fetchone()
    if held is not None:
        if held["hash"] != rhash:
            raise _Decided("incident", f"record {seq} differs from the one the hub has held since "
                                       f"{held['received_at'].isoformat(timespec='seconds')} (hash {rhash[:12]}…, "
                                       f"held {held['hash'][:12]}…): a rewritten history")
        if full and held["headless"]:
            conn.execute("UPDATE records SET body = %s, body_kind = %s, period = %s WHERE enterprise_id = %s "
                         "AND workshop = %s AND seq = %s",
                         (Jsonb(body), body.get("kind"), _label(body), sender, workshop, seq))
        return Outcome("duplicate", None, held["receipt"])
    before = conn.execute("SELECT seq, hash, ts FROM records WHERE enterprise_id = %s AND workshop = %s AND seq < %s "
                          "ORDER BY seq DESC LIMIT 1", (sender, workshop, seq)).fetchone()
    after = conn.execute("SELECT seq, prev, ts FROM records WHERE enterprise_id = %s AND workshop = %s AND seq > %s "
                         "ORDER BY seq LIMIT 1", (sender, workshop, seq)).fetchone()
    if before is not None and before["seq"] == seq - 1 and m.get("prev") != before["hash"]:
        raise _Decided("incident", f"record {seq}'s prev is not the hash of record {seq - 1} the hub holds: the "
                                   "history before it was rewritten")
    if after is not None and after["seq"] == seq + 1 and after["prev"] != rhash:
        raise _Decided("incident", f"record {seq + 1} the hub holds follows another record {seq}: a rewritten "
                                   "history")
    if before is not None and ts < before["ts"]:
        raise _Decided("incident", f"record {seq} is dated {m.get('ts')}, before record {before['seq']} the hub "
                                   "holds: back-dated")
    if after is not None and ts > after["ts"]:
        raise _Decided("incident", f"record {seq} is dated {m.get('ts')}, after record {after['seq']} the hub "
                                   "holds: back-dated")
    if full and body.get("kind") == "key" and body.get("replaces") is not None:
        _rotate(conn, sender, seq, body, fp)
    out: Outcome = outcome("accepted", None)
    conn.execute("INSERT INTO records (enterprise_id, workshop, seq, hash, prev, ts, key, sig, body_kind, body, "
                 "period, received_at, receipt) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                 (sender, workshop, seq, rhash, str(m.get("prev")), ts, fp, str(m.get("sig")),
                  body.get("kind") if full else m.get("body_kind"), Jsonb(body) if full else None,
                  _label(body), now, Jsonb(out.receipt)))
    return out


def _label(body: dict[str, Any]) -> str | None:
    if body.get("kind") != "monthly_summary":
        return None
    label = (body.get("period") or {}).get("label") if isinstance(body.get("period"), dict) else None
    return str(label) if label else None


def _rotate(conn: psycopg.Connection[Any], sender: str, seq: int, body: dict[str, Any], old: str) -> None:
    """A key record signed by the old key introduces the new one: enrol it, and retire the old one after it."""
    if body.get("replaces") != old:
        raise _Decided("incident", f"the key record replaces {body.get('replaces')!r} but is signed by {old}")
    try:
        new = public_from_b64(str(body.get("public_key")))
    except KeyFileError as exc:
        raise _Decided("refused", f"the key record holds no valid public key ({exc})") from None
    nfp = fingerprint(new)
    if nfp != body.get("fingerprint"):
        raise _Decided("refused", "the key record's fingerprint does not match its public key")
    other = conn.execute("SELECT enterprise_id FROM keys WHERE fingerprint = %s", (nfp,)).fetchone()
    if other is not None and other["enterprise_id"] != sender:
        raise _Decided("refused", f"the new key {show_fingerprint(nfp)} is enrolled for {other['enterprise_id']}")
    conn.execute("INSERT INTO keys (fingerprint, enterprise_id, public_key, introduced_by) VALUES (%s, %s, %s, %s) "
                 "ON CONFLICT (fingerprint) DO UPDATE SET public_key = excluded.public_key",
                 (nfp, sender, str(body.get("public_key")), old))
    conn.execute("UPDATE keys SET retired_at = now(), retired_after = %s WHERE fingerprint = %s", (seq, old))
