"""Per-device state machine and the evidence the indicators are computed from, persisted in SQLite.

States: `never_seen` → `online` (a poll with good data) ⇄ `degraded` (some tags bad, or the device is
skipped) ⇄ `offline` (no session: connection refused, timeout, session lost). Each change has a reason.

Evidence (INDICATORS.md): a device's time bucket is *good* when a good sample of it was **delivered** (the
sink acknowledged it); the collector's own running buckets are recorded too, so its downtime does not count
against devices. Both survive restarts, so a month's figures do.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from collector.model import DeviceState

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS device_status (
    device TEXT PRIMARY KEY, state TEXT NOT NULL, since REAL NOT NULL, reason TEXT,
    last_good REAL, last_delivered REAL, first_delivered REAL);
CREATE TABLE IF NOT EXISTS good_buckets (device TEXT NOT NULL, bucket INTEGER NOT NULL,
    PRIMARY KEY (device, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uptime_buckets (bucket INTEGER PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_log (device TEXT NOT NULL, ts REAL NOT NULL, state TEXT NOT NULL, reason TEXT);
CREATE TABLE IF NOT EXISTS seq (device TEXT PRIMARY KEY, last INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
"""


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
    """SQLite (WAL) file under the state directory holding states, buckets, sequence numbers."""

    def __init__(self, path: Path, bucket_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.bucket_s = bucket_s
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def bucket_of(self, ts: float) -> int:
        """Bucket start (POSIX seconds) of a time; buckets are aligned to the epoch."""
        return int(ts // self.bucket_s * self.bucket_s)

    def load_statuses(self) -> dict[str, DeviceStatus]:
        rows = self.db.execute("SELECT device, state, since, reason, last_good, last_delivered, first_delivered "
                               "FROM device_status").fetchall()
        return {r[0]: DeviceStatus(r[0], DeviceState(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in rows}

    def load_seqs(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT device, last FROM seq").fetchall())

    def write(self, statuses: list[DeviceStatus], log_rows: list[tuple[str, float, str, str | None]],
              good: set[tuple[str, int]], uptime: set[int], seqs: dict[str, int]) -> None:
        """One transaction for everything gathered since the last flush."""
        cur = self.db.cursor()
        cur.execute("BEGIN")
        try:
            cur.executemany(
                "INSERT OR REPLACE INTO device_status VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(s.device, str(s.state), s.since, s.reason, s.last_good, s.last_delivered, s.first_delivered)
                 for s in statuses])
            cur.executemany("INSERT INTO state_log VALUES (?, ?, ?, ?)", log_rows)
            cur.executemany("INSERT OR IGNORE INTO good_buckets VALUES (?, ?)", sorted(good))
            cur.executemany("INSERT OR IGNORE INTO uptime_buckets VALUES (?)", [(b,) for b in sorted(uptime)])
            cur.executemany("INSERT OR REPLACE INTO seq VALUES (?, ?)", list(seqs.items()))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def good_buckets(self, device: str, start: float, end: float) -> list[int]:
        rows = self.db.execute("SELECT bucket FROM good_buckets WHERE device = ? AND bucket >= ? AND bucket < ? "
                               "ORDER BY bucket", (device, int(start), int(end))).fetchall()
        return [r[0] for r in rows]

    def uptime_buckets(self, start: float, end: float) -> list[int]:
        rows = self.db.execute("SELECT bucket FROM uptime_buckets WHERE bucket >= ? AND bucket < ? ORDER BY bucket",
                               (int(start), int(end))).fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        self.db.close()


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
        for dev in devices:
            st = saved.get(dev, DeviceStatus(dev, since=now))
            # After a restart nothing is known about the session: keep evidence, restart the state machine.
            if st.state != DeviceState.NEVER_SEEN:
                st.state, st.since, st.reason = DeviceState.OFFLINE, now, "collector restarted"
            self.devices[dev] = st
        self.seqs: dict[str, int] = store.load_seqs()
        self.listeners: list[StatusListener] = []
        self._dirty: set[str] = set(devices)
        self._log: list[tuple[str, float, str, str | None]] = []
        self._good: set[tuple[str, int]] = set()
        self._good_done: set[tuple[str, int]] = set()
        self._uptime: set[int] = set()

    # -- fed by the engine

    def set_state(self, device: str, state: DeviceState, reason: str | None = None) -> None:
        st = self.devices[device]
        if st.state == state and st.reason == reason:
            return
        now = self.clock()
        if st.state != state:
            st.since = now
            self._log.append((device, now, str(state), reason))
        st.state, st.reason = state, reason
        self._dirty.add(device)
        for listener in self.listeners:
            listener(st)

    def polled(self, device: str, good: int, total: int, ts: float) -> None:
        """A poll answered: `good` of `total` tags came back good."""
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

    def next_seq(self, device: str) -> int:
        seq = self.seqs.get(device, 0) + 1
        self.seqs[device] = seq
        return seq

    # -- fed by the sinks

    def delivered(self, device: str, good_ts: float) -> None:
        """A batch holding a good sample taken at `good_ts` was acknowledged by the sink."""
        st = self.devices.get(device)
        if st is None:
            return
        if st.last_delivered is None or good_ts > st.last_delivered:
            st.last_delivered = good_ts
        if st.first_delivered is None or good_ts < st.first_delivered:
            st.first_delivered = good_ts
        key = (device, self.store.bucket_of(good_ts))
        if key not in self._good_done:
            self._good.add(key)
            self._good_done.add(key)
        self._dirty.add(device)

    # -- persistence

    def flush(self) -> None:
        """Write what changed since the last flush, and mark the collector up in the current bucket."""
        self._uptime.add(self.store.bucket_of(self.clock()))
        statuses = [self.devices[d] for d in self._dirty if d in self.devices]
        self.store.write(statuses, self._log, self._good, self._uptime, self.seqs)
        self._dirty.clear()
        self._log = []
        self._good = set()
        self._uptime = set()
        if len(self._good_done) > 100_000:  # bound memory; a re-insert is ignored by the primary key
            self._good_done.clear()
