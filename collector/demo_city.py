"""Demo pieces for a city of collectors and one hub (`make demo-city`, tests/test_hub_collectors.py).

A monthly summary is written when a month closes (00:00 on the 4th of the next month), so a demo that should
show a bulletin within a minute needs a month that closed already. `seed_closed_month` writes into a
collector's state store what a collector running through the last hour of the last closed month would have
written: its uptime buckets and, per device, good buckets acknowledged at once for the share of the hour given.
`collector run` then closes that month at its start, as after any restart: the key record and the monthly
summary enter its chain and go to the hub through the outbox. Only ever for demo state directories: the buckets
are made up, and every figure of a demo config (`allow_simulated: true`) says 含模拟设备.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.indicators import periods
from collector.status import StatusStore


def last_closed_month(tz: str, now: float | None = None) -> periods.Period:
    y, m = periods.last_closed_month(time.time() if now is None else now, tz)
    return periods.month(y, m, tz)


def seed_closed_month(state_dir: Path, bucket: float, online: dict[str, float], tz: str = "Asia/Shanghai",
                      hours: float = 1.0, now: float | None = None) -> periods.Period:
    """The collector's uptime through the last `hours` of the last closed month, and each device of `online`
    good (acknowledged 1 s after its bucket) in that share of the buckets, evenly spread, and each identified as
    the bundled simulators identify themselves (so the month is marked 含模拟设备). Returns the month."""
    month = last_closed_month(tz, now)
    b = int(bucket)
    end = int(month.end) // b * b
    buckets = list(range(end - int(hours * 3600) // b * b, end, b))
    good: dict[tuple[str, int], float] = {}
    for device, share in online.items():
        n = round(share * len(buckets))
        step = len(buckets) / n if n else 0.0
        for i in range(n):
            bk = buckets[int(i * step)]
            good[(device, bk)] = bk + 1.0
    state_dir.mkdir(parents=True, exist_ok=True)
    store = StatusStore(state_dir / "status.db", bucket)
    try:
        store.write([], [], good, set(buckets))
        for device in online:  # what the bundled simulators answer to FC 43/14: the month says 含模拟设备
            store.record_identity(device, {"vendor": "shopfloor-collector", "product_code": "SIMULATOR"},
                                  float(buckets[0]))
    finally:
        store.close()
    return month


# ------------------------------------------------------------------------------------------ `make demo-city`

ROOT = Path(__file__).resolve().parent.parent
ACL = ROOT / "deploy" / "hub" / "hub.acl"
SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "demo_city"
PREFIX = "cityhub"

# (credit code, name, county, collector id, workshop, devices: (id, is_cnc, share of the seeded hour online))
CITY = [
    ("91330402MA2B3C4D53", "嘉兴恒达精密机械有限公司", "南湖区", "jx-hengda", "ws-machining",
     [("cnc-01", True, 1.0), ("cnc-02", True, 1.0), ("press-01", True, 0.9)]),
    ("91330402MA2B3C4D53", "嘉兴恒达精密机械有限公司", "南湖区", "jx-hengda", "ws-assembly",
     [("asm-01", True, 1.0), ("lathe-07", False, 0.0)]),
    ("91330411MA2B3C4D67", "秀洲精工科技有限公司", "秀洲区", "jx-xiuzhou", "ws-1",
     [("mill-01", True, 1.0), ("mill-02", True, 0.3), ("comp-01", False, 0.2)]),
    ("91330402MA2B3D5E64", "嘉兴南湖电子有限公司", "南湖区", "jx-nanhu-dz", "smt",
     [("smt-01", False, 1.0), ("aoi-01", False, 1.0), ("reflow-01", True, 1.0)]),
]


def missing_parts(server: str = SERVER) -> list[str]:
    """What `make demo-city` needs and this machine lacks, each with the command that adds it."""
    import shutil

    out = []
    for tool in ("mosquitto", "mosquitto_passwd"):
        if shutil.which(tool) is None:
            out.append(f"{tool} is not installed: `apt-get install mosquitto` (Debian/Ubuntu)")
    try:
        import psycopg
    except ImportError:
        out.append("the hub's PostgreSQL driver is not installed: `pip install 'shopfloor-collector[hub]'`")
        return out
    try:
        psycopg.connect(server, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        out.append(f"no PostgreSQL answers at {server} ({str(exc).strip().splitlines()[0]}): `apt-get install "
                   "postgresql`, then `pg_ctlcluster 15 main start` (or set HUB_DATABASE_URL to a server the user "
                   "may create databases on)")
    if not ACL.exists():
        out.append(f"{ACL} is missing: run `make demo-city` from the source tree")
    return out


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never the same twice in this process (the kernel may repeat one)."""
    import socket

    while True:
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = int(sk.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _collector_config(work: Path, i: int, code: str, name: str, county: str, ent: str, ws: str,
                      devices: list[tuple[str, bool, float]], hub_port: int, own_port: int) -> dict[str, Any]:
    return {
        "site": {"enterprise_id": ent, "enterprise_name": name, "credit_code": code, "county": county,
                 "city": "嘉兴市", "workshop": ws},
        "mqtt": {"url": f"mqtt://127.0.0.1:{own_port}"},
        "http": {"enabled": False},
        "state_dir": str(work / f"collector-{i}"),
        "indicators": {"bucket": 10, "publish_interval": 5, "allow_simulated": True},
        "evidence": {"hub": {"url": f"mqtt://127.0.0.1:{hub_port}", "password_file": str(work / f"pw-{code}"),
                             "public_key": str(work / "hub" / "evidence-key.pub")}},
        "devices": [{"id": d, "protocol": "modbus", "endpoint": f"tcp://127.0.0.1:{free_port()}", "interval": 1.0,
                     "asset": {"is_cnc": cnc}, "simulate": {"states": {"running": 1.0}},
                     "tags": [{"name": "state", "register": 40001, "type": "uint16", "sim": {"kind": "state"}},
                              {"name": "count", "register": 40021, "type": "uint32",
                               "sim": {"kind": "counter", "rate": 2}}]}
                    for d, cnc, _ in devices],
    }


@dataclass
class City:
    """What `prepare` made: the brokers (started), the hub's config, the collectors' configs, the month."""

    work: Path
    db_url: str
    hub_yaml: Path
    configs: list[dict[str, Any]]
    month: periods.Period
    brokers: list[Any] = field(default_factory=list)
    hub: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.hub is not None and self.hub.poll() is None:
            self.hub.terminate()
            self.hub.wait(15)
        for b in self.brokers:
            b.stop()


def prepare(work: Path, server: str, http_port: int) -> City:
    """A fresh work folder and database, the hub's broker (the shipped ACL, one password per enterprise) and a
    plain one for the enterprises' own data, the hub's key and config, the enterprises enrolled, each
    collector's key made and its last closed month seeded."""
    import shutil

    import psycopg
    import yaml

    from collector.cli import main as cli
    from collector.demo_broker import Mosquitto
    from collector.evidence import keys

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DATABASE}"')
    db_url = server.rsplit("/", 1)[0] + f"/{DATABASE}"
    passwords = {"hub": "demo-hub"} | {code: f"demo-{code[-4:]}" for code, *_ in CITY}
    pw_file = work / "passwd"
    for n, (user, pw) in enumerate(passwords.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if n == 0 else []), "-b", str(pw_file), user, pw], check=True,
                       capture_output=True)
        secret = work / f"pw-{user}"
        secret.write_text(pw + "\n")
        secret.chmod(0o600)
    pw_file.chmod(0o600)

    class HubBroker(Mosquitto):
        def config_lines(self) -> list[str]:
            return [line for line in super().config_lines() if not line.startswith("allow_anonymous")] + [
                "allow_anonymous false", f"password_file {pw_file}", f"acl_file {ACL}"]

    hub_broker, own_broker = HubBroker(free_port()), Mosquitto(free_port())
    keys.init(work / "hub")
    hub_yaml = work / "hub.yaml"
    hub_yaml.write_text(yaml.safe_dump({
        "name": "嘉兴市", "hub_id": "jiaxing-demo-hub", "database": db_url, "state_dir": str(work / "hub"),
        "count_simulated": True,  # the demo's machines are simulators: pooled, under the red banner
        "mqtt": {"host": "127.0.0.1", "port": hub_broker.port, "password_file": str(work / "pw-hub"),
                 "client_id": "hub-1", "topic_prefix": PREFIX},
        "http": {"listen": f"127.0.0.1:{http_port}"}}, allow_unicode=True), encoding="utf-8")
    configs = [_collector_config(work, i, *c, hub_port=hub_broker.port, own_port=own_broker.port)
               for i, c in enumerate(CITY, start=1)]
    rows = []
    month = last_closed_month("Asia/Shanghai")
    for (code, name, county, ent, _, devices), data in zip(CITY, configs, strict=True):
        state = Path(str(data["state_dir"]))
        signer, _ = keys.init(state)
        month = seed_closed_month(state, 10, {d: share for d, _, share in devices})
        rows.append(f"{code},{name},{county},通用设备制造业,是,{keys.public_b64(signer.public)},{ent}\n")
    csv = work / "enterprises.csv"
    csv.write_text("统一社会信用代码,企业名称,县（市、区）,行业,行业骨干企业,公钥,采集器企业标识\n" + "".join(rows),
                   encoding="utf-8")
    if cli(["hub", "enroll", "-c", str(hub_yaml), str(csv)]) != 0:
        raise RuntimeError(f"enrolment failed ({csv})")
    city = City(work, db_url, hub_yaml, configs, month)
    for b in (hub_broker, own_broker):
        b.start()
        city.brokers.append(b)
    with open(work / "hub.log", "wb") as log:
        city.hub = subprocess.Popen([sys.executable, "-m", "collector.cli", "hub", "run", "-c", str(hub_yaml)],
                                    stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60  # its persistent session must exist before anything is published
    while "subscribed" not in (work / "hub.log").read_text(encoding="utf-8", errors="replace"):
        if city.hub.poll() is not None or time.monotonic() > deadline:
            city.stop()
            raise RuntimeError(f"the hub did not start: {(work / 'hub.log').read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    print(f"hub broker (ACL, passwords) 127.0.0.1:{hub_broker.port} · the enterprises' broker "
          f"127.0.0.1:{own_broker.port} · database {db_url} · hub log {work / 'hub.log'}")
    return city


def summaries_held(db_url: str, period: str) -> int:
    import psycopg

    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM records WHERE period = %s", (period,)).fetchone()
    return int(row[0]) if row else 0


async def run_city(city: City, duration: float | None, http_port: int) -> int:
    """Simulators and collectors in this process (the same `Collector` that `collector run` runs), until the hub
    holds every collector's summary; then the bulletin, and the page until Ctrl-C (or `duration`)."""
    import asyncio
    import signal

    from collector.app import Collector
    from collector.cli import main as cli
    from collector.config import Settings, parse_config
    from simulators.workshop import Workshop

    collectors: list[Collector] = []
    devices = [d for data in city.configs for d in data["devices"]]
    workshop = Workshop(parse_config({"site": {"enterprise_id": "sim"}, "state_dir": str(city.work / "sim"),
                                      "devices": devices}))
    await workshop.start()
    try:
        for data in city.configs:
            c = Collector(parse_config(data), Settings())
            await c.start()  # closes the seeded month: its key record and summary go to the hub's broker
            collectors.append(c)
        print(f"{len(collectors)} collectors of 3 enterprises in 2 counties running; {city.month.label} closed at "
              "their start")
        t0 = time.monotonic()
        while await asyncio.to_thread(summaries_held, city.db_url, city.month.label) < len(collectors):
            if time.monotonic() - t0 > 60 or (city.hub is not None and city.hub.poll() is not None):
                print(f"the hub did not receive every summary within 60 s; see {city.work / 'hub.log'}",
                      file=sys.stderr)
                return 1
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # the receipts' way back
        verified = sum(c.hub_receipts.counts["accepted"] for c in collectors if c.hub_receipts)
        print(f"the hub holds every collector's {city.month.label} summary after {time.monotonic() - t0:.1f} s; "
              f"the collectors verified and kept {verified} of its receipts")
        cli(["hub", "bulletin", "-c", str(city.hub_yaml), "--period", city.month.label, "--format", "csv"])
        print(f"bulletin page: http://127.0.0.1:{http_port}/bulletin?period={city.month.label}"
              + ("" if duration is not None else "  (Ctrl-C to stop)"))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await asyncio.wait_for(stop.wait(), duration)
        except TimeoutError:
            pass
        return 0
    finally:
        for c in collectors:
            await c.stop()
        await workshop.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m collector.demo_city [--duration S] [--port 8322]` (`make demo-city`)."""
    import argparse
    import asyncio
    import logging

    p = argparse.ArgumentParser(prog="demo-city", description="three enterprises' collectors in two counties "
                                "feed one hub; the bulletin fills within a minute")
    p.add_argument("--duration", type=float, help="seconds to keep running after the bulletin (default: until "
                   "Ctrl-C)")
    p.add_argument("--port", type=int, default=8322, help="the hub's bulletin page (default 8322)")
    p.add_argument("--workdir", default="state/demo-city", help="its state, wiped at each start")
    args = p.parse_args(argv)
    server = os.environ.get("HUB_DATABASE_URL", SERVER)
    missing = missing_parts(server)
    if missing:
        print("make demo-city needs:\n" + "\n".join(f"  - {m}" for m in missing), file=sys.stderr)
        return 1
    logging.basicConfig(level=os.environ.get("DEMO_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s %(message)s")
    city = prepare(Path(args.workdir).resolve(), server, args.port)
    try:
        return asyncio.run(run_city(city, args.duration, args.port))
    finally:
        city.stop()


if __name__ == "__main__":
    raise SystemExit(main())
