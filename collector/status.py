"""Per-device state machine and the evidence the indicators are computed from, persisted in SQLite.

States: `never_seen` → `online` (a poll with good data) ⇄ `degraded` (some tags bad, or the device is
skipped) ⇄ `offline` (no session: connection refused, timeout, session lost). Each change has a reason.

Evidence (INDICATORS.md): a device's time bucket is *good* when a good sample of it was **delivered** (the
sink acknowledged it); the collector's own running buckets are recorded too, so its downtime does not count
against devices. Both survive restarts, so a month's figures do.

Identity (INDICATORS.md, "Evidence that proves"): what identifies the device behind each endpoint, one row per
distinct identity with its first and last sighting (`identities`); a row that follows another of the same
device is a change of identity. Identities are observed rarely (each connect, once a day), so they are
written at once rather than with the next flush.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from collector.failures import RepeatedFailure
from collector.model import DeviceState

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS device_status (
    device TEXT PRIMARY KEY, state TEXT NOT NULL, since REAL NOT NULL, reason TEXT,
    last_good REAL, last_delivered REAL, first_delivered REAL);
CREATE TABLE IF NOT EXISTS good_buckets (device TEXT NOT NULL, bucket INTEGER NOT NULL, acked_at REAL,
    PRIMARY KEY (device, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uptime_buckets (bucket INTEGER PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_log (device TEXT NOT NULL, ts REAL NOT NULL, state TEXT NOT NULL, reason TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS identities (device TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    identity TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS identities_by_device ON identities (device, first_seen);
"""


@dataclass
class IdentityRecord:
    """One identity of a device and when it was seen first and last (POSIX seconds)."""

    device: str
    first_seen: float
    last_seen: float
    values: dict[str, Any]


def changed_keys(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Keys both identities carry with different values. A key only one of them has is no change: a part
    that did not answer this time (a timeout) is left out of an observation, never set to None."""
    return sorted(k for k in before.keys() & after.keys() if before[k] != after[k])


@dataclass
class DeviceStatus:
    """What the collector knows of one device right now (published retained on its status topic)."""

    device: str
    state: DeviceState = DeviceState.NEVER_SEEN
    since: float = 0.0
    reason: str | None = None
    last_good: float | None = None
    last_delivered: float | None = None
    first_delivered: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = str(self.state)
        return d


StatusListener = Callable[[DeviceStatus], None]


class StatusStore:
    """SQLite (WAL) file under the state directory holding states and evidence buckets (the outbox keeps the
    sequence numbers, with the data they number)."""

    def __init__(self, path: Path, bucket_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.bucket_s = bucket_s
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring an older file up to date. `acked_at` (when the sink acknowledged the bucket's first good
        sample) came later: rows written before it stay NULL and count as acknowledged in their own bucket."""
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(good_buckets)").fetchall()}
        if "acked_at" not in cols:
            self.db.execute("ALTER TABLE good_buckets ADD COLUMN acked_at REAL")

    def bucket_of(self, ts: float) -> int:
        """Bucket start (POSIX seconds) of a time; buckets are aligned to the epoch."""
        return int(ts // self.bucket_s * self.bucket_s)

    def load_statuses(self) -> dict[str, DeviceStatus]:
        rows = self.db.execute("SELECT device, state, since, reason, last_good, last_delivered, first_delivered "
                               "FROM device_status").fetchall()
        return {r[0]: DeviceStatus(r[0], DeviceState(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in rows}

    def write(self, statuses: list[DeviceStatus], log_rows: list[tuple[str, float, str, str | None]],
              good: Mapping[tuple[str, int], float] | Iterable[tuple[str, int]], uptime: set[int]) -> None:
        """One transaction for everything gathered since the last flush.

        `good` maps (device, bucket) to the time the sink acknowledged it (a plain set means "now"); the first
        acknowledgement of a bucket is kept, so data delivered late never moves a bucket earlier.
        """
        acked = good if isinstance(good, Mapping) else dict.fromkeys(good, time.time())
        cur = self.db.cursor()
        cur.execute("BEGIN")
        try:
            cur.executemany(
                "INSERT OR REPLACE INTO device_status VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(s.device, str(s.state), s.since, s.reason, s.last_good, s.last_delivered, s.first_delivered)
                 for s in statuses])
            cur.executemany("INSERT INTO state_log VALUES (?, ?, ?, ?)", log_rows)
            cur.executemany("INSERT OR IGNORE INTO good_buckets (device, bucket, acked_at) VALUES (?, ?, ?)",
                            sorted((d, b, t) for (d, b), t in acked.items()))
            cur.executemany("INSERT OR IGNORE INTO uptime_buckets VALUES (?)", [(b,) for b in sorted(uptime)])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def good_buckets(self, device: str, start: float, end: float, acked_by: float | None = None) -> list[int]:
        """Good buckets of a device starting in [start, end); with `acked_by`, only those acknowledged by then
        (a closed month ignores data delivered after its close; rows without an ack time count)."""
        sql = "SELECT bucket FROM good_buckets WHERE device = ? AND bucket >= ? AND bucket < ?"
        args: tuple[Any, ...] = (device, int(start), int(end))
        if acked_by is not None:
            sql += " AND (acked_at IS NULL OR acked_at <= ?)"
            args += (acked_by,)
        return [r[0] for r in self.db.execute(sql + " ORDER BY bucket", args).fetchall()]

    def good_bucket_rows(self, start: float, end: float) -> list[tuple[str, int, float | None]]:
        """Every (device, bucket, acked_at) with the bucket starting in [start, end): one query for a report."""
        return self.db.execute("SELECT device, bucket, acked_at FROM good_buckets WHERE bucket >= ? AND bucket < ?",
                               (int(start), int(end))).fetchall()

    def first_uptime(self) -> int | None:
        """The first bucket the collector ever ran in (months before it are never summarised)."""
        row = self.db.execute("SELECT MIN(bucket) FROM uptime_buckets").fetchone()
        return None if row is None else row[0]

    def first_run(self) -> float | None:
        """When the collector first started on this store (its first uptime bucket may begin earlier)."""
        v = self.meta_get("first_run")
        return None if v is None else float(v)

    def meta_get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def record_identity(self, device: str, values: Mapping[str, Any], ts: float) -> IdentityRecord | None:
        """One observation: extends the device's latest identity (adding keys it lacked) when nothing it holds
        differs, else starts a new one. Returns the previous identity when this is a change."""
        row = self.db.execute("SELECT rowid, first_seen, last_seen, identity FROM identities WHERE device = ? "
                              "ORDER BY first_seen DESC, rowid DESC LIMIT 1", (device,)).fetchone()
        if row is not None:
            before = IdentityRecord(device, row[1], row[2], json.loads(row[3]))
            if not changed_keys(before.values, values):
                merged = {**before.values, **values}
                self.db.execute("UPDATE identities SET last_seen = ?, identity = ? WHERE rowid = ?",
                                (max(ts, before.last_seen), json.dumps(merged, sort_keys=True, ensure_ascii=False),
                                 row[0]))
                return None
        self.db.execute("INSERT INTO identities VALUES (?, ?, ?, ?)",
                        (device, ts, ts, json.dumps(dict(values), sort_keys=True, ensure_ascii=False)))
        return None if row is None else before

    def identities(self, before: float | None = None) -> list[IdentityRecord]:
        """Every identity row (first seen before `before`, if given), by device and time: a row that follows
        another of its device is a change of identity at its `first_seen`."""
        sql = "SELECT device, first_seen, last_seen, identity FROM identities"
        args: tuple[Any, ...] = ()
        if before is not None:
            sql += " WHERE first_seen < ?"
            args = (before,)
        rows = self.db.execute(sql + " ORDER BY device, first_seen, rowid", args).fetchall()
        return [IdentityRecord(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    def uptime_buckets(self, start: float, end: float) -> list[int]:
        rows = self.db.execute("SELECT bucket FROM uptime_buckets WHERE bucket >= ? AND bucket < ? ORDER BY bucket",
                               (int(start), int(end))).fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        self.db.close()


_RESTARTED = "collector restarted"
_ADDED = "added by reload"
_NO_NEWS = (_RESTARTED, _ADDED)  # reasons the tracker gives itself: the next answer after them is no news


class StatusTracker:
    """The state machine of every device, fed by the engine (polls) and the sinks (deliveries).

    Changes are told to listeners at once (the MQTT sink publishes them retained); the store is written in
    batches by `flush()`, which the collector calls every second and at shutdown.
    """

    def __init__(self, store: StatusStore, devices: list[str], clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        saved = store.load_statuses()
        self.devices: dict[str, DeviceStatus] = {}
        now = clock()
        if store.first_run() is None:  # evidence never shows good data from before the collector first ran
            earlier = store.first_uptime()  # a store from before first_run was kept: its first bucket, not now
            store.meta_set("first_run", repr(now if earlier is None else float(earlier)))
        for dev in devices:
            st = saved.get(dev, DeviceStatus(dev, since=now))
            # After a restart nothing is known about the session: keep evidence, restart the state machine.
            if st.state != DeviceState.NEVER_SEEN:
                st.state, st.since, st.reason = DeviceState.OFFLINE, now, _RESTARTED
            self.devices[dev] = st
        self.listeners: list[StatusListener] = []
        # Told (device, good_ts) on every acknowledged good batch: /metrics measures the sink latency from it.
        self.delivery_listeners: list[Callable[[str, float], None]] = []
        self._dirty: set[str] = set(devices)
        self._log: list[tuple[str, float, str, str | None]] = []
        self._good: dict[tuple[str, int], float] = {}
        self._good_done: set[tuple[str, int]] = set()
        self._uptime: set[int] = set()
        self._last_flush: float | None = None
        # the latest identity of each device (values), for the live figures and the status
        self.identities: dict[str, dict[str, Any]] = {}
        for rec in store.identities():
            if rec.device in self.devices:
                self.identities[rec.device] = rec.values
        self._listener_failures: dict[str, RepeatedFailure] = {}

    def _tell(self, listener: Callable[..., None], *args: Any) -> None:
        """Call one listener. Its failure is logged once (then once a minute, collector/failures.py) and never
        reaches the caller: a listener that raises (a publish the broker client refuses, a bug) must not end a
        device task, nor the handling of the sink's acknowledgements."""
        try:
            listener(*args)
        except Exception:
            name = getattr(listener, "__qualname__", None) or repr(listener)
            failure = self._listener_failures.get(name)
            if failure is None:
                failure = self._listener_failures[name] = RepeatedFailure(name, "listener", log, "listener")
            failure.failed()

    # -- fed by the engine

    def set_state(self, device: str, state: DeviceState, reason: str | None = None) -> None:
        """Change a device's state or reason; a change of state is one WARNING line with its reason (what
        `journalctl -p warning` shows), a new reason in the same state and a first contact are INFO."""
        st = self.devices[device]
        if st.state == state and st.reason == reason:
            return
        now = self.clock()
        before = st.state
        first_contact = state == DeviceState.ONLINE and (before == DeviceState.NEVER_SEEN or st.reason in _NO_NEWS)
        if before != state:
            st.since = now
            self._log.append((device, now, str(state), reason))
        st.state, st.reason = state, reason
        log.log(logging.WARNING if before != state and not first_contact else logging.INFO,
                "device=%s event=state state=%s from=%s reason=%s", device, state, before,
                (reason or "").replace(" ", "_") or "-")
        self._dirty.add(device)
        for listener in self.listeners:
            self._tell(listener, st)

    def polled(self, device: str, good: int, total: int, ts: float) -> None:
        """A poll or publish answered: `good` of the device's `total` tags are good, counted over the latest
        reading of every tag (a publish carries only what changed)."""
        st = self.devices[device]
        if good:
            st.last_good = ts
            self._dirty.add(device)
        if total and good == total:
            self.set_state(device, DeviceState.ONLINE, None)
        elif good:
            self.set_state(device, DeviceState.DEGRADED, f"{total - good} of {total} tags bad")
        else:
            self.set_state(device, DeviceState.DEGRADED, f"all {total} tags bad")


    def identified(self, device: str, values: Mapping[str, Any]) -> IdentityRecord | None:
        """The adapter told what identifies the device (after a connect, or the daily check); returns the
        previous identity when it changed."""
        before = self.store.record_identity(device, values, self.clock())
        self.identities[device] = {**({} if before is not None else self.identities.get(device, {})), **values}
        return before

    # -- fed by a config reload (Collector.reload)

    def add_device(self, device: str) -> None:
        """A device added by a reload: its saved evidence, if it was configured before."""
        if device in self.devices:
            return
        now = self.clock()
        st = self.store.load_statuses().get(device, DeviceStatus(device, since=now))
        if st.state != DeviceState.NEVER_SEEN:
            st.state, st.since, st.reason = DeviceState.OFFLINE, now, _ADDED
        self.devices[device] = st
        self._dirty.add(device)

    def remove_device(self, device: str) -> None:
        """A device removed by a reload; its rows stay in the store (evidence, if it comes back)."""
        self.devices.pop(device, None)
        self._dirty.discard(device)

    # -- fed by the sinks

    def delivered(self, device: str, good_ts: float) -> None:
        """A batch holding a good sample taken at `good_ts` was acknowledged by the sink."""
        for hook in self.delivery_listeners:
            self._tell(hook, device, good_ts)
        st = self.devices.get(device)
        if st is None:
            return
        if st.last_delivered is None or good_ts > st.last_delivered:
            st.last_delivered = good_ts
        if st.first_delivered is None or good_ts < st.first_delivered:
            st.first_delivered = good_ts
        key = (device, self.store.bucket_of(good_ts))
        if key not in self._good_done:
            self._good[key] = self.clock()  # the ack time: a closed month counts only buckets acked by its close
            self._good_done.add(key)
        self._dirty.add(device)

    # -- persistence

    def flush(self) -> None:
        """Write what changed since the last flush, and mark the collector up in the current bucket.

        Buckets between two flushes of this process a few seconds apart are marked too (with a bucket as short
        as the flush period a late timer must not punch a hole); a longer gap (suspended host) is not filled.
        """
        now = self.clock()
        bucket = self.store.bucket_of(now)
        if self._last_flush is not None and 0 <= now - self._last_flush <= 10.0:
            b = self.store.bucket_of(self._last_flush)
            while b < bucket:
                self._uptime.add(b)
                nxt = self.store.bucket_of(b + self.store.bucket_s)
                b = nxt if nxt > b else bucket
        self._uptime.add(bucket)
        self._last_flush = now
        statuses = [self.devices[d] for d in self._dirty if d in self.devices]
        self.store.write(statuses, self._log, self._good, self._uptime)
        self._dirty.clear()
        self._log = []
        self._good = {}
        self._uptime = set()
        if len(self._good_done) > 100_000:  # bound memory; a re-insert is ignored by the primary key
            self._good_done.clear()
