"""Durable store-and-forward between the pipeline and the sinks.

One SQLite file (WAL) under the state directory, one table per sink, with ids that only rise (AUTOINCREMENT:
senders keep cursors by id, and a plain rowid would be reused once a table drains). Each batch is encoded once
per sink at append time and stored with its device, sequence number and creation time. A sink's sender reads committed rows
in order and deletes a row only when the sink acknowledged it (MQTT PUBACK, HTTP 2xx), so a crash, a dead broker
or a dead database loses nothing that was committed.

Appends are grouped: `flush()` (every `commit_interval`, default 50 ms) writes every pending batch in one
transaction, together with the per-device sequence high-water marks. On a working disk senders only see
committed rows, so a sequence number that was published has always been persisted first: after a crash the
next number continues from the highest committed one, never reusing a published number and never leaving a gap.

Bounds: `max_bytes` (payload bytes per sink) and `max_age` (seconds). When one is exceeded, the oldest batches
are deleted and counted exactly (batches and readings, per sink, persisted), and the count is logged once per
minute, not per batch.

While commits fail (disk full, read-only storage) the batches wait in memory and the senders deliver them from
there, so a broken disk stops nothing; ids are handed out at append time, so a row keeps its id from memory to
the table. There they are held as encoded bytes (collector/outbox_memory.py), so the cap bounds what is really
held, and the heap is trimmed when they leave; the sequence high-water marks go to a side file meanwhile, so
that a number delivered from memory is not handed out again after a crash (docs/outbox.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.model import Row
from collector.outbox_memory import MemoryRows, Pending, SeqMarks

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS seq_hw (device TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (sink TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (sink, name)) WITHOUT ROWID;
"""
QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS "q_{sink}" (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, seq INTEGER NOT NULL,
    created REAL NOT NULL, good_ts REAL, n INTEGER NOT NULL, payload BLOB NOT NULL);
"""


@dataclass
class QueueState:
    """In-memory view of one sink's table and its counters (the table is the truth; this saves queries)."""

    sink: str
    batches: int = 0
    readings: int = 0
    size: int = 0
    max_id: int = 0
    dropped_batches: int = 0
    dropped_readings: int = 0
    delivered_batches: int = 0
    delivered_readings: int = 0
    last_id: int = 0  # the last id handed out (pending rows carry theirs from memory to the table)
    pending: list[Pending] = field(default_factory=list)  # appended since the last flush
    memory: MemoryRows = field(default_factory=MemoryRows)  # while writes fail: the rows waiting in memory
    acked: list[int] = field(default_factory=list)
    new_rows: asyncio.Event = field(default_factory=asyncio.Event)
    rate_window: deque[tuple[float, int]] = field(default_factory=deque)
    drops_since_log: int = 0


@dataclass(frozen=True, slots=True)
class OutboxHealth:
    """Whether the outbox can write its database, for /healthz and the status (`Outbox.health()`)."""

    write_error: str | None  # why the last commit failed; None while commits work
    failing_for: float  # seconds since commits began to fail (0.0 while they work)
    path: Path
    memory_cap: int  # bytes per sink kept in memory while commits fail

RETRY_INTERVAL = 1.0
"""Seconds between commit attempts while writes fail: a retry rebuilds the whole pending transaction."""

# QueueState fields that a commit changes together with the table: restored when the commit fails
_MIRRORED = ("batches", "readings", "size", "max_id", "dropped_batches", "dropped_readings", "drops_since_log")


class Outbox:
    def __init__(self, path: Path, sinks: list[str], *, max_bytes: int = 512 * 1024 * 1024,
                 max_age: float = 7 * 86400, fsync: bool = False, clock: Callable[[], float] = time.time,
                 pending_max_bytes: int = 64 * 1024 * 1024) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.fsync = fsync
        self.clock = clock
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self.db.executescript(SCHEMA)
        self.queues: dict[str, QueueState] = {}
        for sink in sinks:
            if not sink.isidentifier():
                raise ValueError(f"sink name {sink!r} must be an identifier")
            self.db.executescript(QUEUE_SCHEMA.format(sink=sink))
            q = QueueState(sink, memory=MemoryRows(max(4096, min(256 * 1024, pending_max_bytes // 16))))
            q.batches, q.readings, q.size, q.max_id = self.db.execute(
                f'SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(SUM(LENGTH(payload)), 0), COALESCE(MAX(id), 0) '
                f'FROM "q_{sink}"').fetchone()
            for name, value in self.db.execute("SELECT name, value FROM counters WHERE sink = ?", (sink,)):
                setattr(q, name, value)
            used = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (f"q_{sink}",)).fetchone()
            q.last_id = max(q.max_id, used[0] if used else 0)  # AUTOINCREMENT's rule: never reuse an id
            self.queues[sink] = q
        self._log_other_queues(sinks)
        self.seqs: dict[str, int] = dict(self.db.execute("SELECT device, seq FROM seq_hw").fetchall())
        self.held: dict[str, Callable[[], set[int]]] = {}  # sink -> ids its transport holds (never dropped)
        self._seq_dirty: dict[str, int] = {}
        # numbers delivered from memory while the database could not be written, before a crash: never reused
        self.marks = SeqMarks(path.with_name(path.name + ".seq"), len(self.seqs))
        raised = {d: s for d, s in self.marks.read().items() if s > self.seqs.get(d, 0)}
        if raised:
            log.warning("outbox event=seq_marks_raised devices=%d (numbers delivered from memory before a crash "
                        "are not handed out again; what waited in memory then is lost, a gap)", len(raised))
            self.seqs.update(raised)
            self._seq_dirty.update(raised)
        self._last_drop_log = 0.0
        # failing writes (disk full, read-only storage): see flush()
        self.pending_max_bytes = pending_max_bytes
        self.write_error: str | None = None
        self.write_error_since: float | None = None
        self.write_failures = 0
        self._counters_dirty = False
        self._last_write_error_log = -1e18
        self._last_attempt = -1e18
        self._trim_after_recovery = False

    def _log_other_queues(self, sinks: list[str]) -> None:
        """A queue of a sink this config does not have (the other `mqtt.format`, a removed `influx:`) is kept
        as it is, for when the config has that sink again: say so when it holds rows, so none look lost."""
        tables = [t for (t,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name "
                                                "LIKE 'q\\_%' ESCAPE '\\'")]
        for table in tables:
            if table[2:] not in sinks:
                (n,) = self.db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()
                if n:
                    log.warning("outbox event=queue_kept sink=%s batches=%d (no such sink in this config: kept "
                                "until it has it again)", table[2:], n)

    # ----------------------------------------------------------------------------------------- appending

    def next_seq(self, device: str) -> int:
        """The device's next sequence number; persisted with the batch that carries it."""
        seq = self.seqs.get(device, 0) + 1
        self.seqs[device] = seq
        self._seq_dirty[device] = seq
        return seq

    def append(self, device: str, seq: int, created: float, good_ts: float | None, n: int,
               payloads: dict[str, bytes]) -> None:
        """Queue one batch for each sink (written at the next `flush()`)."""
        for sink, payload in payloads.items():
            q = self.queues[sink]
            q.last_id += 1
            q.pending.append((q.last_id, device, seq, created, good_ts, n, payload))

    def flush(self) -> None:
        """Commit pending batches and acks, enforce the bounds; wake the senders.

        A write that fails (disk full, read-only or failing storage) is not an exception for the caller: the
        batches stay in memory, the senders deliver them from there (`fetch`), and a commit is tried again
        every `RETRY_INTERVAL`; `write_error` says why, for /healthz, and the log says it once a minute. While
        it lasts, at most `pending_max_bytes` per sink are kept in memory (encoded: `MemoryRows.size`): the
        oldest beyond that, if the sink cannot take them, are dropped and counted like the bounds' drops."""
        queues = list(self.queues.values())
        if self.write_error is not None and self.clock() - self._last_attempt < RETRY_INTERVAL:
            self._hold()
            return
        busy = (any(q.pending or q.acked or q.memory for q in queues) or self._seq_dirty or self._counters_dirty
                or self.write_error is not None)
        try:
            if not busy and not self._over_bounds():
                return
            self._last_attempt = self.clock()
            self._commit(queues)
        except sqlite3.Error as exc:
            self._write_failed(exc)
            return
        if self.write_error is not None:
            log.warning("outbox event=write_recovered after_failures=%d error_was=%s", self.write_failures,
                        self.write_error.replace(" ", "_"))
            self.write_error = None
            self.write_error_since = None
        self._seq_dirty = {}
        self._counters_dirty = False
        for q in queues:
            if q.pending or q.memory:
                q.pending = []
                q.memory.clear()
                q.new_rows.set()
            q.acked = []
        if self._trim_after_recovery:
            self._trim_after_recovery = False
            release_free_memory()
        self._log_drops()

    def _write_failed(self, exc: sqlite3.Error) -> None:
        now = self.clock()
        self.write_failures += 1
        if self.write_error is None:
            self.write_error_since = now
        self.write_error = f"{type(exc).__name__}: {exc}"
        self._trim_after_recovery = True
        self._hold()
        if now - self._last_write_error_log >= 60:
            self._last_write_error_log = now
            log.error("outbox event=write_failed error=%s path=%s failures=%d pending_batches=%d (delivered from "
                      "memory, kept there up to %d bytes per sink while the sink cannot take them, and retried; "
                      "free the disk)%s", self.write_error.replace(" ", "_"), self.path, self.write_failures,
                      sum(q.memory.count for q in self.queues.values()), self.pending_max_bytes,
                      f"; seq_marks_failed={self.marks.error.replace(' ', '_')} (after a crash now, numbers "
                      f"delivered from memory could be handed out again)" if self.marks.error else "")

    def _hold(self) -> None:
        """While writes fail: move the new rows into memory (where the senders read them), forget the
        delivered ones, keep to the cap."""
        if any(q.pending for q in self.queues.values()):
            self.marks.write(self.seqs)  # first: once a sender sees a row, its number is never handed out again
        for q in self.queues.values():
            if q.pending:
                for p in q.pending:
                    q.memory.add(p)
                q.pending = []
                q.new_rows.set()
            q.memory.purge()
            if q.memory.size > self.pending_max_bytes:
                in_flight = self.held[q.sink]() if q.sink in self.held else set()
                batches, readings = q.memory.cap(self.pending_max_bytes, in_flight)
                q.dropped_batches += batches
                q.dropped_readings += readings
                q.drops_since_log += readings
                self._counters_dirty = True  # persisted by the first flush that works again

    def _commit(self, queues: list[QueueState]) -> None:
        """One transaction; the in-memory view of the tables (`_MIRRORED`) rolls back with it."""
        saved = [tuple(getattr(q, name) for name in _MIRRORED) for q in queues]
        cur = self.db.cursor()
        cur.execute("BEGIN")
        try:
            for q in queues:
                table = f'"q_{q.sink}"'
                for i in range(0, len(q.acked), 500):
                    chunk = q.acked[i:i + 500]
                    gone = cur.execute(f"DELETE FROM {table} WHERE id IN ({','.join('?' * len(chunk))}) "
                                       "RETURNING n, LENGTH(payload)", chunk).fetchall()
                    q.batches -= len(gone)
                    q.readings -= sum(g[0] for g in gone)
                    q.size -= sum(g[1] for g in gone)
                insert = f"INSERT INTO {table} (id, device, seq, created, good_ts, n, payload) VALUES (?, ?, ?, ?, ?, ?, ?)"
                if q.memory.count:  # decoded one by one, not all at once
                    cur.executemany(insert, q.memory.waiting())
                    q.batches += q.memory.count
                    q.readings += q.memory.readings
                    q.size += q.memory.payload_bytes
                    q.max_id = max(q.max_id, q.memory.last_id())
                if q.pending:
                    cur.executemany(insert, q.pending)
                    q.batches += len(q.pending)
                    q.readings += sum(p[5] for p in q.pending)
                    q.size += sum(len(p[6]) for p in q.pending)
                    q.max_id = q.pending[-1][0]
            if self._seq_dirty:
                cur.executemany("INSERT OR REPLACE INTO seq_hw VALUES (?, ?)", list(self._seq_dirty.items()))
            if self._counters_dirty:
                cur.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?, ?)",
                                [(q.sink, name, getattr(q, name)) for q in queues
                                 for name in ("dropped_batches", "dropped_readings")])
            self._enforce_bounds(cur)
            cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # a failed write may have ended the transaction already
                cur.execute("ROLLBACK")
            for q, values in zip(queues, saved, strict=True):
                for name, value in zip(_MIRRORED, values, strict=True):
                    setattr(q, name, value)
            raise

    def _over_bounds(self) -> bool:
        if any(q.size > self.max_bytes for q in self.queues.values()):
            return True
        cutoff = self.clock() - self.max_age
        for q in self.queues.values():
            row = self.db.execute(f'SELECT created FROM "q_{q.sink}" ORDER BY id LIMIT 1').fetchone()
            if row is not None and row[0] < cutoff:
                return True
        return False

    def _enforce_bounds(self, cur: sqlite3.Cursor) -> None:
        """Drop the oldest batches of each sink while over max_bytes or older than max_age; count them.

        Rows a transport holds in flight are skipped: they will be delivered, so counting them as dropped would
        be a lie (MQTT: at most twice the in-flight window)."""
        cutoff = self.clock() - self.max_age
        for q in self.queues.values():
            table = f'"q_{q.sink}"'
            held = self.held[q.sink]() if q.sink in self.held else set()
            after = 0
            while True:
                rows = cur.execute(f"SELECT id, n, LENGTH(payload), created FROM {table} WHERE id > ? ORDER BY id "
                                   "LIMIT 256", (after,)).fetchall()
                drop: list[tuple[int, int, int]] = []
                excess = q.size - self.max_bytes
                done = False
                for rid, n, size, created in rows:
                    after = rid
                    if rid in held:  # in a transport's hands: it will be delivered, so it is not dropped
                        continue
                    if created < cutoff or excess > 0:
                        drop.append((rid, n, size))
                        excess -= size
                    else:
                        done = True
                        break
                if drop:
                    cur.executemany(f"DELETE FROM {table} WHERE id = ?", [(d[0],) for d in drop])
                    dropped_n = sum(d[1] for d in drop)
                    q.batches -= len(drop)
                    q.readings -= dropped_n
                    q.size -= sum(d[2] for d in drop)
                    q.dropped_batches += len(drop)
                    q.dropped_readings += dropped_n
                    q.drops_since_log += dropped_n
                    cur.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?, ?)",
                                    [(q.sink, "dropped_batches", q.dropped_batches),
                                     (q.sink, "dropped_readings", q.dropped_readings)])
                if done or len(rows) < 256:
                    break

    def _log_drops(self) -> None:
        now = self.clock()
        if now - self._last_drop_log < 60:
            return
        for q in self.queues.values():
            if q.drops_since_log:
                log.warning("outbox=%s event=dropped readings=%d total_dropped_readings=%d bound_bytes=%d "
                            "bound_age_s=%g", q.sink, q.drops_since_log, q.dropped_readings, self.max_bytes,
                            self.max_age)
                q.drops_since_log = 0
                self._last_drop_log = now

    # ----------------------------------------------------------------------------------------- reading

    def fetch(self, sink: str, after: int, limit: int, upto: int | None = None) -> list[Row]:
        """Rows of a sink with id > after (and ≤ upto), oldest first: the committed ones, and while writes fail
        the pending ones in memory too (their ids are all higher)."""
        table = f'"q_{sink}"'
        if upto is None:
            rows = self.db.execute(f"SELECT id, device, seq, created, good_ts, n, payload FROM {table} "
                                   "WHERE id > ? ORDER BY id LIMIT ?", (after, limit)).fetchall()
        else:
            rows = self.db.execute(f"SELECT id, device, seq, created, good_ts, n, payload FROM {table} "
                                   "WHERE id > ? AND id <= ? ORDER BY id LIMIT ?", (after, upto, limit)).fetchall()
        out = [Row(*r) for r in rows]
        q = self.queues[sink]
        if self.write_error is not None and q.memory and len(out) < limit:
            out += q.memory.rows(after, upto, limit - len(out))
        return out

    def last_id(self, sink: str) -> int:
        """The highest id `fetch` can return now (a sender's backlog boundary at a (re)connection)."""
        q = self.queues[sink]
        return q.memory.last_id() if self.write_error is not None and q.memory else q.max_id

    def first_id(self, sink: str) -> int:
        row = self.db.execute(f'SELECT MIN(id) FROM "q_{sink}"').fetchone()
        if row[0] is not None:
            return int(row[0])
        q = self.queues[sink]
        return q.memory.first_id() if self.write_error is not None and q.memory else q.max_id + 1

    def ack(self, sink: str, row: Row) -> None:
        """The sink acknowledged a row: delete it at the next flush, count the delivery."""
        q = self.queues[sink]
        if q.memory and row.id >= q.memory.first_id():  # delivered from memory: it need never be written
            q.memory.ack(row)
        else:
            q.acked.append(row.id)
        q.delivered_batches += 1
        q.delivered_readings += row.n
        now = self.clock()
        q.rate_window.append((now, row.n))
        while q.rate_window and q.rate_window[0][0] < now - 10:
            q.rate_window.popleft()

    def mark_seen(self, sink: str) -> None:
        """Call before fetching: a later commit then wakes `wait_new`."""
        self.queues[sink].new_rows.clear()

    async def wait_new(self, sink: str, timeout: float) -> None:
        q = self.queues[sink]
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it can drop a cancellation (collector/tasks.py)
                await q.new_rows.wait()
        except TimeoutError:
            pass

    # ----------------------------------------------------------------------------------------- seeing

    def health(self) -> OutboxHealth:
        since = self.write_error_since
        return OutboxHealth(self.write_error, 0.0 if since is None else self.clock() - since, self.path,
                            self.pending_max_bytes)

    def last_seq(self, device: str) -> int:
        """The last sequence number given to a device (0 before its first batch)."""
        return self.seqs.get(device, 0)

    def all_stats(self) -> dict[str, dict[str, Any]]:
        """`stats` of every sink's queue, by sink name."""
        return {sink: self.stats(sink) for sink in self.queues}

    def stats(self, sink: str) -> dict[str, Any]:
        """Depth counts the rows waiting in memory too while writes fail (`memory_batches` of them)."""
        q = self.queues[sink]
        oldest = self.db.execute(f'SELECT MIN(created) FROM "q_{sink}"').fetchone()[0]
        now = self.clock()
        window = [n for t, n in q.rate_window if t >= now - 10]
        mem = q.memory
        if oldest is None and mem:
            oldest = mem.oldest_created()
        return {
            "depth_batches": q.batches + mem.count,
            "depth_readings": q.readings + mem.readings,
            "memory_batches": mem.count,
            "memory_bytes": mem.size,
            "bytes": q.size,
            "oldest_age_s": round(now - oldest, 3) if oldest is not None else 0.0,
            "dropped_batches": q.dropped_batches,
            "dropped_readings": q.dropped_readings,
            "delivered_readings": q.delivered_readings,
            "delivery_rate": round(sum(window) / 10.0, 1),
        }

    def close(self) -> None:
        self.flush()
        self.db.close()
        self.marks.close()


def release_free_memory() -> None:
    """Give freed heap back to the OS (glibc keeps it otherwise: RSS stayed ~500 MB after a disk-full spell)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: libc is among them
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return
    trim(0)
