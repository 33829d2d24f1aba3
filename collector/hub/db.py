"""PostgreSQL for the hub: the connection pool, a clear message when no server answers, and the schema
migrations (numbered, applied once, under an advisory lock so two hub processes starting together agree).

The hub holds no state of its own beyond this database: any number of hub processes may share it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

MIGRATION_LOCK = 0x48554231  # pg_advisory_lock key ("HUB1"): one process migrates at a time


class DatabaseUnavailable(RuntimeError):
    """No PostgreSQL answers, or it refuses us; the message names the URL and the fix."""


MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "enterprises, keys, records, incidents", """
CREATE TABLE enterprises (
    id           text PRIMARY KEY,          -- 统一社会信用代码: also the MQTT user name and topic level
    name         text NOT NULL,
    county       text NOT NULL,
    industry     text NOT NULL DEFAULT '',
    backbone     boolean NOT NULL DEFAULT false,   -- 行业骨干企业
    collector_id text NOT NULL,             -- the `enterprise` its collectors write into their records
    enrolled_at  timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX enterprises_collector_id ON enterprises (collector_id);
CREATE TABLE keys (
    fingerprint   text PRIMARY KEY,
    enterprise_id text NOT NULL REFERENCES enterprises (id),
    public_key    text,                     -- base64 raw Ed25519 key; NULL until its key record brings it
    enrolled_at   timestamptz NOT NULL DEFAULT now(),
    introduced_by text,                     -- the old key's fingerprint when a signed rotation enrolled it
    retired_at    timestamptz,
    retired_after bigint                    -- seq of the rotation record: later records need the new key
);
CREATE TABLE chains (                       -- one per collector (enterprise, workshop); a row lock orders ingest
    enterprise_id text NOT NULL REFERENCES enterprises (id),
    workshop      text NOT NULL,
    PRIMARY KEY (enterprise_id, workshop)
);
CREATE TABLE records (
    enterprise_id text NOT NULL,
    workshop      text NOT NULL,
    seq           bigint NOT NULL,
    hash          text NOT NULL,
    prev          text NOT NULL,
    ts            timestamptz NOT NULL,
    key           text NOT NULL,
    sig           text NOT NULL,
    body_kind     text,
    body          jsonb,                    -- when the full record came (monthly summaries), else NULL
    period        text,                     -- body.period.label of a monthly summary
    received_at   timestamptz NOT NULL DEFAULT now(),
    receipt       jsonb NOT NULL,
    PRIMARY KEY (enterprise_id, workshop, seq),
    FOREIGN KEY (enterprise_id, workshop) REFERENCES chains (enterprise_id, workshop)
);
CREATE INDEX records_period ON records (period) WHERE period IS NOT NULL;
CREATE TABLE incidents (
    id            bigserial PRIMARY KEY,
    enterprise_id text NOT NULL REFERENCES enterprises (id),
    workshop      text,
    seq           bigint,
    hash          text,
    reason        text NOT NULL,
    message       jsonb NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX incidents_enterprise ON incidents (enterprise_id, received_at);
"""),
    (2, "live snapshots", """
CREATE TABLE live (                         -- the latest signed live snapshot per collector (not evidence)
    enterprise_id text NOT NULL REFERENCES enterprises (id),
    workshop      text NOT NULL,
    ts            timestamptz NOT NULL,     -- the collector's time of the snapshot
    figures       jsonb NOT NULL,           -- {"D1": {"numerator", "denominator"}, "D2": …} now
    month         jsonb,                    -- {"label": "2026-11", "figures": …}: this month so far
    banner        text,                     -- 含模拟设备… when the collector counts simulated devices
    received_at   timestamptz NOT NULL,
    PRIMARY KEY (enterprise_id, workshop)
);
"""),
]


def explain(url: str, exc: Exception) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"cannot reach PostgreSQL at {redact(url)}: {str(exc).strip().splitlines()[0] if str(exc) else exc}. "
        "Install and start a server (Debian: `apt-get install postgresql`, then `pg_ctlcluster 15 main start`), "
        "create the database (`createdb hub`) and set `database` in hub.yaml (or HUB_DATABASE_URL)")


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable database URL>"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


def connect(url: str, **kwargs: Any) -> psycopg.Connection[dict[str, Any]]:
    """One connection with dict rows; DatabaseUnavailable when it cannot be had."""
    try:
        return psycopg.connect(url, row_factory=dict_row, connect_timeout=5, **kwargs)
    except psycopg.OperationalError as exc:
        raise explain(url, exc) from None


def open_pool(url: str, min_size: int = 1, max_size: int = 4) -> ConnectionPool[Any]:
    """A started pool (dict rows); checks the server answers first, so a bad URL is a message, not a hang."""
    connect(url).close()
    pool: ConnectionPool[Any] = ConnectionPool(url, min_size=min_size, max_size=max_size, open=True,
                                               kwargs={"row_factory": dict_row, "connect_timeout": 5})
    pool.wait(timeout=10)
    return pool


def schema_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT to_regclass('schema_migrations') AS t").fetchone()
    if row is None or (row["t"] if isinstance(row, dict) else row[0]) is None:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) AS v FROM schema_migrations").fetchone()
    assert row is not None
    return int(row["v"] if isinstance(row, dict) else row[0])


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """Apply the migrations this database lacks, each in its own transaction; returns the versions applied."""
    applied: list[int] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        conn.commit()
        with conn.transaction():
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, "
                         "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        current = schema_version(conn)
        for version, name, sql in MIGRATIONS:
            if version <= current:
                continue
            with conn.transaction():
                conn.execute(sql.encode())  # our own constant SQL
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            applied.append(version)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        conn.commit()
    return applied


LATEST = MIGRATIONS[-1][0]


@contextmanager
def migrated(url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A connection to a database at the latest schema (migrating it first)."""
    conn = connect(url)
    try:
        migrate(conn)
        yield conn
    finally:
        conn.close()
