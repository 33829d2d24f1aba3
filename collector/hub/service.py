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
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from psycopg_pool import ConnectionPool

from collector.evidence.keys import Signer
from collector.hub.config import HubConfig
from collector.hub.ingest import Outcome, ingest_batch, iso_now
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
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.stopping = threading.Event()
        self.connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.mqtt.client_id, protocol=mqtt.MQTTv5,
                        manual_ack=True)
        pw = cfg.mqtt_password()
        c.username_pw_set(cfg.mqtt.username, pw)
        if cfg.mqtt.ca_file is not None:
            c.tls_set(ca_certs=str(cfg.mqtt.ca_file))
        c.reconnect_delay_set(1, 10)
        c.max_inflight_messages_set(100)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c
        self.worker = threading.Thread(target=self._work, name="hub-ingest", daemon=True)

    # --- MQTT (paho's thread)
    def _on_connect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.error("broker %s:%s refused the hub: %s (check mqtt.username and the password)",
                      self.cfg.mqtt.host, self.cfg.mqtt.port, rc)
            return
        c.subscribe(evidence_filter(self.cfg), qos=1)
        self.connected.set()
        log.info("connected to %s:%s, subscribed %s (session present: %s)", self.cfg.mqtt.host,
                 self.cfg.mqtt.port, evidence_filter(self.cfg), getattr(flags, "session_present", None))

    def _on_disconnect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connected.clear()
        if not self.stopping.is_set():
            log.warning("broker connection lost (%s); reconnecting", rc)

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put(msg)

    # --- the ingest worker
    def _work(self) -> None:
        while not self.stopping.is_set():
            try:
                first = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < self.cfg.batch:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            while not self.stopping.is_set():
                try:
                    self._process(batch)
                    break
                except Exception:  # a bug, not bad input: say so loudly, keep the batch, try again
                    log.exception("ingest failed on a batch of %d; retrying in 5 s", len(batch))
                    self.stopping.wait(5.0)

    def _process(self, batch: list[mqtt.MQTTMessage]) -> None:
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
        for (sender, _), out in zip(items, outcomes, strict=True):
            self.counters.by_status[out.status] = self.counters.by_status.get(out.status, 0) + 1
            if out.status in ("incident", "refused"):
                log.warning("%s from %s (%s seq %s): %s", out.status, sender, out.receipt.get("workshop"),
                            out.receipt.get("seq"), out.reason)
            self.client.publish(receipt_topic(prefix, sender), json.dumps(out.receipt, ensure_ascii=False,
                                                                          sort_keys=True), qos=1)
        for msg in batch:
            self.client.ack(msg.mid, msg.qos)
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
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.mqtt.session_expiry_s
        # at most a few batches unacknowledged in this process: bounded memory, and the broker gives the rest of
        # the shared subscription's load to the other processes instead of queueing it here
        props.ReceiveMaximum = max(100, 4 * self.cfg.batch)
        self.worker.start()
        self.client.connect_async(self.cfg.mqtt.host, self.cfg.mqtt.port, keepalive=self.cfg.mqtt.keepalive_s,
                                  clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        self.stopping.set()
        self.worker.join(10)
        self.client.disconnect()
        self.client.loop_stop()

    def wait(self, stop: threading.Event, report_every: float = 60.0) -> None:
        last = time.monotonic()
        while not stop.wait(1.0):
            if time.monotonic() - last >= report_every:
                last = time.monotonic()
                log.info("ingested %d message(s) in %d batch(es): %s", self.counters.received,
                         self.counters.batches, self.counters.by_status)
