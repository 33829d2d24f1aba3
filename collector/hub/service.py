"""`collector hub run`: ingest from the broker's shared subscription, store, answer with receipts.

Each hub process has its own client id and a persistent MQTT 5 session, and subscribes to
`$share/{group}/{prefix}/+/evidence/#` at QoS 1: the broker hands each message to one process of the group. A
message is acknowledged (manual PUBACK) only after its transaction committed and its receipt was published, so a
process killed at any moment loses nothing: what it had not acknowledged is redelivered (to its session when it
comes back, or, once the broker drops it, to the others), and a redelivered record is a duplicate, stored once.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from collector.config.errors import ConfigError
from collector.evidence.keys import Signer
from collector.hub.config import HubConfig
from collector.hub.ingest import Outcome, ingest_batch, iso_now
from collector.hub.mqtt5 import Message, Session, Settings
from collector.hub.receipts import make_receipt

log = logging.getLogger("collector.hub")


def evidence_filter(cfg: HubConfig) -> str:
    return f"$share/{cfg.mqtt.group}/{cfg.mqtt.topic_prefix}/+/evidence/#"


def receipt_topic(prefix: str, enterprise: str) -> str:
    return f"{prefix}/{enterprise}/receipt"


def sender_of(prefix: str, topic: str) -> str | None:
    """The enterprise level of `{prefix}/{enterprise}/evidence[/…]` (the broker's ACL made it the sender's user
    name). Anything below `evidence` is free: an enterprise broker's bridge maps its collectors' topics there."""
    if not topic.startswith(prefix + "/"):
        return None
    levels = topic[len(prefix) + 1:].split("/")
    return levels[0] if len(levels) >= 2 and levels[0] and levels[1] == "evidence" else None


def _tls(cfg: HubConfig) -> ssl.SSLContext | None:
    """TLS to the broker when mqtt.ca_file is set: the broker's certificate must chain to it and name the host."""
    if cfg.mqtt.ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(cfg.mqtt.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("hub.yaml", [f"mqtt.ca_file: cannot use {cfg.mqtt.ca_file} as a CA certificate "
                                       f"({getattr(exc, 'strerror', None) or exc}); give the PEM file of the "
                                       "CA that signed the broker's certificate"]) from None


@dataclass
class Counters:
    received: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    db_errors: int = 0


class HubService:
    def __init__(self, cfg: HubConfig, pool: ConnectionPool[Any], signer: Signer) -> None:
        self.cfg, self.pool, self.signer = cfg, pool, signer
        self.counters = Counters()
        self.stopping = threading.Event()
        self.session = Session(Settings(
            host=cfg.mqtt.host, port=cfg.mqtt.port, client_id=cfg.mqtt.client_id, username=cfg.mqtt.username,
            password=cfg.mqtt_password(), topic_filter=evidence_filter(cfg), keepalive=cfg.mqtt.keepalive_s,
            session_expiry=cfg.mqtt.session_expiry_s,
            # at most a few batches unacknowledged in this process: bounded memory, and the broker gives the rest
            # of the shared subscription's load to the other processes instead of queueing it here
            receive_maximum=min(65535, max(100, 4 * cfg.batch)), ssl_context=_tls(cfg)))
        self.worker = threading.Thread(target=self._work, name="hub-ingest", daemon=True)

    # --- the ingest worker
    def _work(self) -> None:
        while not self.stopping.is_set():
            batch = self.session.inbox.take(self.cfg.batch, timeout=0.2)
            if not batch:
                continue
            while not self.stopping.is_set():
                try:
                    self._process(batch)
                    break
                except Exception:  # a bug, not bad input: say so loudly, keep the batch, try again
                    log.exception("ingest failed on a batch of %d; retrying in 5 s", len(batch))
                    self.stopping.wait(5.0)

    def _process(self, batch: list[Message]) -> None:
        prefix = self.cfg.mqtt.topic_prefix
        items: list[tuple[str, Any]] = []
        for msg in batch:
            sender = sender_of(prefix, msg.topic)
            if sender is None:
                continue  # the subscription only matches our topics; nothing to answer
            try:
                items.append((sender, json.loads(msg.payload)))
            except ValueError:
                items.append((sender, None))
        while not self.stopping.is_set():
            try:
                outcomes = self._store(items)
                break
            except psycopg.OperationalError as exc:  # the database went away: keep the batch unacknowledged
                self.counters.db_errors += 1
                log.error("database unavailable, retrying the batch of %d in 2 s: %s", len(items), exc)
                self.stopping.wait(2.0)
        else:
            return  # stopping: unacknowledged messages are redelivered by the broker
        receipts: list[tuple[str, bytes]] = []
        for (sender, _), out in zip(items, outcomes, strict=True):
            self.counters.by_status[out.status] = self.counters.by_status.get(out.status, 0) + 1
            if out.status in ("incident", "refused", "live_refused"):
                log.warning("%s from %s (%s seq %s): %s", out.status, sender, out.receipt.get("workshop"),
                            out.receipt.get("seq"), out.reason)
            if not out.receipt:
                continue  # a live snapshot: no receipt
            receipts.append((receipt_topic(prefix, sender), json.dumps(
                out.receipt, ensure_ascii=False, sort_keys=True).encode()))
        # the receipts first, then the acknowledgements, in one write: the broker holds a message until its
        # PUBACK, so a process that dies before this line loses nothing (the message comes again, a duplicate)
        self.session.send(receipts, batch)
        self.counters.received += len(batch)
        self.counters.batches += 1

    def _store(self, items: list[tuple[str, Any]]) -> list[Outcome]:
        """The batch in one transaction; when the database refuses it (a value PostgreSQL cannot hold, such as a
        NUL character), message by message, and the one it refuses alone is refused, so it cannot block the rest."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                return ingest_batch(conn, items, self.signer, self.cfg.hub_id)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            if len(items) == 1:
                sender, msg = items[0]
                m = msg if isinstance(msg, dict) else {}
                reason = f"the database refused it ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                return [Outcome("refused", reason, make_receipt(
                    self.signer, hub=self.cfg.hub_id, enterprise=sender, workshop=None, seq=None,
                    record_hash=m.get("hash") if isinstance(m.get("hash"), str) else None, status="refused",
                    reason=reason, received_at=iso_now()))]
        return [out for item in items for out in self._store([item])]

    # --- life cycle
    def start(self) -> None:
        self.worker.start()
        self.session.start()

    def stop(self) -> None:
        self.stopping.set()
        self.worker.join(10)
        self.session.stop()

    def wait(self, stop: threading.Event, report_every: float = 60.0) -> None:
        last = time.monotonic()
        while not stop.wait(1.0):
            if time.monotonic() - last >= report_every:
                last = time.monotonic()
                log.info("ingested %d message(s) in %d batch(es): %s", self.counters.received,
                         self.counters.batches, self.counters.by_status)
