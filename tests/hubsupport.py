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
