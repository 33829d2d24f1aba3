"""The city hub at scale: signed-record ingest per hub process, and the city bulletin.

    .venv/bin/python bench/hub.py [--enterprises 5000] [--days 30] [--processes 1,2] [--skip-mqtt] [--skip-direct]
                                  [--hub-cpu CORES] [--py-spy DIR]

Enrols N enterprises (one collector and key each) in a fresh PostgreSQL database on 127.0.0.1:5432, signs
for each a key record, `days` daily heads, one monthly summary (full record) and one signed live snapshot (the
minute's: a run lasts about a minute) through `collector.evidence` (N × (days + 3) messages), then measures:

- direct: one process calling `collector.hub.ingest.ingest_batch` with batches of 200 per transaction (verification +
  continuity + store; no MQTT): the hub's own ceiling per process;
- mqtt, per process count: a private mosquitto, K `collector hub run` processes (this tree's code) on the shared
  subscription, started and subscribed before one publisher sends every message at QoS 1; records/s from the first
  publish to the last stored row, and between the first and the last stored batch;
- with `--hub-cpu CORES`, the same MQTT runs again with every hub process held to CORES of CPU by a cgroup
  quota: on a 2-core machine that also carries the broker, the database and the publisher, this is what shows
  how records/s grow with the process count (each process gets the same CPU whether it runs alone or beside
  another); the ratio is printed as a share of linear;
- bulletin: `collector.hub.bulletin.build` for the city (N enterprises, 12-month trend) and its HTML rendering.

Records/s on a shared machine say more about its load than about the hub, so each line also gives the CPU time
per record of the hub processes, of their PostgreSQL backends, of mosquitto and of the publisher, and the hub's in
units of one Ed25519 verification timed in the same run: a process with a core of its own ingests about
1 / (hub CPU per record) records/s. To compare two trees back to back, copy this file into the other tree's bench/
and run it from there (it imports, and starts the hubs from, the tree it sits in).

The database is dropped at the end. Prints one line per measurement (Markdown table rows for BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from collector.credit_code import check_char  # noqa: E402
from collector.evidence.canonical import GENESIS  # noqa: E402
from collector.evidence.keys import Signer, check_signature, generate, public_b64  # noqa: E402
from collector.evidence.live import live_message  # noqa: E402
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
        # the minute's live snapshot (evidence.hub.live_interval 60: the run lasts about a minute), mid-month
        live = live_message(signer, {"enterprise": ent, "ts": "2026-11-16T08:00:00Z", "banner": None, "figures": {
            "D1": {"numerator": num, "denominator": 7}, "D2": {"numerator": num - 1, "denominator": 6}}}, "ws-1")
        mine.insert(len(mine) // 2, (sender, json.dumps(live, ensure_ascii=False, separators=(",", ":")).encode()))
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
        """Messages stored: records, and live snapshots (one per collector here)."""
        with psycopg.connect(self.url) as c:
            row = c.execute("SELECT (SELECT count(*) FROM records) + (SELECT count(*) FROM live)").fetchone()
            return int(row[0]) if row else 0

    def backends(self) -> list[int]:
        """The PostgreSQL server processes serving this database (the hubs' pool connections), but our own."""
        with psycopg.connect(self.url) as c:
            return [int(r[0]) for r in c.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND "
                                                 "pid <> pg_backend_pid()", (self.name,)).fetchall()]

    def batches(self) -> int:
        """How many transactions stored the records (a batch's records share its received_at)."""
        with psycopg.connect(self.url) as c:
            row = c.execute("SELECT count(DISTINCT received_at) FROM records").fetchone()
            return int(row[0]) if row else 0

    def span(self) -> float:
        """Seconds between the first and the last stored batch (each batch is stamped when it is taken)."""
        with psycopg.connect(self.url) as c:
            row = c.execute("SELECT extract(epoch FROM max(received_at) - min(received_at)) FROM records").fetchone()
            return max(float(row[0]) if row and row[0] is not None else 0.0, 1e-3)

    def drop(self) -> None:
        with psycopg.connect(SERVER, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def bench_direct(database: Database, messages: list[tuple[str, bytes]], hub: Signer, verify: float) -> str:
    started, cpu = time.perf_counter(), time.process_time()
    with db.connect(database.url) as conn:
        row = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
        backend = int(row["pid"]) if row else 0
        db0 = cpu_seconds(backend)
        for i in range(0, len(messages), 200):
            with conn.transaction():
                ingest_batch(conn, [(s, json.loads(raw)) for s, raw in messages[i:i + 200]], hub, "bench")
        db_cpu = cpu_seconds(backend) - db0
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    n = len(messages)
    return (f"| ingest, direct (verify + store, 1 process, no MQTT) | {n / elapsed:,.0f} records/s | CPU per record: "
            f"hub {cpu / n * 1e6:.0f} µs ({cpu / n / verify:.1f} verifications), PostgreSQL {db_cpu / n * 1e6:.0f} µs "
            f"| load {os.getloadavg()[0]:.1f} |")


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def verify_cost() -> float:
    """CPU seconds of one Ed25519 verification on this machine now: the yardstick the hub's CPU per record is
    given in (a shared machine's CPU time per operation moves with its load, the ratio much less)."""
    signer = Signer(generate())
    data = b"x" * 300
    sig = signer.sign(data)
    started = time.process_time()
    for _ in range(2000):
        check_signature(signer.public, sig, data)
    return (time.process_time() - started) / 2000


@dataclass
class Run:
    messages: int
    elapsed: float  # first publish to last stored row
    span: float  # first to last stored batch, on the hubs' clock
    hub_cpu: float  # CPU seconds of the hub processes during the run
    shares: list[float]  # each process's part of hub_cpu
    db_cpu: float  # of their PostgreSQL backends
    broker_cpu: float
    publisher_cpu: float
    batches: int

    def line(self, processes: int, verify: float, quota: float | None = None) -> str:
        per = 1e6 / self.messages
        held = f", each held to {quota:g} core" if quota is not None else ""
        split = (" (CPU split " + " / ".join(f"{x:.0%}" for x in self.shares) + ")") if processes > 1 else ""
        return (f"| ingest over MQTT, {processes} hub process(es) on $share/hub{held}{split} | "
                f"{self.messages / self.elapsed:,.0f} "
                f"records/s ({self.messages / self.span:,.0f}/s first to last stored batch; {self.messages / self.batches:.0f} records a batch) | CPU per record: hub "
                f"{self.hub_cpu * per:.0f} µs ({self.hub_cpu / self.messages / verify:.1f} verifications), "
                f"PostgreSQL {self.db_cpu * per:.0f} µs, mosquitto {self.broker_cpu * per:.0f} µs, publisher "
                f"{self.publisher_cpu * per:.0f} µs | load {os.getloadavg()[0]:.1f} |")


def _wait_subscribed(logs: list[Path], procs: list[subprocess.Popen[bytes]], timeout: float = 120.0) -> None:
    """Until every hub process says it subscribed: a message published before any subscriber exists is dropped by
    the broker (a fixed sleep was not enough on a loaded machine: the run lost the first few thousand)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all("subscribed" in log.read_text(errors="replace") for log in logs):
            time.sleep(0.5)  # the SUBSCRIBE reaches the broker before our first PUBLISH
            return
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a hub process exited: " + " ".join(log.read_text()[-500:] for log in logs))
        time.sleep(0.1)
    raise RuntimeError(f"the hub processes did not subscribe within {timeout:.0f} s")


class CpuQuota:
    """A CPU quota of `cores` for one process, through a cgroup (v1 `cpu` controller, or v2): with every hub
    process held to the same share of a core, the run shows how records/s grow with the process count whatever
    else the two cores carry (the broker, the database and the publisher take the rest)."""

    def __init__(self, cores: float, pid: int) -> None:
        name = f"hubbench-{pid}"
        v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
        if (v1 / "cpu.cfs_quota_us").exists():
            self.path = v1 / name
            self.path.mkdir()
            (self.path / "cpu.cfs_period_us").write_text("100000")
            (self.path / "cpu.cfs_quota_us").write_text(str(int(cores * 100000)))
        elif (v2 / "cgroup.controllers").exists():
            self.path = v2 / name
            self.path.mkdir()
            (self.path / "cpu.max").write_text(f"{int(cores * 100000)} 100000")
        else:
            raise RuntimeError("--hub-cpu needs a writable cgroup cpu controller (run as root on Linux)")
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        for _ in range(50):  # the process has exited; the kernel empties the group a moment later
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def bench_mqtt(database: Database, messages: list[tuple[str, bytes]], processes: int, tmp: Path,
               spy: Path | None = None, cpu_quota: float | None = None) -> Run:
    broker = MosquittoProcess(free_port(), extra=["max_queued_messages 0"])
    broker.start()
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    spies: list[subprocess.Popen[bytes]] = []
    quotas: list[CpuQuota] = []
    try:
        for k in range(processes):
            cfg = tmp / f"hub{k}.yaml"
            cfg.write_text(yaml.safe_dump({"database": database.url, "state_dir": str(tmp / "state"),
                                           "mqtt": {"port": broker.port, "client_id": f"bench-{k}-{uuid.uuid4().hex[:4]}"},
                                           "http": {"listen": None}}))
            log = tmp / f"hub{k}-{processes}-{uuid.uuid4().hex[:6]}.log"  # a fresh log: _wait_subscribed reads it
            logs.append(log)
            # cwd: the hub runs this tree's code (`-m` puts the working directory first on sys.path)
            procs.append(subprocess.Popen([sys.executable, "-m", "collector.cli", "hub", "run", "-c", str(cfg),
                                           "--log-level", "INFO"], cwd=ROOT, stderr=open(log, "ab")))  # noqa: SIM115
            if cpu_quota is not None:
                quotas.append(CpuQuota(cpu_quota, procs[-1].pid))
        _wait_subscribed(logs, procs)
        if spy is not None:  # py-spy on the first hub process, for the whole run
            spies.append(subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(procs[0].pid), "-r", "50", "-f", "raw",
                                           "-o", str(spy), "--nonblocking"], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            time.sleep(1.0)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(20000)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        backends = database.backends()
        cpu0 = ([cpu_seconds(p.pid) for p in procs], {b: cpu_seconds(b) for b in backends},
                cpu_seconds(broker.proc.pid if broker.proc else 0), time.process_time())
        started = time.perf_counter()
        for sender, raw in messages:
            # paho holds at most 65,535 unacknowledged QoS 1 messages (16-bit ids): beyond, it refuses (rc set)
            while client.publish(f"cityhub/{sender}/evidence", raw, qos=1).rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                time.sleep(0.01)
        while database.count() < len(messages):
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a hub process exited: " + " ".join(log.read_text()[-500:] for log in logs))
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        publisher = time.process_time() - cpu0[3]
        per_process = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0[0], strict=True)]
        hub_cpu = sum(per_process)
        db_cpu = sum(cpu_seconds(b) - cpu0[1].get(b, 0.0) for b in database.backends())
        broker_cpu = cpu_seconds(broker.proc.pid if broker.proc else 0) - cpu0[2]
        client.loop_stop()
        client.disconnect()
        return Run(len(messages), elapsed, database.span(), hub_cpu, [c / hub_cpu for c in per_process], db_cpu,
                   broker_cpu, publisher, database.batches())
    finally:
        for s in spies:
            s.send_signal(signal.SIGINT)
            s.wait(30)
        for p in procs:
            p.terminate()
            p.wait(20)
        for q in quotas:
            q.remove()
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--enterprises", type=int, default=5000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--processes", default="1,2", help="hub process counts for the MQTT runs")
    ap.add_argument("--skip-mqtt", action="store_true")
    ap.add_argument("--skip-direct", action="store_true")
    ap.add_argument("--hub-cpu", type=float, metavar="CORES",
                    help="also run each process count with every hub process held to CORES of CPU (a cgroup "
                         "quota; root): the scaling with the process count, apart from the machine's other load")
    ap.add_argument("--py-spy", metavar="DIR", type=Path,
                    help="record the first hub process of each MQTT run with py-spy (raw stacks into DIR)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows, messages = make_city(args.enterprises, args.days)
    verify = verify_cost()
    print(f"one Ed25519 verification: {verify * 1e6:.0f} µs CPU now (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"signed {len(messages)} messages for {args.enterprises} enterprises in {time.perf_counter() - t0:.1f} s "
          f"(cpus: {os.cpu_count()})", flush=True)
    database = Database()
    hub = Signer(generate())
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            if not args.skip_direct:
                database.reset(rows)
                print(bench_direct(database, messages, hub, verify), flush=True)
            if not args.skip_mqtt:
                for k in (int(x) for x in args.processes.split(",")):
                    database.reset(rows)
                    spy = args.py_spy / f"hub-{k}p.txt" if args.py_spy else None
                    run = bench_mqtt(database, messages, k, Path(tmpdir), spy)
                    print(run.line(k, verify), flush=True)
                if args.hub_cpu is not None:
                    rates = []
                    for k in (int(x) for x in args.processes.split(",")):
                        database.reset(rows)
                        run = bench_mqtt(database, messages, k, Path(tmpdir), None, args.hub_cpu)
                        rates.append((k, run.messages / run.elapsed))
                        print(run.line(k, verify, args.hub_cpu), flush=True)
                    (k0, r0), *rest = rates
                    for k, r in rest:
                        print(f"scaling, each hub process held to {args.hub_cpu:g} core: {k} processes ingest "
                              f"{r / r0:.2f}× what {k0} did ({r / r0 / (k / k0):.0%} of linear)", flush=True)
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
