"""Test helpers for the hub: a fresh PostgreSQL database per test, and enterprises' signed chains.

The database is made on the machine's server (127.0.0.1:5432, trust auth, user postgres) and dropped after the
test; where no server answers the test is skipped with a message naming the Debian package."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector.evidence.canonical import GENESIS, canonical
from collector.evidence.keys import Signer, generate, public_b64
from collector.evidence.records import anchor_message, key_body, sign_record

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def _admin() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(SERVER, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL answers on 127.0.0.1:5432 ({str(exc).strip().splitlines()[0]}): install "
                    "Debian's `postgresql` package and start it (`pg_ctlcluster 15 main start`)")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a database made for this test alone."""
    name = f"hubtest_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def figures(d1: tuple[int, int], d2: tuple[int, int]) -> dict[str, Any]:
    return {"D1": {"numerator": d1[0], "denominator": d1[1], "target": 0.7},
            "D2": {"numerator": d2[0], "denominator": d2[1], "target": 0.55}}


def month_body(enterprise: str, workshop: str, period: str, d1: tuple[int, int], d2: tuple[int, int],
               **extra: Any) -> dict[str, Any]:
    y, m = int(period[:4]), int(period[5:])
    ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
    return {"kind": "monthly_summary", "defset": "v1", "enterprise": enterprise, "collector_workshop": workshop,
            "period": {"kind": "month", "label": period, "start": f"{period}-01T00:00:00+08:00",
                       "end": f"{ny:04d}-{nm:02d}-01T00:00:00+08:00",
                       "closes": f"{ny:04d}-{nm:02d}-04T00:00:00+08:00", "timezone": "Asia/Shanghai"},
            "status": "closed", "figures": figures(d1, d2), **extra}


@dataclass
class Collector:
    """One collector's signed chain, built through the evidence API as a running collector would."""

    enterprise: str
    workshop: str
    signer: Signer = field(default_factory=lambda: Signer(generate()))
    records: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.append(key_body(self.signer.public, None), "2026-09-01T08:00:00+08:00")

    @property
    def public_key(self) -> str:
        return public_b64(self.signer.public)

    def append(self, body: dict[str, Any], ts: str, signer: Signer | None = None) -> dict[str, Any]:
        prev = self.records[-1]["hash"] if self.records else GENESIS
        rec = sign_record(signer or self.signer, enterprise=self.enterprise, workshop=self.workshop,
                          seq=len(self.records) + 1, ts=ts, prev=prev, body=body)
        self.records.append(rec)
        return rec

    def close_month(self, period: str, d1: tuple[int, int], d2: tuple[int, int]) -> dict[str, Any]:
        body = month_body(self.enterprise, self.workshop, period, d1, d2)
        return self.append(body, body["period"]["closes"].replace("T00:00:00", "T00:00:41"))

    def anchor(self, rec: dict[str, Any] | None = None, reason: str = "head") -> dict[str, Any]:
        return anchor_message(rec or self.records[-1], reason, "2026-12-04T00:00:41Z")

    def write_chain(self, path: Path) -> Path:
        path.write_bytes(b"".join(canonical(r) + b"\n" for r in self.records))
        return path


def payload(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


# ------------------------------------------------------------------ a hub broker, hub processes, an enterprise

ROOT = Path(__file__).resolve().parent.parent
ACL = ROOT / "deploy" / "hub" / "hub.acl"


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file made by mosquitto's own tool."""
    import subprocess

    for i, (user, pw) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(path), user, pw], check=True,
                       capture_output=True)
    path.chmod(0o600)
    return path


def acl_broker(tmp_path: Path, users: dict[str, str], *, persistent: bool = True,
               extra: tuple[str, ...] = ()) -> Any:
    """mosquitto with the shipped ACL and a password file for `users` (user → password), started; persistent
    (in tmp_path) unless asked otherwise."""
    from tests.support.broker import MosquittoProcess, free_port

    if not MosquittoProcess.available():
        pytest.fail("mosquitto is not installed: `apt-get install mosquitto` (.ci/run does it)")
    broker = MosquittoProcess(free_port(), extra=["allow_anonymous false",
                                                  f"password_file {password_file(tmp_path / 'passwd', users)}",
                                                  f"acl_file {ACL}", *extra],
                              persistence_dir=tmp_path if persistent else None)
    broker.start()
    return broker


def secret_file(path: Path, secret: str) -> Path:
    """A password file as the hub reads it: the secret alone, mode 0600."""
    path.write_text(secret)
    path.chmod(0o600)
    return path


def hub_yaml(path: Path, *, db_url: str, port: int, state_dir: Path, client_id: str, pw_file: Path,
             http_port: int | None, count_simulated: bool = False) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({
        "database": db_url, "state_dir": str(state_dir), "hub_id": "test-hub", "count_simulated": count_simulated,
        "mqtt": {"host": "127.0.0.1", "port": port, "username": "hub", "password_file": str(pw_file),
                 "client_id": client_id, "keepalive_s": 5},
        "http": {"listen": f"127.0.0.1:{http_port}" if http_port else None}}, allow_unicode=True))
    return path


class HubProcess:
    """`collector hub run` as its own process (the real command line), so a test can kill it."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: Any = None

    def start(self, timeout: float = 30.0) -> None:
        import os
        import subprocess
        import sys
        import time

        offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen([sys.executable, "-m", "collector.cli", "hub", "run", "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"),  # noqa: SIM115
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while "subscribed" not in self.log.read_text(encoding="utf-8", errors="replace")[offset:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hub did not start: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except Exception:
                self.proc.kill()
                self.proc.wait(5)


class Enterprise:
    """An enterprise's MQTT client (MQTT 5, its own credentials): publishes evidence, collects its receipts."""

    def __init__(self, port: int, user: str, password: str, prefix: str = "cityhub") -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.user, self.prefix = user, prefix
        self.receipts: list[dict[str, Any]] = []
        self.topics: list[str] = []  # of every message received
        self.acks: dict[int, Any] = {}  # mid -> PUBACK reason code
        self.lock = threading.Lock()
        ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ent-{user}", protocol=mqtt.MQTTv5)
        c.username_pw_set(user, password)
        c.max_inflight_messages_set(1000)
        c.on_connect = lambda cl, u, f, rc, p=None: (cl.subscribe(f"{prefix}/{user}/receipt", qos=1), ready.set())
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        self.subacks: dict[int, list[Any]] = {}
        c.on_subscribe = self._on_subscribe
        c.connect("127.0.0.1", port)
        c.loop_start()
        if not ready.wait(10):
            raise RuntimeError(f"{user} could not connect")
        self.client = c
        import time
        time.sleep(0.2)

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        with self.lock:
            self.topics.append(msg.topic)
            if msg.topic == f"{self.prefix}/{self.user}/receipt":
                self.receipts.append(json.loads(msg.payload))

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, props: Any = None) -> None:
        with self.lock:
            self.acks[mid] = rc

    def _on_subscribe(self, c: Any, u: Any, mid: int, codes: list[Any], props: Any = None) -> None:
        with self.lock:
            self.subacks[mid] = list(codes)

    def subscribe(self, topic: str) -> int:
        return int(self.client.subscribe(topic, qos=1)[1])

    def publish(self, msg: dict[str, Any], as_enterprise: str | None = None, suffix: str = "") -> int:
        info = self.client.publish(f"{self.prefix}/{as_enterprise or self.user}/evidence{suffix}", payload(msg),
                                   qos=1)
        return int(info.mid)

    def receipts_for(self, workshop: str, seq: int) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.receipts if r.get("workshop") == workshop and r.get("seq") == seq]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
