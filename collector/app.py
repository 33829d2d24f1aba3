"""The running collector: wires engine → pipeline → sinks, the status tracker and the indicator publisher.

`collector run`, `collector demo` and the integration tests all use this one class, so what the tests see is
what a gateway runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.config import CollectorConfig, Settings, effective_state_dir
from collector.delivery import Sender
from collector.evidence import anchors, keys
from collector.evidence.hub_anchors import HubReceipts
from collector.failures import RepeatedFailure
from collector.indicators.identity import simulated_devices, simulator_reason
from collector.indicators.live import live_snapshot
from collector.indicators.register import Asset, load_register
from collector.model import Batch, DeviceState, Row
from collector.outbox import Outbox
from collector.pipeline import Pipeline
from collector.runtime import loop_name
from collector.sink_setup import build_sinks
from collector.sinks.base import FollowsDevices, Sink
from collector.sinks.mqtt import iso
from collector.status import SHUTDOWN_REASON, StatusStore, StatusTracker, changed_keys
from collector.tasks import ThreadCalls, cancel_and_wait

if TYPE_CHECKING:
    from collector.writes.service import WriteService

log = logging.getLogger(__name__)


GATEWAY_STATUS_INTERVAL = 10.0  # seconds between retained gateway statuses (outbox figures)


class _Failures(RepeatedFailure):
    """A periodic job's failures, logged by this module (collector/failures.py)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, "periodic", log)


class Collector:
    def __init__(self, cfg: CollectorConfig, settings: Settings | None = None) -> None:
        from collector.engine import Engine  # imports adapters.base: keep `collector check` light

        self.cfg = cfg
        self.settings = settings or Settings()
        self.state_dir: Path = effective_state_dir(cfg, self.settings)
        self.store = StatusStore(self.state_dir / "status.db", cfg.indicators.bucket)
        self.status = StatusTracker(self.store, [d.id for d in cfg.devices])
        self.register_warnings: list[str] = []
        self.register: list[Asset] = load_register(cfg, self.state_dir, self.register_warnings)
        for w in self.register_warnings:
            log.warning("event=register_warning %s", w)
        # the chain's signing key: created at the first start, logged as its fingerprint only
        self.signer, created = keys.init(self.state_dir)
        self._key_mtime = (self.state_dir / keys.PRIVATE_FILE).stat().st_mtime_ns
        log.info("event=evidence_key fingerprint=%s created=%s", keys.show_fingerprint(self.signer.fingerprint),
                 str(created).lower())
        self._reader: StatusStore | None = None  # a second connection for period figures, used off the loop
        self.threads = ThreadCalls()  # what runs off the loop on the readers: stop() waits for it before closing
        self._periods: dict[str, Any] | None = None
        built = build_sinks(cfg, self.settings, self.state_dir)
        self.mqtt, self.control, self.sinks = built.mqtt, built.control, built.sinks
        self.hub = built.hub
        self.hub_receipts: HubReceipts | None = None
        if self.hub is not None and cfg.evidence.hub is not None:  # the hub's receipts, checked and kept
            from collector.indicators.monthly import chain_path

            self.hub_receipts = HubReceipts(self.state_dir, chain_path(self.state_dir),
                                            keys.load_public(cfg.evidence.hub.public_key), cfg.site.workshop)
            self.hub.on_receipt = self.hub_receipts.take
        o = cfg.outbox
        self.outbox = Outbox(self.state_dir / "outbox.db", [s.name for s in self.sinks], max_bytes=o.max_bytes,
                             max_age=o.max_age, fsync=o.fsync, pending_max_bytes=o.memory_max_bytes)
        self.senders = []
        for sink in self.sinks:
            sink.on_ack = self._ack_handler(sink)
            self.outbox.held[sink.name] = sink.in_flight
            self.senders.append(Sender(self.outbox, sink.name, sink,
                                       o.live_share if sink.live_share is None else sink.live_share))
        # each batch is encoded once per data sink; anchors go to the sinks that carry them
        self._encoders = [(s.name, s.encode) for s in self.sinks if s.feeds == "data"]
        self._anchor_sinks = [s.name for s in self.sinks if s.feeds in ("anchors", "chain")]
        self._chain_sinks = [s.name for s in self.sinks if s.feeds == "chain"]  # every record in full too
        self.pipeline = Pipeline(self.status, cfg.indicators.stale_after, next_seq=self.outbox.next_seq)
        self.pipeline.add_sink(self._to_outbox)
        self.control.gateway_info = self.gateway_info
        self.status.listeners.append(self._status_changed)
        for sink in self.sinks:
            if isinstance(sink, FollowsDevices):  # Sparkplug: DBIRTH/DDEATH follow the device states
                sink.latest = self.pipeline.latest_for
                self.status.listeners.append(sink.status_changed)
        self.mqtt.on_connect_hooks.append(self._republish)
        from adapters.base import AdapterContext

        # What the adapters learn (split plans, shared lines, timeout streaks) is the running collector's: it
        # outlives a reload and each device's reconnects, and a new collector starts clean.
        self.adapter_context = AdapterContext()
        self.engine = Engine(self._on_readings, self.status.set_state, self._identified, self.adapter_context)
        from collector.states.service import StatesService  # machine states, 稼动率, OEE (docs/states.md)

        self.states = StatesService(self)
        self.writes = self._make_writes()
        self._tasks: list[asyncio.Task[None]] = []
        self.started = 0.0
        self.reload_counts = {"applied": 0, "rejected": 0}
        self._reload_lock = asyncio.Lock()  # one apply at a time (`reload`)
        self._reload_file_lock = asyncio.Lock()  # file reloads apply in the order they were asked for
        self.stopping = False  # set by `stop()`: a reload read meanwhile is not applied
        self._first_snapshot_out = False  # no snapshot before the first poll round is in (_indicators_loop)

    # -- wiring

    def _make_writes(self) -> WriteService:
        """Write-back (collector/writes/, docs/writes.md): requests on `{root}/devices/+/write` and HTTP."""
        from collector.writes.audit import AUDIT_FILE, AuditLog
        from collector.writes.service import WriteService

        def adapter_of(device: str) -> Any:
            task = self.engine.tasks.get(device)
            return task.adapter if task is not None else None

        def state_of(device: str) -> DeviceState | None:
            st = self.status.devices.get(device)
            return st.state if st is not None else None

        service = WriteService(lambda: self.cfg, adapter_of, state_of, AuditLog(self.state_dir / AUDIT_FILE),
                               lambda topic, payload: self.control.publish_json(topic, payload, qos=1))
        self.mqtt.subscriptions.append((service.request_filter, 1))
        self.mqtt.on_message_hooks.append(service.on_mqtt)
        for sink in self.sinks:
            if hasattr(sink, "on_device_command"):  # Sparkplug: DCMD metrics are write requests too
                sink.on_device_command = service.on_command
        return service

    @property
    def sink(self) -> Sink:
        """The MQTT data sink (JSON or Sparkplug): the link that /healthz and the status's `sink` report."""
        return self.sinks[0]

    def _to_outbox(self, batch: Batch) -> None:
        """Encode once per data sink and queue durably; the senders deliver it."""
        payloads = {name: encode(batch) for name, encode in self._encoders}
        self.outbox.append(batch.device, batch.seq, batch.ts, batch.good_ts, len(batch.readings), payloads)

    def _ack_handler(self, sink: Sink) -> Callable[[Row], None]:
        """What a sink's acknowledgement does: the row is deleted at the next flush; a good batch a sink that
        proves delivery acknowledged is 联网率 evidence; a receipt is recorded where the sink gives one."""
        outbox_ack, name, proves = self.outbox.ack, sink.name, sink.proves_delivery
        delivered, receipt = self.status.delivered, sink.receipt

        def acked(row: Row) -> None:
            outbox_ack(name, row)
            if proves and row.good_ts is not None:
                delivered(row.device, row.good_ts)
            where = receipt(row)
            if where is not None:  # the broker holds a copy of the chain's head: the receipt the report shows
                anchors.acked(self.state_dir / anchors.ANCHOR_FILE, anchors.anchor_id(row.seq, row.created), where)
        return acked

    def _reload_key(self) -> None:
        """After `collector keys rotate` the state directory holds a new key: sign with it from now on."""
        path = self.state_dir / keys.PRIVATE_FILE
        mtime = path.stat().st_mtime_ns
        if mtime != self._key_mtime:
            signer = keys.load(self.state_dir)
            if signer is not None:
                self.signer, self._key_mtime = signer, mtime
                log.info("event=evidence_key_changed fingerprint=%s", keys.show_fingerprint(signer.fingerprint))

    def feed_chain(self, now: float | None = None) -> int:
        """Queue every chain record the chain sinks (the hub) have not been given yet, in full and in order
        (the key record first: a hub that enrolled the key by fingerprint learns it from there); returns how
        many. What was queued is remembered in `{state_dir}/chain-queued.json` (seq and hash of the last one)."""
        if not self._chain_sinks:
            return 0
        from collector.indicators import chain
        from collector.indicators.monthly import chain_path
        from collector.sinks.hub import RECORD_DEVICE

        now = time.time() if now is None else now
        mark = self.state_dir / "chain-queued.json"
        try:
            last = json.loads(mark.read_text(encoding="utf-8"))
            done, done_hash = int(last.get("seq", 0)), last.get("hash")
        except (OSError, ValueError, AttributeError):
            done, done_hash = 0, None
        records = chain.read(chain_path(self.state_dir))
        if done and not any(r["seq"] == done and r["hash"] == done_hash for r in records):
            log.warning("event=chain_replaced last_queued_seq=%s: the chain no longer holds the last record given "
                        "to the hub; giving it the whole chain again (the hub will say what it holds)", done)
            done = 0
        new = [r for r in records if int(r["seq"]) > done]
        for rec in new:
            payload = json.dumps(rec, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
            self.outbox.append(RECORD_DEVICE, int(rec["seq"]), now, None, 1,
                               {name: payload for name in self._chain_sinks})
        if new:
            self.outbox.flush()
            mark.write_text(json.dumps({"seq": new[-1]["seq"], "hash": new[-1]["hash"]}), encoding="utf-8")
            log.info("event=chain_records_queued sinks=%s seqs=%s-%s", ",".join(self._chain_sinks),
                     new[0]["seq"], new[-1]["seq"])
        return len(new)

    def anchor(self, now: float | None = None) -> str | None:
        """Queue the chain's signed head in the outbox when it changed or a day passed; returns the reason."""
        from collector.indicators import chain
        from collector.indicators.monthly import chain_path

        now = time.time() if now is None else now
        log_path = self.state_dir / anchors.ANCHOR_FILE
        head = chain.head(chain_path(self.state_dir))
        reason = anchors.due(head, log_path, now, self.cfg.evidence.anchor_interval)
        if head is None or reason is None:
            return None
        aid, payload = anchors.queue(head, reason, self.cfg.evidence_topic, log_path, now)
        self.outbox.append("evidence", int(head["seq"]), now, None, 1,
                           {name: payload for name in self._anchor_sinks})
        self.outbox.flush()
        log.info("event=anchor_queued seq=%s hash=%s reason=%s topic=%s id=%s", head["seq"], head["hash"][:12],
                 reason, self.cfg.evidence_topic, aid)
        return reason

    def hub_status(self) -> dict[str, Any] | None:
        """The hub link (`evidence.hub`): connected, in flight, refused by its broker; the receipts by outcome."""
        if self.hub is None:
            return None
        return {**self.hub.stats(), "receipts": dict(self.hub_receipts.counts) if self.hub_receipts else {}}

    def gateway_info(self) -> dict[str, Any]:
        """What the retained gateway status carries beside `online` (docs/mqtt.md)."""
        states: dict[str, int] = {}
        for st in self.status.devices.values():
            states[str(st.state)] = states.get(str(st.state), 0) + 1
        return {"since": iso(self.started) if self.started else None, "devices": states,
                "outbox": self.outbox_stats()}

    def _on_readings(self, device: str, readings: list[Any]) -> None:
        self.pipeline.submit(device, readings)

    def _identified(self, device: str, identity: dict[str, Any]) -> None:
        """An adapter told what identifies its device: kept in status.db; a change is logged as a warning (and
        is a warning in the month's report)."""
        before = self.status.identified(device, identity)
        if before is not None:
            changed = changed_keys(before.values, identity)
            log.warning("event=identity_changed device=%s keys=%s before=%s after=%s", device, ",".join(changed),
                        {k: before.values[k] for k in changed}, {k: identity[k] for k in changed})
        reason = simulator_reason(identity)
        if reason is not None:
            log.info("event=simulated_device device=%s evidence=%r counted=%s", device, reason,
                     self.cfg.indicators.allow_simulated)

    def _status_changed(self, st: Any) -> None:
        self.control.publish_status(st.to_dict())  # the log line is StatusTracker.set_state's

    def _republish(self) -> None:
        """On every (re)connect: every device's retained status and the indicator snapshot (once the first is
        out: before the first poll round it would say no device is networked)."""
        for st in self.status.devices.values():
            self.control.publish_status(st.to_dict())
        if self._first_snapshot_out:
            self.control.publish_indicators(self.indicators())

    def indicators(self, now: float | None = None) -> dict[str, Any]:
        snap = live_snapshot(self.register, self.status.devices, self.cfg.indicators, self.cfg.site, now,
                             simulated_devices(self.status.identities))
        if self._periods is not None:
            snap["periods"] = self._periods  # today and this month so far (docs/mqtt.md)
        return snap

    async def refresh_periods(self, now: float | None = None) -> None:
        """Today's and this month's figures, computed in a worker thread on a second SQLite connection."""
        from collector.indicators.monthly import period_summaries

        if self._reader is None:
            self._reader = StatusStore(self.state_dir / "status.db", self.cfg.indicators.bucket)
        reader = self._reader
        self._periods = await self.threads.run(period_summaries, self.cfg, self.register, reader,
                                               time.time() if now is None else now)

    def close_months(self, now: float | None = None) -> list[dict[str, Any]]:
        """Chain and publish (retained, `{root}/indicators/monthly/YYYY-MM`) every month that closed since the
        last check, then anchor the chain's head when due; runs once a minute and at start. Returns the new chain
        records."""
        from collector.indicators.monthly import close_due_months

        self.status.flush()  # the buckets acknowledged up to now belong in the summary
        now = time.time() if now is None else now
        self._reload_key()
        records = close_due_months(self.cfg, self.store, self.state_dir, now, self.signer, self.register_warnings)
        for rec in records:
            self.control.publish_monthly(rec)
        self.feed_chain(now)
        self.anchor(now)
        return records

    # -- life cycle

    async def start(self) -> None:
        self.started = time.time()
        self.status.flush()
        await self.mqtt.start(wait=1.0)  # the outbox keeps what the devices read while no broker answers
        if self.hub is not None:
            await self.hub.start()  # its own connection; a dead hub only fills the hub queue
        for dev in self.cfg.devices:
            self.engine.start_device(dev)
        self._tasks = [
            asyncio.create_task(self._every(1.0, self.status.flush), name="status-flush"),
            asyncio.create_task(self._every(self.cfg.outbox.commit_interval, self.outbox.flush), name="outbox-flush"),
            *(asyncio.create_task(sender.run(), name=f"sender-{sender.sink}") for sender in self.senders),
            asyncio.create_task(self._every(GATEWAY_STATUS_INTERVAL, self._publish_gateway), name="gateway-status"),
            asyncio.create_task(self._indicators_loop(), name="indicators"),
            asyncio.create_task(self._every(60.0, self.close_months), name="month-close"),
            asyncio.create_task(self._every_async(self.cfg.indicators.publish_interval, self.refresh_periods),
                                name="period-figures"),
            *self.states.tasks(),
        ]
        hub_cfg = self.cfg.evidence.hub
        if self.hub is not None and hub_cfg is not None and hub_cfg.live_interval > 0:
            self._tasks.append(asyncio.create_task(self._every(hub_cfg.live_interval, self.send_live),
                                                   name="hub-live"))
        try:
            self.close_months()
        except Exception:
            log.exception("event=month_close_failed")
        log.info("event=started devices=%d assets=%d broker=%s:%d loop=%s", len(self.cfg.devices),
                 len(self.register), self.mqtt.s.host, self.mqtt.s.port, loop_name())

    def _publish_gateway(self) -> None:
        if self.mqtt.connected:
            self.control.publish_gateway()

    def _publish_indicators(self) -> None:
        self.control.publish_indicators(self.indicators())

    def send_live(self) -> bool:
        """The signed live snapshot to the hub (`evidence.hub.live_interval`), once the first poll round is in (an
        earlier one would tell the county that no device is on line). False when it was not sent."""
        from collector.evidence.live import live_message

        if self.hub is None or not self._first_snapshot_out:
            return False
        return self.hub.publish_live(live_message(self.signer, self.indicators(), self.cfg.site.workshop))

    def _first_round_in(self) -> bool:
        """Every running device has answered once since the start (data, a failure or a skip), and the good
        sample it took, if any, has been acknowledged: the live 联网率 counts a device networked only then."""
        for device_id in self.engine.running():
            task = self.engine.task_stats(device_id)
            if task is None or not task.answered:
                return False
            st = self.status.devices.get(device_id)
            if st is not None and st.last_good is not None and st.last_good >= self.started and (
                    st.last_delivered is None or st.last_delivered < self.started):
                return False
        return True

    async def _indicators_loop(self) -> None:
        """The first snapshot once the first poll round is in (at the latest one `publish_interval` after the
        start, as before), then one every `publish_interval`. Published at once, it showed D2 0 of n for up to
        a minute while every device was online."""
        interval = self.cfg.indicators.publish_interval
        deadline = time.monotonic() + interval
        while not self._first_round_in() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._first_snapshot_out = True
        try:
            self._publish_indicators()
        except Exception:
            log.exception("event=indicators_failed")
        await self._every(interval, self._publish_indicators)

    async def _every(self, seconds: float, fn: Any) -> None:
        failures = _Failures(getattr(fn, "__name__", str(fn)))
        while True:
            await asyncio.sleep(seconds)
            try:
                fn()
            except Exception:
                failures.failed()
            else:
                failures.ok()

    async def _every_async(self, seconds: float, fn: Any) -> None:
        failures = _Failures(getattr(fn, "__name__", str(fn)))
        while True:
            try:
                await fn()
            except Exception:
                failures.failed()
            else:
                failures.ok()
            await asyncio.sleep(seconds)

    async def stop(self) -> None:
        """Close device sessions, publish every device's and the gateway's offline status, write the state
        store."""
        async with self._reload_lock:  # an apply under way ends first; a reload still reading is not applied
            self.stopping = True
        await asyncio.gather(*(cancel_and_wait(t, t.get_name()) for t in self._tasks))
        await self.threads.idle()  # a cancelled refresh's query may still run on a reader closed below
        await self.writes.stop()
        await self.engine.stop()
        self._devices_shut_down()
        self.states.stop()
        self.outbox.flush()
        self._final_flush()
        await self.mqtt.stop()
        for sink in self.sinks:
            await sink.close()
        self.outbox.close()
        self._final_flush()
        if self._reader is not None:
            self._reader.close()
        self.store.close()
        log.info("event=stopped")

    def _devices_shut_down(self) -> None:
        """Every device with a session is `offline` (reason shutdown) before the sink disconnects: the listeners
        publish the retained statuses, which would otherwise say `online` until the next start. The broker
        acknowledges QoS 1 messages of one connection in order, so the gateway's offline status that
        `sink.stop()` waits for comes after these. A device never seen keeps `never_seen`, which stays true."""
        for device, st in list(self.status.devices.items()):
            if st.state != DeviceState.NEVER_SEEN:
                self.status.set_state(device, DeviceState.OFFLINE, SHUTDOWN_REASON)

    def _final_flush(self) -> None:
        """The state store's last writes; a full disk must not stop the shutdown half-way (sink, outbox)."""
        try:
            self.status.flush()
        except sqlite3.Error as exc:
            log.error("event=status_flush_failed error=%s (the state store keeps its last committed figures)",
                      str(exc).replace(" ", "_"))

    def outbox_stats(self) -> dict[str, Any]:
        """Per sink: depth_batches, depth_readings, bytes, oldest_age_s, dropped_batches, dropped_readings,
        delivered_readings, delivery_rate (readings/s over 10 s). Read by /healthz, /metrics and the status."""
        return self.outbox.all_stats()

    # -- reload (SIGHUP, `collector reload`, POST /api/reload)

    RESTART_ONLY = ("site", "mqtt", "http", "state_dir", "indicators", "outbox", "evidence", "influx", "states")

    async def reload_file(self, path: str | Path) -> dict[str, Any]:
        """Re-read and check a config file, then `reload()`; a file `check` refuses changes nothing.

        The read, the parse, the validation and the start checks (collector/preflight.py `checked_config`) run
        in a worker thread: a flat 20,000-tag file takes seconds, and the devices keep polling meanwhile. Only
        `reload()`, which applies the checked config, runs on the loop. Reloads asked for while one is reading
        wait for it, so the file read last is the one applied last."""
        from collector.config import ConfigError
        from collector.preflight import checked_config

        async with self._reload_file_lock:
            try:
                new_cfg, warnings = await asyncio.to_thread(checked_config, path, self.settings)
            except ConfigError as exc:
                self.reload_counts["rejected"] += 1
                for line in exc.lines:
                    log.error("event=reload_rejected source=%s error=%r", exc.source, line)
                log.error("event=reload_rejected source=%s errors=%d keeping=running_config", exc.source,
                          len(exc.lines))
                return {"ok": False, "errors": exc.lines}
            for line in warnings:  # as `run` logs them at start
                log.warning("event=config_warning %s", line)
            return await self.reload(new_cfg)

    async def reload(self, new_cfg: CollectorConfig) -> dict[str, Any]:
        """Apply a validated config to the running collector without a gap for devices that did not change.

        Devices are compared as pydantic models: unchanged ones keep their task (and their sequence numbers
        run on), changed ones restart, removed ones stop (their state goes `offline`, reason "removed from
        config"), added ones start. The asset register follows the new config. Sections that the sink, the
        state store or the HTTP server were built from (`RESTART_ONLY`) are not applied live: they are logged
        and the running values are kept until the next restart.
        """
        async with self._reload_lock:
            if self.stopping:
                log.warning("event=reload_skipped reason=stopping")
                return {"ok": False, "errors": ["the collector is stopping: the new config was not applied"]}
            old = self.cfg
            restart = [k for k in self.RESTART_ONLY if getattr(old, k) != getattr(new_cfg, k)]
            if restart:
                log.warning("event=reload_needs_restart sections=%s action=keeping_running_values "
                            "(restart the service to apply them)", ",".join(restart))
                new_cfg = new_cfg.model_copy(update={k: getattr(old, k) for k in restart})
            before = {d.id: d for d in old.devices}
            after = {d.id: d for d in new_cfg.devices}
            removed = [d for d in before if d not in after]
            added = [d for d in after if d not in before]
            changed = [d for d in after if d in before and after[d] != before[d]]
            unchanged = [d for d in after if d in before and after[d] == before[d]]
            # Stop first, with the old config still in place, so views never see a half-swapped state.
            await asyncio.gather(*(self.engine.stop_device(d) for d in removed + changed))
            for dev_id in removed:
                self.status.set_state(dev_id, DeviceState.OFFLINE, "removed from config")
            for dev_id in added:
                self.status.add_device(dev_id)
            self.cfg = new_cfg
            self.register_warnings = []
            self.register = load_register(new_cfg, self.state_dir, self.register_warnings)
            for dev_id in removed:
                self.status.remove_device(dev_id)
            for dev_id in removed:
                self.pipeline.forget(dev_id)
            for dev_id in changed:
                self.pipeline.clear_latest(dev_id)
            self.states.reconfigure(removed + changed + added)
            for dev_id in changed + added:
                self.engine.start_device(after[dev_id])
            self.status.flush()
            self.reload_counts["applied"] += 1
            log.info("event=reloaded added=%s removed=%s changed=%s unchanged=%d restart_needed=%s",
                     ",".join(added) or "-", ",".join(removed) or "-", ",".join(changed) or "-", len(unchanged),
                     ",".join(restart) or "-")
            self._publish_indicators()
            return {"ok": True, "added": added, "removed": removed, "changed": changed, "unchanged": unchanged,
                    "restart_needed": restart}
