"""Outbox throughput: append and drain, in readings/s, with and without fsync per batch.

    .venv/bin/python bench/outbox.py [--batches N] [--tags T]

Append: batches of T readings (a real JSON payload of the MQTT sink) written through `Outbox.append` +
`flush`, either grouped as the collector does (one commit per 50 ms ≈ 50 batches here, no fsync) or one commit
with fsync per batch. Drain: the same rows read, acknowledged and deleted by a sender whose transport acks at
once (the outbox's own ceiling), then to a real mosquitto over QoS 1 (PUBACK-counted), which is what a
gateway sees after an outage. Prints a table and the ratios against the grouped, no-fsync baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collector.delivery import Sender  # noqa: E402
from collector.model import Batch, Reading, Row  # noqa: E402
from collector.outbox import Outbox  # noqa: E402
from collector.sinks.mqtt import MqttConnection, MqttSettings  # noqa: E402
from collector.sinks.mqtt_data import MqttDataSink, encode_body  # noqa: E402
from tests.support.broker import MosquittoProcess, free_port  # noqa: E402


def payload(tags: int, seq: int) -> bytes:
    now = time.time()
    readings = [Reading("bench-dev", f"tag_{i:03d}", 1000.0 + i * 0.5, "°C", "good", now, now) for i in range(tags)]
    return encode_body(Batch("bench-dev", seq, now, readings))  # the row the MQTT data sink stores


def bench_append(path: Path, batches: int, tags: int, fsync: bool, group: int) -> float:
    ob = Outbox(path, ["mqtt"], fsync=fsync)
    body = payload(tags, 1)
    started = time.perf_counter()
    for i in range(batches):
        dev = f"d{i % 100}"
        ob.append(dev, ob.next_seq(dev), time.time(), time.time(), tags, {"mqtt": body})
        if (i + 1) % group == 0:
            ob.flush()
    ob.flush()
    elapsed = time.perf_counter() - started
    ob.close()
    return batches * tags / elapsed


class AckAtOnce:
    """A transport that acknowledges every row at once: the drain ceiling of the outbox itself."""

    def __init__(self, ob: Outbox) -> None:
        self.ob = ob
        self.done = 0

    connected = True
    generation = 1

    async def wait_connected(self) -> None:
        return None

    def capacity(self) -> int:
        return 500

    def in_flight(self) -> set[int]:
        return set()

    async def send(self, rows: list[Row], historical: list[bool]) -> None:
        for row in rows:
            self.ob.ack("mqtt", row)
        self.done += len(rows)


async def drain(ob: Outbox, transport: object, total: int, counter: object) -> float:
    sender = Sender(ob, "mqtt", transport)  # type: ignore[arg-type]
    started = time.perf_counter()
    task = asyncio.create_task(sender.run())

    async def flusher() -> None:
        while True:
            await asyncio.sleep(0.05)
            ob.flush()

    flush_task = asyncio.create_task(flusher())
    while counter() < total:  # type: ignore[operator]
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    task.cancel()
    flush_task.cancel()
    return total / elapsed


async def bench_drain_outbox(path: Path, batches: int, tags: int) -> float:
    ob = Outbox(path, ["mqtt"])
    t = AckAtOnce(ob)
    rate = await drain(ob, t, batches, lambda: t.done)
    ob.close()
    return rate * tags


async def bench_drain_mqtt(path: Path, batches: int, tags: int) -> float:
    broker = MosquittoProcess(free_port())
    broker.start()
    ob = Outbox(path, ["mqtt"])
    acked = [0]

    def on_ack(row: Row) -> None:
        ob.ack("mqtt", row)
        acked[0] += 1

    conn = MqttConnection(MqttSettings(host=broker.host, port=broker.port, topic_root="bench", max_inflight=100))
    sink = MqttDataSink(conn, on_ack=on_ack)
    await conn.start()
    try:
        rate = await drain(ob, sink, batches, lambda: acked[0])
    finally:
        await conn.stop()
        broker.stop()
        ob.close()
    return rate * tags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20_000)
    ap.add_argument("--tags", type=int, default=50, help="readings per batch")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-outbox-"))
    b, t = args.batches, args.tags
    fsync_batches = min(b, 2_000)  # one fsync per batch is slow: fewer batches, same rate
    rows = []
    base = bench_append(tmp / "a.db", b, t, fsync=False, group=50)
    rows.append(("append, grouped commit (50 ms), no fsync", base, 1.0))
    rate = bench_append(tmp / "b.db", fsync_batches, t, fsync=True, group=1)
    rows.append(("append, commit + fsync per batch", rate, rate / base))
    rate = bench_append(tmp / "c.db", fsync_batches, t, fsync=False, group=1)
    rows.append(("append, commit per batch, no fsync", rate, rate / base))
    rate = asyncio.run(bench_drain_outbox(tmp / "a.db", b, t))
    rows.append(("drain, outbox only (read + ack + delete)", rate, rate / base))
    bench_append(tmp / "m.db", b, t, fsync=False, group=50)
    rate = asyncio.run(bench_drain_mqtt(tmp / "m.db", b, t))
    rows.append(("drain to mosquitto, QoS 1, PUBACK-counted", rate, rate / base))
    print(f"outbox bench: {b} batches x {t} readings ({len(payload(t, 1))} B per batch), {fsync_batches} for "
          "per-batch commits")
    print(f"{'case':<46} {'readings/s':>12} {'vs baseline':>12}")
    for name, r, ratio in rows:
        print(f"{name:<46} {r:>12,.0f} {ratio:>11.2f}x")


if __name__ == "__main__":
    main()
