"""A really full disk (a small tmpfs filled to ENOSPC) under the outbox, with a real broker.

1. Broker up, disk full: data keeps flowing from memory, every sequence number once and in order, the acks
   counted; when space returns the outbox empties and the sequence high-water marks reach the disk.
2. Broker down, disk full: the in-memory cap (8 MiB) holds; the collector's RSS (a subprocess, psutil) grows by
   at most MEMORY_FACTOR × the cap, gives the memory back after recovery, and the subscriber's gap is exactly
   the drop count the gateway status reports.

Mounting needs root (the tests and CI run as root); elsewhere these tests skip and say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from collector.app import Collector
from collector.config import Settings, parse_config
from simulators.workshop import Workshop
from tests.conftest import Recorder
from tests.support.broker import MosquittoProcess, free_port
from tests.test_outbox_outage import by_device, load_config

DISK_MB = 64  # room, once the filler is gone, for the WAL and the table to take the 8 MiB held in memory
FULL_BATCHES = 50  # batches of each device delivered while the disk is full (5 s at 0.1 s)
CAP = 8 * 1024 * 1024
MEMORY_FACTOR = 2.0  # RSS growth while the cap is full, at most this many times the cap
# RSS above the baseline once the rows held in memory are on disk, at most this share of the cap: the commit
# that writes them fills SQLite's page cache (2 MB, its default), the rest must have gone back
RETURNED = 0.5
DRAINED = 1.5  # ... and after the backlog went out to the broker (a guard against a leak, see below)
# 20 more float tags per machine, in one block of holding registers (one more request per poll)
WIDE_TAGS = [{"name": f"zone_temp_{i:02d}", "register": 40101 + 2 * i, "type": "float32", "unit": "°C",
              "sim": {"kind": "walk", "min": 200, "max": 240, "idle": 180}} for i in range(20)]


class SmallDisk:
    """A private tmpfs of DISK_MB; `fill()` writes a file until the kernel answers ENOSPC, `free()` deletes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 1 << 16, 4096, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * chunk)
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0, "the tmpfs is not full"

    def free(self) -> None:
        self.filler.unlink()

    def is_full(self) -> bool:
        return os.statvfs(self.path).f_bavail == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full filesystem needs a tmpfs mount, and mounting needs root (CI runs as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): a real full filesystem is needed")
    try:
        yield SmallDisk(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_a_full_disk_with_the_broker_up_keeps_delivering_from_memory_and_recovers(
        tmp_path: Path, small_disk: SmallDisk) -> None:
    broker = MosquittoProcess(free_port())
    broker.start()
    state = small_disk.path / "state"
    cfg = parse_config(load_config(state, broker.port, devices=5, interval=0.1))
    rec = Recorder(broker.host, broker.port, f"{cfg.topic_root}/#", client_id="disk-full-sub")
    workshop = Workshop(cfg)
    await workshop.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    ob = collector.outbox
    try:
        await rec.wait_for(lambda: len(by_device(rec)) == 5 and all(len(v) >= 5 for v in by_device(rec).values()),
                           20, "data from all 5 devices")
        small_disk.fill()
        full_at = time.time()
        await rec.wait_for(lambda: ob.write_error is not None, 10, "a commit to fail on the full disk")
        in_memory = []

        def delivered_while_full() -> bool:
            """FULL_BATCHES of every device delivered while the disk is full (the memory held meanwhile kept)."""
            in_memory.append(ob.stats("mqtt")["memory_batches"])
            return all(sum(m["ts"] / 1000 > full_at + 1 for m in v) >= FULL_BATCHES for v in by_device(rec).values())

        await rec.wait_for(delivered_while_full, 60, f"{FULL_BATCHES} batches of each device while the disk is full")
        assert small_disk.is_full() and ob.write_error is not None and "full" in ob.write_error
        now = time.time()
        for device in by_device(rec):
            # the latest batch is fresh: delivery did not stop
            latest = max(m.received for m in rec.on(f"/devices/{device}/data"))
            assert now - latest < 2.0, f"{device}: nothing delivered for {now - latest:.1f} s"
        assert max(in_memory) < 5 * 10 * 2, f"batches piled up in memory: {in_memory}"  # delivered, not held

        small_disk.free()
        await rec.wait_for(lambda: ob.write_error is None, 10, "a commit to work again")
        for dev in cfg.devices:
            await collector.engine.stop_device(dev.id)
        await rec.wait_for(lambda: ob.stats("mqtt")["depth_batches"] == 0 and collector.sink.stats()["in_flight"]
                           == 0 and not ob.queues["mqtt"].pending, 20, "the outbox to empty")
        asked = time.time()
        collector._publish_gateway()
        status = await rec.wait_for(lambda: (m := rec.last("/gateway/status")) and m.received > asked and m, 10,
                                    "a gateway status")
        reported = status.json()["outbox"]["mqtt"]
    finally:
        await collector.stop()
        await workshop.stop()
        rec.close()
        broker.stop()
    total = 0
    for device, lst in by_device(rec).items():
        seqs = [m["seq"] for m in lst]
        # the broker stayed up: every number once, in order, no gap (nothing dropped), no redelivery
        assert seqs == list(range(1, len(seqs) + 1)), f"{device}: {seqs}"
        total += len(seqs)
    assert (reported["dropped_batches"], reported["dropped_readings"]) == (0, 0)
    assert reported["delivered_readings"] == 5 * total  # every acknowledged message counted, 5 readings each
    assert reported["depth_batches"] == 0
    db = sqlite3.connect(state / "outbox.db")
    try:
        assert db.execute("SELECT COUNT(*) FROM q_mqtt").fetchone()[0] == 0  # delivered from memory: never written
        # the numbers published from memory are on disk now: a restart continues after them
        assert dict(db.execute("SELECT device, seq FROM seq_hw").fetchall()) == {
            d: max(m["seq"] for m in lst) for d, lst in by_device(rec).items()}
    finally:
        db.close()


def api_status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def rss_mb(proc: psutil.Process, samples: int = 3) -> float:
    values = []
    for _ in range(samples):
        values.append(proc.memory_info().rss / 2**20)
        time.sleep(0.2)
    return statistics.median(values)


def wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = cond()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_the_memory_cap_bounds_the_rss_on_a_full_disk_and_the_memory_comes_back(
        tmp_path: Path, small_disk: SmallDisk) -> None:
    broker = MosquittoProcess(free_port(), persistence_dir=tmp_path)  # keeps the subscriber's session
    broker.start()
    http_port = free_port()
    data = load_config(small_disk.path / "state", broker.port, devices=20, interval=0.05,
                       outbox={"memory_max_bytes": CAP})
    for dev in data["devices"]:  # wide batches (~2 kB): the cap fills in seconds, not a minute of small ones
        dev["tags"] = [*dev["tags"], *WIDE_TAGS]
    data["http"] = {"listen": f"127.0.0.1:{http_port}"}
    cfg = parse_config(data)
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(data))
    rec = Recorder(broker.host, broker.port, f"{cfg.topic_root}/#", client_id="cap-sub", clean_session=False)
    env = {**os.environ, "COLLECTOR_LOG_LEVEL": "WARNING"}
    sim = subprocess.Popen([sys.executable, "-m", "collector.cli", "simulate", "-c", str(path)],
                           stdout=subprocess.PIPE, text=True)
    collector: subprocess.Popen[bytes] | None = None
    try:
        assert sim.stdout is not None and "ready" in "".join(sim.stdout.readline() for _ in range(21))
        collector = subprocess.Popen([sys.executable, "-m", "collector.cli", "run", "-c", str(path)], env=env)
        proc = psutil.Process(collector.pid)
        asyncio.run(rec.wait_for(lambda: len(by_device(rec)) == 20, 30, "data from all 20 devices"))
        for _ in range(5):  # warm up what runs later too: the HTTP API, the periodic jobs (every 5 s)
            api_status(http_port)
            time.sleep(2)
        base = rss_mb(proc)

        broker.stop()
        small_disk.fill()
        wait(lambda: api_status(http_port)["outbox"]["mqtt"]["dropped_batches"] > 0, 90, "the cap to fill")
        peak = base
        for _ in range(20):  # 4 s more of dropping at the cap
            peak = max(peak, proc.memory_info().rss / 2**20)
            time.sleep(0.2)
        held = api_status(http_port)["outbox"]["mqtt"]
        # the cap is kept at every flush: between two, one commit interval of batches may come on top
        assert held["memory_bytes"] <= CAP * 1.02 and held["memory_batches"] > 0
        growth = peak - base
        assert growth <= MEMORY_FACTOR * CAP / 2**20, (
            f"RSS grew {growth:.1f} MB for a {CAP / 2**20:.0f} MB cap ({held['memory_batches']} batches held)")

        small_disk.free()
        wait(lambda: api_status(http_port)["health"]["outbox"]["write_error"] is None, 10, "a commit to work again")
        time.sleep(1)
        recovered = rss_mb(proc)  # what waited in memory is on disk now, and its memory is given back
        assert recovered - base <= RETURNED * CAP / 2**20, (
            f"RSS stayed {recovered - base:.1f} MB above the baseline (peak {growth:.1f} MB)")
        broker.start()

        def settled() -> dict[str, Any] | None:
            """The backlog delivered: what is missing is exactly what the outbox says it dropped."""
            reported = api_status(http_port)["outbox"]["mqtt"]
            missing = 0
            for lst in by_device(rec).values():
                seqs = {m["seq"] for m in lst}
                missing += len(set(range(1, max(seqs) + 1)) - seqs)
            return reported if reported["dropped_batches"] == missing and reported["depth_batches"] < 40 else None

        reported = wait(settled, 60, "the backlog to drain")
        time.sleep(1)
        drained = rss_mb(proc)
        # draining a backlog of 16 k rows to the broker costs memory of its own, disk full or not (CPython keeps
        # its high-water mark: ~5 MB here); a bound, so that a leak of what the cap held would show
        assert drained - base <= DRAINED * CAP / 2**20, f"RSS {drained - base:.1f} MB above the baseline after the drain"
        print(f"RSS over the baseline of {base:.1f} MB: at the cap {growth:.1f} MB ({held['memory_batches']} batches, "
              f"{held['memory_bytes'] / 2**20:.1f} MB counted), recovered {recovered - base:.1f} MB, "
              f"drained {drained - base:.1f} MB")
    finally:
        if collector is not None:
            collector.send_signal(signal.SIGTERM)
            collector.wait(15)
        sim.send_signal(signal.SIGINT)
        sim.wait(15)
        rec.close()
        broker.stop()
    per_batch = len(data["devices"][0]["tags"])  # every batch carries every tag
    assert reported["dropped_readings"] == per_batch * reported["dropped_batches"] > 0
    for device, lst in by_device(rec).items():
        seqs = {m["seq"] for m in lst}
        missing = set(range(1, max(seqs) + 1)) - seqs
        # the oldest of what waited in memory were dropped: one hole per device, everything after it arrived
        assert not missing or missing == set(range(min(missing), max(missing) + 1)), f"{device}: {sorted(missing)}"


def test_kill_9_on_a_full_disk_never_hands_out_a_number_delivered_from_memory_again(
        tmp_path: Path, small_disk: SmallDisk) -> None:
    """What was delivered from memory never reached outbox.db; the restarted collector must still number after
    it (a consumer deduping on (device, seq) would otherwise drop its new data as duplicates)."""
    broker = MosquittoProcess(free_port())
    broker.start()
    data = load_config(small_disk.path / "state", broker.port, devices=3, interval=0.1)
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = parse_config(data)
    rec = Recorder(broker.host, broker.port, f"{cfg.topic_root}/devices/+/data", client_id="kill-sub")
    env = {**os.environ, "COLLECTOR_LOG_LEVEL": "WARNING"}
    run = [sys.executable, "-m", "collector.cli", "run", "-c", str(path)]
    sim = subprocess.Popen([sys.executable, "-m", "collector.cli", "simulate", "-c", str(path)],
                           stdout=subprocess.PIPE, text=True)
    collector: subprocess.Popen[bytes] | None = None
    try:
        assert sim.stdout is not None and "ready" in "".join(sim.stdout.readline() for _ in range(4))
        collector = subprocess.Popen(run, env=env)
        asyncio.run(rec.wait_for(lambda: len(by_device(rec)) == 3, 20, "data from all 3 devices"))
        small_disk.fill()
        full_at = time.time()
        asyncio.run(rec.wait_for(lambda: all(sum(m["ts"] / 1000 > full_at + 1 for m in v) >= 20
                                             for v in by_device(rec).values()), 20, "data delivered while full"))
        collector.send_signal(signal.SIGKILL)
        collector.wait(10)
        before = {d: max(m["seq"] for m in v) for d, v in by_device(rec).items()}
        small_disk.free()
        restarted = time.time()
        collector = subprocess.Popen(run, env=env)
        asyncio.run(rec.wait_for(lambda: all(any(m["ts"] / 1000 > restarted for m in v)
                                             for v in by_device(rec).values()), 30, "data after the restart"))
    finally:
        if collector is not None:
            collector.send_signal(signal.SIGTERM)
            collector.wait(15)
        sim.send_signal(signal.SIGINT)
        sim.wait(15)
        rec.close()
        broker.stop()
    for device, lst in by_device(rec).items():
        read_at: dict[int, set[int]] = {}
        for m in lst:
            read_at.setdefault(m["seq"], set()).add(m["ts"])
        reused = sorted(seq for seq, times in read_at.items() if len(times) > 1)
        assert not reused, f"{device}: numbers given to two different batches: {reused[:10]}"
        after = [m["seq"] for m in lst if m["ts"] / 1000 > restarted]
        assert min(after) > before[device], f"{device}: restarted at {min(after)}, {before[device]} was delivered"
