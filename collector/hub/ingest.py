"""Messages from enterprises, checked and stored: the hub's core rule.

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

A live snapshot (`kind: live_snapshot`, collector/evidence/live.py) is not evidence: checked for the same sender,
enterprise, enrolled key (not rotated away) and signature, it replaces the collector's earlier one (`live`, the
newest `ts` wins) and gets no receipt: `live`, or `live_refused` with the reason.

A batch is read with a handful of queries (enterprises and keys, the chains' row locks, each record's held
neighbours), decided in memory in arrival order (a record accepted earlier in the batch is held for the later
ones), and written with one COPY (records) and one `executemany` (incidents, rare). The row locks on the chains
(enterprise, workshop), taken in a fixed order, serialise two hub processes that receive records of the same chain.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from psycopg.types.json import Jsonb

from collector.evidence.canonical import record_hash
from collector.evidence.keys import KeyFileError, Signer, fingerprint, public_from_b64, show_fingerprint
from collector.evidence.live import KIND as LIVE_KIND
from collector.evidence.live import verify_live
from collector.evidence.records import V2_FIELDS, verify_anchor
from collector.hub.receipts import make_receipt

HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Outcome:
    status: str  # accepted | duplicate | incident | refused
    reason: str | None
    receipt: dict[str, Any]


@dataclass
class _Held:
    """A record the hub holds (from the database, or accepted earlier in this batch)."""

    seq: int
    hash: str
    prev: str
    ts: dt.datetime
    headless: bool
    receipt: dict[str, Any]
    received_at: dt.datetime


@dataclass
class _Key:
    enterprise: str
    public_key: str | None
    retired_after: int | None


def iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ts(value: Any) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


_PUBLIC: dict[str, tuple[Ed25519PublicKey, str]] = {}


def _public(b64: str) -> tuple[Ed25519PublicKey, str]:
    """An enrolled key parsed once per process, with its fingerprint (a city's few thousand keys; each message
    would otherwise decode its key and hash it again before the signature check)."""
    got = _PUBLIC.get(b64)
    if got is None:
        pub = public_from_b64(b64)
        if len(_PUBLIC) >= 100_000:
            _PUBLIC.clear()
        got = _PUBLIC[b64] = (pub, fingerprint(pub))
    return got


class _Decided(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _fields(m: dict[str, Any]) -> tuple[str | None, int | None, str | None]:
    workshop = m.get("workshop") if isinstance(m.get("workshop"), str) else None
    seq = m.get("seq") if isinstance(m.get("seq"), int) and not isinstance(m.get("seq"), bool) else None
    rhash = m.get("hash") if isinstance(m.get("hash"), str) else None
    return workshop, seq, rhash


def _label(body: dict[str, Any]) -> str | None:
    if body.get("kind") != "monthly_summary":
        return None
    label = (body.get("period") or {}).get("label") if isinstance(body.get("period"), dict) else None
    return str(label) if label else None


class _Batch:
    """What the hub holds that a batch's decisions need, read once; plus what the batch itself adds."""

    def __init__(self, conn: psycopg.Connection[Any], items: list[tuple[str, dict[str, Any]]]) -> None:
        self.conn = conn
        senders = sorted({s for s, _ in items})
        self.ents: dict[str, str] = {r["id"]: r["collector_id"] for r in conn.execute(
            "SELECT id, collector_id FROM enterprises WHERE id = ANY(%s)", (senders,)).fetchall()}
        fps = sorted({str(m.get("key")) for _, m in items})
        self.keys: dict[str, _Key] = {r["fingerprint"]: _Key(r["enterprise_id"], r["public_key"], r["retired_after"])
                                      for r in conn.execute("SELECT fingerprint, enterprise_id, public_key, "
                                                            "retired_after FROM keys WHERE fingerprint = ANY(%s)",
                                                            (fps,)).fetchall()}
        wanted: set[tuple[str, str, int]] = set()
        for s, m in items:
            w, q, _ = _fields(m)
            if s in self.ents and w is not None and q is not None:
                wanted.add((s, w, q))
        chains = sorted({(e, w) for e, w, _ in wanted})
        self.held: dict[tuple[str, str, int], _Held] = {}
        self.before: dict[tuple[str, str, int], _Held] = {}
        self.after: dict[tuple[str, str, int], _Held] = {}
        self.added: dict[tuple[str, str], dict[int, _Held]] = {}
        if not chains:
            return
        es, ws = [c[0] for c in chains], [c[1] for c in chains]
        conn.execute("INSERT INTO chains (enterprise_id, workshop) SELECT * FROM unnest(%s::text[], %s::text[]) "
                     "ON CONFLICT DO NOTHING", (es, ws))
        conn.execute("SELECT 1 FROM chains c JOIN unnest(%s::text[], %s::text[]) AS q(e, w) "
                     "ON c.enterprise_id = q.e AND c.workshop = q.w ORDER BY c.enterprise_id, c.workshop "
                     "FOR UPDATE OF c", (es, ws))
        qs = sorted(wanted)
        rows = conn.execute(
            "SELECT q.e, q.w, q.s, "
            "h.seq AS h_seq, h.hash AS h_hash, h.prev AS h_prev, h.ts AS h_ts, h.body IS NULL AS h_headless, "
            "h.receipt AS h_receipt, h.received_at AS h_received, "
            "b.seq AS b_seq, b.hash AS b_hash, b.prev AS b_prev, b.ts AS b_ts, "
            "a.seq AS a_seq, a.hash AS a_hash, a.prev AS a_prev, a.ts AS a_ts "
            "FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS q(e, w, s) "
            "LEFT JOIN records h ON h.enterprise_id = q.e AND h.workshop = q.w AND h.seq = q.s "
            "LEFT JOIN LATERAL (SELECT seq, hash, prev, ts FROM records r WHERE r.enterprise_id = q.e AND "
            "r.workshop = q.w AND r.seq < q.s ORDER BY r.seq DESC LIMIT 1) b ON true "
            "LEFT JOIN LATERAL (SELECT seq, hash, prev, ts FROM records r WHERE r.enterprise_id = q.e AND "
            "r.workshop = q.w AND r.seq > q.s ORDER BY r.seq LIMIT 1) a ON true",
            ([q[0] for q in qs], [q[1] for q in qs], [q[2] for q in qs])).fetchall()
        epoch = dt.datetime.fromtimestamp(0, dt.UTC)
        for r in rows:
            k = (r["e"], r["w"], r["s"])
            if r["h_seq"] is not None:
                self.held[k] = _Held(r["h_seq"], r["h_hash"], r["h_prev"], r["h_ts"], r["h_headless"],
                                     r["h_receipt"], r["h_received"])
            if r["b_seq"] is not None:
                self.before[k] = _Held(r["b_seq"], r["b_hash"], r["b_prev"], r["b_ts"], False, {}, epoch)
            if r["a_seq"] is not None:
                self.after[k] = _Held(r["a_seq"], r["a_hash"], r["a_prev"], r["a_ts"], False, {}, epoch)

    def record_at(self, e: str, w: str, s: int) -> _Held | None:
        return self.added.get((e, w), {}).get(s) or self.held.get((e, w, s))

    def neighbours(self, e: str, w: str, s: int) -> tuple[_Held | None, _Held | None]:
        """The held records just before and just after seq s (database or this batch)."""
        b, a = self.before.get((e, w, s)), self.after.get((e, w, s))
        for h in self.added.get((e, w), {}).values():
            if h.seq < s and (b is None or h.seq > b.seq):
                b = h
            if h.seq > s and (a is None or h.seq < a.seq):
                a = h
        return b, a


def ingest(conn: psycopg.Connection[Any], msg: Any, sender: str, signer: Signer, hub: str,
           received_at: str | None = None) -> Outcome:
    """Check and store one message from `sender` (the enrolled credit code the broker authenticated)."""
    return ingest_batch(conn, [(sender, msg)], signer, hub, received_at)[0]


def ingest_batch(conn: psycopg.Connection[Any], items: list[tuple[str, Any]], signer: Signer, hub: str,
                 received_at: str | None = None) -> list[Outcome]:
    """Check and store messages in arrival order, in one transaction (a savepoint inside the caller's)."""
    now = received_at or iso_now()
    now_dt = dt.datetime.fromisoformat(now.replace("Z", "+00:00"))
    msgs = [(s, m if isinstance(m, dict) else {}) for s, m in items]
    outcomes: list[Outcome] = []
    with conn.transaction():
        batch = _Batch(conn, msgs)
        new_records: list[tuple[Any, ...]] = []
        new_incidents: list[tuple[Any, ...]] = []
        new_live: list[tuple[Any, ...]] = []
        for sender, m in msgs:
            if m.get("kind") == LIVE_KIND:
                outcomes.append(_live(batch, m, sender, now, new_live))
                continue
            workshop, seq, rhash = _fields(m)

            def outcome(status: str, reason: str | None, sender: str = sender, workshop: str | None = workshop,
                        seq: int | None = seq, rhash: str | None = rhash) -> Outcome:
                return Outcome(status, reason, make_receipt(
                    signer, hub=hub, enterprise=sender, workshop=workshop, seq=seq, record_hash=rhash,
                    status=status, reason=reason, received_at=now))

            try:
                out = _decide(batch, m, sender, workshop, seq, rhash, now_dt, outcome, new_records)
            except _Decided as d:
                if d.status == "incident":
                    new_incidents.append((sender, workshop, seq, rhash, d.reason, Jsonb(m), now))
                out = outcome(d.status, d.reason)
            outcomes.append(out)
        if new_records:  # COPY: one stream for the batch, cheaper on both sides than a pipelined INSERT a row
            with conn.cursor() as cur, cur.copy("COPY records (enterprise_id, workshop, seq, hash, prev, ts, key, "
                                                "sig, body_kind, body, period, received_at, receipt) "
                                                "FROM STDIN") as copy:
                for row in new_records:
                    copy.write_row(row)
        if new_live:  # in arrival order: a later snapshot of the same collector replaces an earlier one
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO live (enterprise_id, workshop, ts, figures, month, banner, received_at) "
                                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (enterprise_id, workshop) DO "
                                "UPDATE SET ts = excluded.ts, figures = excluded.figures, month = excluded.month, "
                                "banner = excluded.banner, received_at = excluded.received_at "
                                "WHERE live.ts <= excluded.ts", new_live)
        if new_incidents:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO incidents (enterprise_id, workshop, seq, hash, reason, message, "
                                "received_at) VALUES (%s, %s, %s, %s, %s, %s, %s)", new_incidents)
    return outcomes


def _decide(batch: _Batch, m: dict[str, Any], sender: str, workshop: str | None, seq: int | None,
            rhash: str | None, now: dt.datetime, outcome: Any, new_records: list[tuple[Any, ...]]) -> Outcome:
    conn = batch.conn
    _check_sender(batch, m, sender, "record")
    if workshop is None or seq is None or seq < 1 or rhash is None or not HEX64.fullmatch(rhash):
        raise _Decided("refused", "not a signed record or head (workshop, seq ≥ 1, hash of 64 hex digits)")
    full = "body" in m
    body: dict[str, Any] = m["body"] if isinstance(m.get("body"), dict) else {}
    fp, key = _sender_key(batch, m, sender)
    if full:
        record = {k: m[k] for k in V2_FIELDS if k in m}
        try:
            if record_hash(record) != rhash:
                raise _Decided("refused", "the body does not match the record's hash (edited)")
        except ValueError as exc:
            raise _Decided("refused", f"not canonical JSON ({exc})") from None
    pub_b64 = key.public_key
    learned = None
    if pub_b64 is None:  # enrolled by fingerprint: the key record that introduces it brings the key
        if not (full and body.get("kind") == "key" and body.get("fingerprint") == fp and
                body.get("replaces") is None):
            raise _Decided("refused", f"key {show_fingerprint(fp)} is enrolled by fingerprint only: send the "
                                      "chain's key record first (it carries the public key)")
        pub_b64 = learned = str(body.get("public_key"))
    pub, pub_fp = _parsed_key(pub_b64)
    bad = verify_anchor(m, pub, pub_fp)
    if bad is not None:
        raise _Decided("refused", bad)
    ts = _ts(m.get("ts"))
    if ts is None:
        raise _Decided("refused", f"ts {m.get('ts')!r} is not a time with a zone")
    if key.retired_after is not None and seq > key.retired_after:
        raise _Decided("incident", f"record {seq} is signed by key {show_fingerprint(fp)}, which was rotated "
                                   f"away at record {key.retired_after}")
    period: dict[str, Any] = body["period"] if isinstance(body.get("period"), dict) else {}
    closes = _ts(period.get("closes"))
    if body.get("kind") == "monthly_summary" and closes is not None and ts < closes:
        raise _Decided("incident", f"record {seq} is dated {m.get('ts')}, before its period closes "
                                   f"({period.get('closes')}): back-dated")
    if learned is not None:
        conn.execute("UPDATE keys SET public_key = %s WHERE fingerprint = %s", (learned, fp))
        key.public_key = learned

    held = batch.record_at(sender, workshop, seq)
    if held is not None:
        if held.hash != rhash:
            raise _Decided("incident", f"record {seq} differs from the one the hub has held since "
                                       f"{held.received_at.isoformat(timespec='seconds')} (hash {rhash[:12]}…, "
                                       f"held {held.hash[:12]}…): a rewritten history")
        if full and held.headless:
            conn.execute("UPDATE records SET body = %s, body_kind = %s, period = %s WHERE enterprise_id = %s "
                         "AND workshop = %s AND seq = %s",
                         (Jsonb(body), body.get("kind"), _label(body), sender, workshop, seq))
            held.headless = False
        return Outcome("duplicate", None, held.receipt)
    before, after = batch.neighbours(sender, workshop, seq)
    if before is not None and before.seq == seq - 1 and m.get("prev") != before.hash:
        raise _Decided("incident", f"record {seq}'s prev is not the hash of record {seq - 1} the hub holds: the "
                                   "history before it was rewritten")
    if after is not None and after.seq == seq + 1 and after.prev != rhash:
        raise _Decided("incident", f"record {seq + 1} the hub holds follows another record {seq}: a rewritten "
                                   "history")
    if before is not None and ts < before.ts:
        raise _Decided("incident", f"record {seq} is dated {m.get('ts')}, before record {before.seq} the hub "
                                   "holds: back-dated")
    if after is not None and ts > after.ts:
        raise _Decided("incident", f"record {seq} is dated {m.get('ts')}, after record {after.seq} the hub "
                                   "holds: back-dated")
    if full and body.get("kind") == "key" and body.get("replaces") is not None:
        _rotate(batch, sender, seq, body, fp)
    out: Outcome = outcome("accepted", None)
    new_records.append((sender, workshop, seq, rhash, str(m.get("prev")), ts, fp, str(m.get("sig")),
                        body.get("kind") if full else m.get("body_kind"), Jsonb(body) if full else None,
                        _label(body), now, Jsonb(out.receipt)))
    batch.added.setdefault((sender, workshop), {})[seq] = _Held(seq, rhash, str(m.get("prev")), ts, not full,
                                                                out.receipt, now)
    return out


def _check_sender(batch: _Batch, m: dict[str, Any], sender: str, what: str) -> None:
    """The sender is enrolled, and the message names its collector id (the broker authenticated the sender)."""
    collector_id = batch.ents.get(sender)
    if collector_id is None:
        raise _Decided("refused", f"{sender} is not enrolled at this hub (`collector hub enroll`)")
    if not m:
        raise _Decided("refused", "not a JSON object")
    if m.get("enterprise") != collector_id:
        raise _Decided("refused", f"the {what} names enterprise {m.get('enterprise')!r}, but it came from "
                                  f"{sender} (enrolled collector id {collector_id!r})")


def _sender_key(batch: _Batch, m: dict[str, Any], sender: str) -> tuple[str, _Key]:
    """The message's key (a fingerprint), enrolled for the sender."""
    fp = str(m.get("key"))
    key = batch.keys.get(fp)
    if key is None or key.enterprise != sender:
        raise _Decided("refused", f"signed by key {show_fingerprint(fp)}, which is not enrolled for {sender}")
    return fp, key


def _parsed_key(b64: str) -> tuple[Ed25519PublicKey, str]:
    try:
        return _public(b64)
    except KeyFileError as exc:
        raise _Decided("refused", f"the enrolled key is unusable ({exc})") from None


def _live(batch: _Batch, m: dict[str, Any], sender: str, now: str, new_live: list[tuple[Any, ...]]) -> Outcome:
    """A live snapshot: kept when its sender, enterprise, key and signature hold; never a receipt."""
    try:
        _check_sender(batch, m, sender, "snapshot")
        workshop = m.get("workshop")
        if not isinstance(workshop, str) or not workshop:
            raise _Decided("refused", "no workshop")
        fp, key = _sender_key(batch, m, sender)
        if key.public_key is None:
            raise _Decided("refused", f"key {show_fingerprint(fp)} is enrolled by fingerprint only: its chain's "
                                      "key record brings the public key")
        if key.retired_after is not None:
            raise _Decided("refused", f"signed by key {show_fingerprint(fp)}, which was rotated away")
        pub, pub_fp = _parsed_key(key.public_key)
        bad = verify_live(m, pub, pub_fp)
        if bad is not None:
            raise _Decided("refused", bad)
        ts = _ts(m.get("ts"))
        if ts is None or not isinstance(m.get("figures"), dict):
            raise _Decided("refused", f"ts {m.get('ts')!r} is not a time with a zone, or no figures")
    except _Decided as d:
        return Outcome("live_refused", d.reason, {})
    month = m.get("month") if isinstance(m.get("month"), dict) else None
    new_live.append((sender, workshop, ts, Jsonb(m["figures"]), Jsonb(month) if month is not None else None,
                     m.get("banner") if isinstance(m.get("banner"), str) else None, now))
    return Outcome("live", None, {})


def _rotate(batch: _Batch, sender: str, seq: int, body: dict[str, Any], old: str) -> None:
    """A key record signed by the old key introduces the new one: enrol it, and retire the old one after it."""
    conn = batch.conn
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
    batch.keys[nfp] = _Key(sender, str(body.get("public_key")), None)
    batch.keys[old].retired_after = seq
