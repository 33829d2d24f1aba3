"""The city hub at scale: signed-record ingest per hub process, and the city bulletin.

    .venv/bin/python bench/hub.py [--enterprises 5000] [--days 30] [--processes 1,2] [--skip-mqtt]

Enrols N enterprises (one collector and key each) in a fresh PostgreSQL database on 127.0.0.1:5432, signs
for each a key record, `days` daily heads and one monthly summary (full record) through `collector.evidence`
(N × (days + 2) messages), then measures:

- direct: one process calling `collector.hub.ingest.ingest_batch` with batches of 200 per transaction (verification +
  continuity + store; no MQTT): the hub's own ceiling per process;
- mqtt, per process count: a private mosquitto, K `collector hub run` processes on the shared subscription, one
  publisher sending every message at QoS 1; records/s from the first publish to the last stored row;
- bulletin: `collector.hub.bulletin.build` for the city (N enterprises, 12-month trend) and its HTML rendering.

The database is dropped at the end. Prints one line per measurement (Markdown table rows for BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from collector.credit_code import check_char  # noqa: E402
from collector.evidence.canonical import GENESIS  # noqa: E402
from collector.evidence.keys import Signer, generate, public_b64  # noqa: E402
from collector.evidence.records import anchor_message, key_body, sign_record  # noqa: E402
from collector.hub import db  # noqa: E402
from collector.hub.bulletin import JIAXING, build  # noqa: E402
from collector.hub.enroll import EnrolKey, EnrolRow, enrol  # noqa: E402
from collector.hub.ingest import ingest_batch  # noqa: E402
from collector.hub.render import render  # noqa: E402
from tests.support.broker import MosquittoProcess, free_port  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def code(i: int) -> str:
    first = f"91330400{i:09d}"
    return first + check_char(first)


def _message(signer: Signer, ent: str, seq: int, ts: str, prev: str, body: dict[str, Any],
             full: bool) -> tuple[str, bytes]:
    rec = sign_record(signer, enterprise=ent, workshop="ws-1", seq=seq, ts=ts, prev=prev, body=body)
    msg = rec if full else anchor_message(rec, "daily", ts)
    return rec["hash"], json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode()


def make_city(n: int, days: int) -> tuple[list[EnrolRow], list[tuple[str, bytes]]]:
    """Enrolment rows and every message (sender, JSON), in publish order: as a city sends them, interleaved
    (every enterprise's key record, then every enterprise's first daily head, …), not one enterprise at a time."""
    rows: list[EnrolRow] = []
    per_enterprise: list[list[tuple[str, bytes]]] = []
    for i in range(n):
        signer = Signer(generate())
        ent, sender = f"e{i:05d}", code(i)
        rows.append(EnrolRow(sender, f"企业{i:05d}", JIAXING[i % len(JIAXING)], "制造业", True, ent,
                             [EnrolKey(signer.fingerprint, public_b64(signer.public))]))
        num = 3 + i % 5
        bodies: list[tuple[dict[str, Any], str, bool]] = [
            (key_body(signer.public, None), "2026-10-31T08:00:00+08:00", True),
            *(({"kind": "daily_head", "date": f"2026-11-{d:02d}"}, f"2026-11-{d:02d}T23:59:00+08:00", False)
              for d in range(1, days + 1)),
            ({"kind": "monthly_summary", "enterprise": ent, "collector_workshop": "ws-1", "status": "closed",
              "period": {"kind": "month", "label": "2026-11", "closes": "2026-12-04T00:00:00+08:00"},
              "figures": {"D1": {"numerator": num, "denominator": 7, "target": 0.7},
                          "D2": {"numerator": num - 1, "denominator": 6, "target": 0.55}}},
             "2026-12-04T00:00:41+08:00", True)]
        prev, mine = GENESIS, []
        for seq, (body, ts, full) in enumerate(bodies, start=1):
            prev, raw = _message(signer, ent, seq, ts, prev, body, full)
            mine.append((sender, raw))
        per_enterprise.append(mine)
    return rows, [m for step in zip(*per_enterprise, strict=True) for m in step]


class Database:
    def __init__(self) -> None:
        self.name = f"hubbench_{uuid.uuid4().hex[:8]}"
        self.url = f"postgresql://postgres@127.0.0.1:5432/{self.name}"
        with psycopg.connect(SERVER, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{self.name}"')

    def reset(self, rows: list[EnrolRow]) -> None:
        with db.migrated(self.url) as conn:
            conn.execute("TRUNCATE records, chains, incidents, keys, enterprises CASCADE")
            conn.commit()
            enrol(conn, rows)

    def count(self) -> int:
        with psycopg.connect(self.url) as c:
            row = c.execute("SELECT count(*) FROM records").fetchone()
            return int(row[0]) if row else 0

    def drop(self) -> None:
        with psycopg.connect(SERVER, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def bench_direct(database: Database, messages: list[tuple[str, bytes]], hub: Signer) -> float:
    started = time.perf_counter()
    with db.connect(database.url) as conn:
        for i in range(0, len(messages), 200):
            with conn.transaction():
                ingest_batch(conn, [(s, json.loads(raw)) for s, raw in messages[i:i + 200]], hub, "bench")
    return len(messages) / (time.perf_counter() - started)


def bench_mqtt(database: Database, messages: list[tuple[str, bytes]], processes: int, tmp: Path) -> float:
    broker = MosquittoProcess(free_port(), extra=["max_queued_messages 0"])
    broker.start()
    procs = []
    try:
        for k in range(processes):
            cfg = tmp / f"hub{k}.yaml"
            cfg.write_text(yaml.safe_dump({"database": database.url, "state_dir": str(tmp / "state"),
                                           "mqtt": {"port": broker.port, "client_id": f"bench-{k}-{uuid.uuid4().hex[:4]}"},
                                           "http": {"listen": None}}))
            log = tmp / f"hub{k}.log"
            procs.append(subprocess.Popen([sys.executable, "-m", "collector.cli", "hub", "run", "-c", str(cfg),
                                           "--log-level", "WARNING"], stderr=open(log, "ab")))  # noqa: SIM115
        time.sleep(3.0)  # connected and subscribed
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(20000)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        started = time.perf_counter()
        for sender, raw in messages:
            # paho holds at most 65,535 unacknowledged QoS 1 messages (16-bit ids): beyond, it refuses (rc set)
            while client.publish(f"cityhub/{sender}/evidence", raw, qos=1).rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                time.sleep(0.01)
        while database.count() < len(messages):
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a hub process exited: " + " ".join(
                    (tmp / f"hub{k}.log").read_text()[-500:] for k in range(processes)))
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        client.loop_stop()
        client.disconnect()
        return len(messages) / elapsed
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--enterprises", type=int, default=5000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--processes", default="1,2", help="hub process counts for the MQTT runs")
    ap.add_argument("--skip-mqtt", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows, messages = make_city(args.enterprises, args.days)
    print(f"signed {len(messages)} messages for {args.enterprises} enterprises in {time.perf_counter() - t0:.1f} s "
          f"(cpus: {os.cpu_count()})", flush=True)
    database = Database()
    hub = Signer(generate())
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            database.reset(rows)
            rate = bench_direct(database, messages, hub)
            print(f"| ingest, direct (verify + store, 1 process, no MQTT) | {rate:,.0f} records/s |", flush=True)
            if not args.skip_mqtt:
                for k in (int(x) for x in args.processes.split(",")):
                    database.reset(rows)
                    rate = bench_mqtt(database, messages, k, Path(tmpdir))
                    print(f"| ingest over MQTT, {k} hub process(es) on $share/hub | {rate:,.0f} records/s |",
                          flush=True)
            with db.connect(database.url) as conn:
                started = time.perf_counter()
                bulletin = build(conn, "2026-11", JIAXING)
                built = time.perf_counter() - started
                started = time.perf_counter()
                render(bulletin, "html")
                rendered = time.perf_counter() - started
            reported = bulletin["total"]["reported"]
            print(f"| city bulletin, {reported} enterprises reported, 12-month trend | {built:.2f} s "
                  f"(+ {rendered:.2f} s HTML) |", flush=True)
    finally:
        database.drop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
