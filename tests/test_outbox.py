"""The outbox on its own: order, acks, bounds with exact counts, crash safety, sequences, the sharing rule."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from collector.delivery import Sender, share
from collector.model import Row
from collector.outbox import Outbox
from collector.outbox_memory import HEADER, INDEX_COST


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def fill(ob: Outbox, device: str, count: int, size: int = 100, n: int = 5, clock: Clock | None = None) -> None:
    for _ in range(count):
        ob.append(device, ob.next_seq(device), clock() if clock else time.time(), None, n, {"mqtt": b"x" * size})
        if clock:
            clock.t += 1
    ob.flush()


def test_rows_come_back_in_order_and_acked_rows_are_deleted(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", ["mqtt"])
    fill(ob, "a", 3)
    fill(ob, "b", 2)
    rows = ob.fetch("mqtt", 0, 10)
    assert [(r.device, r.seq) for r in rows] == [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2)]
    for r in rows[:2]:
        ob.ack("mqtt", r)
    ob.flush()
    assert [(r.device, r.seq) for r in ob.fetch("mqtt", 0, 10)] == [("a", 3), ("b", 1), ("b", 2)]
    st = ob.stats("mqtt")
    assert (st["depth_batches"], st["depth_readings"], st["bytes"], st["delivered_readings"]) == (3, 15, 300, 10)


def test_ids_keep_rising_after_the_table_drains(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", ["mqtt"])
    fill(ob, "a", 2)
    for r in ob.fetch("mqtt", 0, 10):
        ob.ack("mqtt", r)
    ob.flush()
    fill(ob, "a", 1)
    assert [r.id for r in ob.fetch("mqtt", 2, 10)] == [3]  # a sender's cursor at 2 still sees the new row


def test_byte_bound_drops_the_oldest_and_counts_exactly(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", ["mqtt"], max_bytes=1050)
    fill(ob, "a", 20, size=100, n=7)  # 2,000 bytes: the oldest 10 batches must go
    st = ob.stats("mqtt")
    assert st["bytes"] <= 1050 and st["depth_batches"] == 10
    assert (st["dropped_batches"], st["dropped_readings"]) == (10, 70)
    assert [r.seq for r in ob.fetch("mqtt", 0, 100)] == list(range(11, 21))
    ob.close()
    again = Outbox(tmp_path / "o.db", ["mqtt"], max_bytes=1050)
    assert again.stats("mqtt")["dropped_readings"] == 70  # counters survive a restart


def test_age_bound_drops_what_is_too_old(tmp_path: Path) -> None:
    clock = Clock()
    ob = Outbox(tmp_path / "o.db", ["mqtt"], max_age=10, clock=clock)
    fill(ob, "a", 5, n=3, clock=clock)  # created at t0 .. t0+4
    clock.t += 8  # now t0+13: the batches of t0, t0+1, t0+2 are older than 10 s
    ob.flush()
    st = ob.stats("mqtt")
    assert (st["dropped_batches"], st["dropped_readings"], st["depth_batches"]) == (3, 9, 2)


def test_a_bound_on_one_sink_leaves_the_other_alone(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", ["mqtt", "influx"], max_bytes=500)
    for _ in range(5):
        ob.append("a", ob.next_seq("a"), time.time(), None, 1, {"mqtt": b"m" * 200, "influx": b"i" * 50})
    ob.flush()
    assert ob.stats("mqtt")["dropped_batches"] == 3 and ob.stats("influx")["dropped_batches"] == 0


def test_committed_rows_and_sequences_survive_a_crash(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", ["mqtt"])
    fill(ob, "a", 4)
    ob.append("a", ob.next_seq("a"), time.time(), None, 1, {"mqtt": b"not committed"})  # seq 5, lost with the crash
    ob.db.close()  # a crash: no flush, no close
    again = Outbox(tmp_path / "o.db", ["mqtt"])
    assert [r.seq for r in again.fetch("mqtt", 0, 10)] == [1, 2, 3, 4]
    assert again.next_seq("a") == 5  # the number that was never published is handed out again: no gap
    assert again.next_seq("b") == 1


def test_the_database_is_in_wal_mode(tmp_path: Path) -> None:
    Outbox(tmp_path / "o.db", ["mqtt"]).flush()
    assert sqlite3.connect(tmp_path / "o.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(("free", "live", "backlog", "share_", "expected"), [
    (10, 3, 0, 0.5, (3, 0)),   # no backlog: live takes what it has
    (10, 0, 50, 0.5, (0, 10)),  # no live data: the backlog takes the whole link
    (10, 50, 50, 0.5, (5, 5)),  # both: half and half
    (10, 2, 50, 0.5, (2, 8)),   # live needs less than its half: the backlog gets the rest
    (10, 50, 3, 0.5, (7, 3)),   # the backlog needs less: live gets the rest
    (10, 50, 50, 0.2, (2, 8)),
    (1, 5, 5, 0.5, (1, 0)),     # one slot: live first, never starved
])
def test_sharing_rule(free: int, live: int, backlog: int, share_: float, expected: tuple[int, int]) -> None:
    assert share(free, live, backlog, share_) == expected


class FakeLink:
    """A transport that acknowledges at once and records what it was given."""

    def __init__(self, ob: Outbox, capacity: int = 4) -> None:
        self.ob, self.cap = ob, capacity
        self.sent: list[tuple[str, int, bool]] = []

    connected = True
    generation = 1

    async def wait_connected(self) -> None:
        return None

    def capacity(self) -> int:
        return self.cap

    def in_flight(self) -> set[int]:
        return set()

    async def send(self, rows: list[Row], historical: list[bool]) -> None:
        for row, hist in zip(rows, historical, strict=True):
            self.sent.append((row.device, row.seq, hist))
            self.ob.ack("mqtt", row)
        self.ob.flush()


async def test_sender_interleaves_live_data_with_the_backlog_and_marks_the_backlog(tmp_path: Path) -> None:
    clock = Clock(100.0)
    ob = Outbox(tmp_path / "o.db", ["mqtt"], clock=clock)
    fill(ob, "a", 12, clock=clock)  # backlog, created 100..111
    link = FakeLink(ob, capacity=4)
    sender = Sender(ob, "mqtt", link, live_share=0.5, idle_wait=0.05)
    task = asyncio.create_task(sender.run())
    await asyncio.sleep(0)
    clock.t = 600.0
    for _ in range(6):  # live data keeps arriving while the backlog drains
        fill(ob, "a", 1, clock=clock)
        await asyncio.sleep(0.01)
    for _ in range(100):
        if len(link.sent) == 18:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    historical = [seq for _, seq, hist in link.sent if hist]
    live = [seq for _, seq, hist in link.sent if not hist]
    assert historical == list(range(1, 13))  # the whole backlog, in order, flagged
    assert live == list(range(13, 19))  # live in order, not flagged
    # live data did not wait for the backlog: the first live row went out before the last backlog row
    assert link.sent.index(("a", 13, False)) < link.sent.index(("a", 12, True))


def test_rows_a_transport_holds_are_never_dropped(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", ["mqtt"], max_bytes=1050)
    ob.held["mqtt"] = lambda: {1, 2}  # e.g. in paho's in-flight window
    fill(ob, "a", 20, size=100, n=7)
    seqs = [r.seq for r in ob.fetch("mqtt", 0, 100)]
    assert seqs[:2] == [1, 2] and 3 not in seqs
    assert ob.stats("mqtt")["dropped_batches"] == 10 and ob.stats("mqtt")["bytes"] <= 1050


def test_a_full_disk_keeps_batches_in_memory_drops_the_oldest_past_the_cap_and_recovers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SQLite's max_page_count makes the database "full" exactly as a full disk does (SQLITE_FULL)."""
    clock = Clock()
    # in memory the rows are records in chunks of 4,096 bytes: three rows of 1,000 bytes each; the cap holds 4
    assert 3 * (HEADER.size + 2 + 1000) <= 4096 < 4 * (HEADER.size + 2 + 1000)
    cap = 4 * (4096 + 3 * INDEX_COST)
    ob = Outbox(tmp_path / "outbox.db", ["mqtt"], clock=clock, pending_max_bytes=cap)
    fill(ob, "d1", 3, size=1000, clock=clock)
    ob.flush()
    pages = ob.db.execute("PRAGMA page_count").fetchone()[0]
    ob.db.execute(f"PRAGMA max_page_count = {pages}")  # no room for another row
    caplog.set_level("ERROR", logger="collector.outbox")
    first = ob.fetch("mqtt", 0, 1)[0]
    ob.ack("mqtt", first)  # deleted in the same transactions that fail
    for _ in range(4):  # 4 × 5 batches of 1,000 bytes while writes fail; the cap keeps the newest 4 chunks
        fill(ob, "d1", 5, size=1000, clock=clock)  # flushes
        ob.flush()  # never raises; no second attempt within RETRY_INTERVAL
        clock.t += 1
    assert ob.write_error is not None and "full" in ob.write_error
    assert ob.write_failures == 4
    assert len([r for r in caplog.records if "write_failed" in r.getMessage()]) == 1  # once a minute, not 20/s
    q = ob.queues["mqtt"]
    # chunks [4-6] [7-9] [10-12] dropped whole, the oldest first; [13-15] [16-18] [19-21] [22-23] kept
    assert q.memory.size == 4 * 4096 + 11 * INDEX_COST <= cap and q.memory.count == 11
    assert (q.dropped_batches, q.dropped_readings) == (9, 45)
    # the senders see the committed rows (row 1's delete waits for the disk) and the newest, in order
    assert [r.seq for r in ob.fetch("mqtt", 0, 100)] == [1, 2, 3, *range(13, 24)]
    assert ob.stats("mqtt")["depth_batches"] == 3 + 11

    ob.db.execute("PRAGMA max_page_count = 1000000")  # room again
    clock.t += 1
    ob.flush()
    assert ob.write_error is None and q.pending == [] and not q.memory and q.memory.size == 0
    assert [r.seq for r in ob.fetch("mqtt", 0, 100)] == [2, 3, *range(13, 24)]
    # the in-memory view of the table did not count the failed attempts
    assert (q.batches, q.readings, q.size) == (13, 65, 13 * 1000)
    ob.close()
    again = Outbox(tmp_path / "outbox.db", ["mqtt"], clock=clock)
    assert (again.queues["mqtt"].dropped_batches, again.queues["mqtt"].dropped_readings) == (9, 45)  # persisted
    assert again.next_seq("d1") == 24  # no number reused
    again.close()


def test_while_writes_fail_the_pending_rows_are_fetched_from_memory_and_those_acked_are_never_written(
        tmp_path: Path) -> None:
    clock = Clock()
    ob = Outbox(tmp_path / "outbox.db", ["mqtt"], clock=clock)
    fill(ob, "d1", 2, clock=clock)  # ids 1, 2 committed
    pages = ob.db.execute("PRAGMA page_count").fetchone()[0]
    ob.db.execute(f"PRAGMA max_page_count = {pages}")
    assert [r.id for r in ob.fetch("mqtt", 0, 10)] == [1, 2]
    fill(ob, "d1", 3, size=5000, clock=clock)  # the commit fails: no room for these
    assert ob.write_error is not None
    rows = ob.fetch("mqtt", 0, 10)
    assert [(r.id, r.seq) for r in rows] == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    assert [r.id for r in ob.fetch("mqtt", 1, 2)] == [2, 3] and [r.id for r in ob.fetch("mqtt", 0, 10, upto=4)][-1] == 4
    assert (ob.first_id("mqtt"), ob.last_id("mqtt")) == (1, 5)
    st = ob.stats("mqtt")
    assert (st["depth_batches"], st["memory_batches"]) == (5, 3)
    for r in (rows[0], rows[2], rows[3]):  # one committed row, two from memory
        ob.ack("mqtt", r)
    clock.t += 2
    ob.flush()  # still failing
    assert [r.id for r in ob.fetch("mqtt", 2, 10)] == [5]
    assert ob.stats("mqtt")["memory_batches"] == 1 and ob.stats("mqtt")["delivered_readings"] == 15
    ob.db.execute("PRAGMA max_page_count = 1000000")
    clock.t += 2
    ob.flush()
    assert ob.write_error is None
    # row 1 deleted, rows 3 and 4 never written, row 5 keeps its id from memory to the table
    assert [(r.id, r.seq) for r in ob.fetch("mqtt", 0, 10)] == [(2, 2), (5, 5)]
    st = ob.stats("mqtt")
    assert (st["depth_batches"], st["memory_batches"], st["bytes"]) == (2, 0, 5100)
    ob.close()
    again = Outbox(tmp_path / "outbox.db", ["mqtt"], clock=clock)
    assert again.next_seq("d1") == 6
    again.append("d1", 6, clock(), None, 5, {"mqtt": b"y"})
    again.flush()
    assert [r.id for r in again.fetch("mqtt", 5, 10)] == [6]  # ids never reused
    again.close()


def test_numbers_delivered_from_memory_are_not_handed_out_again_after_a_crash(tmp_path: Path) -> None:
    """The database cannot take the high-water marks while writes fail; the side file `outbox.db.seq` does."""
    clock = Clock()
    ob = Outbox(tmp_path / "outbox.db", ["mqtt"], clock=clock)
    fill(ob, "d1", 2, clock=clock)
    pages = ob.db.execute("PRAGMA page_count").fetchone()[0]
    ob.db.execute(f"PRAGMA max_page_count = {pages}")
    fill(ob, "d1", 3, size=5000, clock=clock)  # seqs 3..5, delivered from memory
    assert ob.write_error is not None and [r.seq for r in ob.fetch("mqtt", 2, 10)] == [3, 4, 5]
    ob.db.close()  # a crash: nothing of this reached the database
    ob.marks.close()
    assert sqlite3.connect(tmp_path / "outbox.db").execute("SELECT seq FROM seq_hw").fetchall() == [(2,)]
    again = Outbox(tmp_path / "outbox.db", ["mqtt"], clock=clock)
    assert again.next_seq("d1") == 6  # not 3: a consumer deduping on (device, seq) would drop the new data
    again.flush()
    again.close()
    assert Outbox(tmp_path / "outbox.db", ["mqtt"], clock=clock).next_seq("d1") == 7  # in the table now
