"""The running collector: wires engine → pipeline → sinks, the status tracker and the indicator publisher.

`collector run`, `collector demo` and the integration tests all use this one class, so what the tests see is
what a gateway runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from collector.config import CollectorConfig, MqttConfig, Settings, effective_state_dir, read_secret
from collector.delivery import Sender
from collector.evidence import anchors, keys
from collector.failures import RepeatedFailure
from collector.indicators.identity import simulated_devices, simulator_reason
from collector.indicators.live import live_snapshot
from collector.indicators.register import Asset, load_register
from collector.model import Batch, DeviceState, Row
from collector.outbox import Outbox
from collector.pipeline import Pipeline
from collector.runtime import loop_name
from collector.sinks.evidence import EvidenceSink
from collector.sinks.influx import InfluxSettings, InfluxSink
from collector.sinks.mqtt import MqttSettings, MqttSink, encode_data, iso
from collector.status import StatusStore, StatusTracker, changed_keys
from collector.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def mqtt_settings(cfg: CollectorConfig, settings: Settings) -> MqttSettings:
    """Resolve the broker settings: the config, then `COLLECTOR_*` overrides; the password only from env/file."""
    m = cfg.mqtt
    if settings.mqtt_url:
        m = MqttConfig.model_validate({**m.model_dump(), "url": settings.mqtt_url})
    password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else read_secret(
        None, m.password_file)
    return MqttSettings(
        host=m.host, port=m.port, topic_root=cfg.topic_root, qos=m.qos,
        client_id=m.client_id or f"shopfloor-collector-{cfg.site.enterprise_id}-{cfg.site.workshop}",
        username=settings.mqtt_username or m.username, password=password, tls=m.tls,
        ca_file=str(m.ca_file) if m.ca_file else None, cert_file=str(m.cert_file) if m.cert_file else None,
        key_file=str(m.key_file) if m.key_file else None, keepalive=m.keepalive, max_inflight=m.max_inflight,
        reconnect_max_delay=m.reconnect_max_delay,
    )


GATEWAY_STATUS_INTERVAL = 10.0  # seconds between retained gateway statuses (outbox figures)


def influx_settings(cfg: CollectorConfig) -> InfluxSettings:
    """The InfluxDB sink's settings; the token only from env or file."""
    ic = cfg.influx
    assert ic is not None
    measurements = {d.id: ic.measurement or d.template or "device" for d in cfg.devices}
    return InfluxSettings(url=ic.url, org=ic.org, bucket=ic.bucket, token=read_secret(ic.token_env, ic.token_file),
                          enterprise=cfg.site.enterprise_id, workshop=cfg.site.workshop, measurements=measurements,
                          batch_rows=ic.batch_rows, gzip=ic.gzip, timeout=ic.timeout)


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
        self._periods: dict[str, Any] | None = None
        self.sink = self._make_mqtt_sink()
        self.influx: InfluxSink | None = None
        if cfg.influx is not None:
            self.influx = InfluxSink(influx_settings(cfg), on_ack=self._influx_acked)
        sinks = ["mqtt", "evidence"] + (["influx"] if self.influx is not None else [])
        o = cfg.outbox
        self.outbox = Outbox(self.state_dir / "outbox.db", sinks, max_bytes=o.max_bytes, max_age=o.max_age,
                             fsync=o.fsync)
        self.outbox.held["mqtt"] = self.sink.in_flight
        self.evidence = EvidenceSink(self.sink, cfg.evidence_topic, self._evidence_acked)
        self.outbox.held["evidence"] = self.evidence.in_flight
        self.senders = [Sender(self.outbox, "mqtt", self.sink, o.live_share),
                        Sender(self.outbox, "evidence", self.evidence)]
        if self.influx is not None:
            self.senders.append(Sender(self.outbox, "influx", self.influx, o.live_share))
        self.pipeline = Pipeline(self.status, cfg.indicators.stale_after, next_seq=self.outbox.next_seq)
        self.pipeline.add_sink(self._to_outbox)
        self.sink.gateway_info = self.gateway_info
        self.status.listeners.append(self._status_changed)
        if hasattr(self.sink, "status_changed"):  # Sparkplug: DBIRTH/DDEATH follow the device states
            self.sink.latest = lambda device: self.pipeline.latest.get(device, {})  # type: ignore[attr-defined]
            self.status.listeners.append(self.sink.status_changed)
        self.sink.on_connect_hooks.append(self._republish)
        self.engine = Engine(self._on_readings, self.status.set_state, self._identified)
        self._tasks: list[asyncio.Task[None]] = []
        self.started = 0.0
        self.reload_counts = {"applied": 0, "rejected": 0}
        self._reload_lock = asyncio.Lock()
        self._first_snapshot_out = False  # no snapshot before the first poll round is in (_indicators_loop)

    # -- wiring

    def _make_mqtt_sink(self) -> MqttSink:
        """`mqtt.format`: JSON (docs/mqtt.md) or a Sparkplug B edge node (docs/sparkplug.md)."""
        ms = mqtt_settings(self.cfg, self.settings)
        if self.cfg.mqtt.format != "sparkplug":
            return MqttSink(ms, on_ack=self._mqtt_acked)
        from collector.sinks.sparkplug import SparkplugSettings, SparkplugSink

        sp = self.cfg.mqtt.sparkplug
        return SparkplugSink(ms, SparkplugSettings(group_id=sp.group_id or self.cfg.site.enterprise_id,
                                                   edge_node_id=sp.edge_node_id or self.cfg.site.workshop,
                                                   state_file=self.state_dir / "sparkplug.json",
                                                   primary_host_id=sp.primary_host_id),
                             on_ack=self._mqtt_acked)

    def _to_outbox(self, batch: Batch) -> None:
        """Encode once per sink and queue durably; the senders deliver it."""
        payloads = {"mqtt": encode_data(batch)}
        if self.influx is not None:
            payloads["influx"] = self.influx.encode(batch)
        self.outbox.append(batch.device, batch.seq, batch.ts, batch.good_ts, len(batch.readings), payloads)

    def _mqtt_acked(self, row: Row) -> None:
        """The broker acknowledged a row: delete it, and it is evidence when it holds a good sample."""
        self.outbox.ack("mqtt", row)
        if row.good_ts is not None:
            self.status.delivered(row.device, row.good_ts)

    def _evidence_acked(self, row: Row) -> None:
        """The broker holds a copy of the head: the receipt the report shows."""
        self.outbox.ack("evidence", row)
        anchors.acked(self.state_dir / anchors.ANCHOR_FILE, anchors.anchor_id(row.seq, row.created),
                      f"mqtt://{self.sink.s.host}:{self.sink.s.port}/{self.cfg.evidence_topic}")

    def _reload_key(self) -> None:
        """After `collector keys rotate` the state directory holds a new key: sign with it from now on."""
        path = self.state_dir / keys.PRIVATE_FILE
        mtime = path.stat().st_mtime_ns
        if mtime != self._key_mtime:
            signer = keys.load(self.state_dir)
            if signer is not None:
                self.signer, self._key_mtime = signer, mtime
                log.info("event=evidence_key_changed fingerprint=%s", keys.show_fingerprint(signer.fingerprint))

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
        self.outbox.append("evidence", int(head["seq"]), now, None, 1, {"evidence": payload})
        self.outbox.flush()
        log.info("event=anchor_queued seq=%s hash=%s reason=%s topic=%s id=%s", head["seq"], head["hash"][:12],
                 reason, self.cfg.evidence_topic, aid)
        return reason

    def _influx_acked(self, row: Row) -> None:
        self.outbox.ack("influx", row)

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
        self.sink.publish_status(st.to_dict())  # the log line is StatusTracker.set_state's

    def _republish(self) -> None:
        """On every (re)connect: every device's retained status and the indicator snapshot (once the first is
        out: before the first poll round it would say no device is networked)."""
        for st in self.status.devices.values():
            self.sink.publish_status(st.to_dict())
        if self._first_snapshot_out:
            self.sink.publish_indicators(self.indicators())

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
        self._periods = await asyncio.to_thread(period_summaries, self.cfg, self.register, reader,
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
            self.sink.publish_json(f"{self.sink.root}/indicators/monthly/{rec['body']['period']['label']}", rec,
                                   retain=True)
        self.anchor(now)
        return records

    # -- life cycle

    async def start(self) -> None:
        self.started = time.time()
        self.status.flush()
        await self.sink.start(wait=1.0)  # the outbox keeps what the devices read while no broker answers
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
        ]
        try:
            self.close_months()
        except Exception:
            log.exception("event=month_close_failed")
        log.info("event=started devices=%d assets=%d broker=%s:%d loop=%s", len(self.cfg.devices),
                 len(self.register), self.sink.s.host, self.sink.s.port, loop_name())

    def _publish_gateway(self) -> None:
        if self.sink.connected:
            self.sink.publish_gateway()

    def _publish_indicators(self) -> None:
        self.sink.publish_indicators(self.indicators())

    def _first_round_in(self) -> bool:
        """Every running device has answered once since the start (data, a failure or a skip), and the good
        sample it took, if any, has been acknowledged: the live 联网率 counts a device networked only then."""
        for device_id, task in self.engine.tasks.items():
            if not task.answered:
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
        await asyncio.gather(*(cancel_and_wait(t, t.get_name()) for t in self._tasks))
        await self.engine.stop()
        self._devices_shut_down()
        self.outbox.flush()
        self.status.flush()
        await self.sink.stop()
        if self.influx is not None:
            await self.influx.stop()
        self.outbox.close()
        self.status.flush()
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
                self.status.set_state(device, DeviceState.OFFLINE, "shutdown")

    def device_rows(self) -> list[dict[str, Any]]:
        """Per device: state, reason and last values, for the terminal view and `collector status`."""
        rows = []
        for dev in self.cfg.devices:
            st = self.status.devices[dev.id]
            latest = self.pipeline.latest.get(dev.id, {})
            rows.append({"id": dev.id, "name": dev.name or dev.id, "protocol": dev.protocol,
                         "state": str(st.state), "reason": st.reason, "last_good": st.last_good,
                         "values": {t: (r.value, r.unit, r.quality) for t, r in latest.items()},
                         "online": st.state in (DeviceState.ONLINE, DeviceState.DEGRADED)})
        return rows

    def outbox_stats(self) -> dict[str, Any]:
        """Per sink: depth_batches, depth_readings, bytes, oldest_age_s, dropped_batches, dropped_readings,
        delivered_readings, delivery_rate (readings/s over 10 s). Read by /healthz, /metrics and the status."""
        return {sink: self.outbox.stats(sink) for sink in self.outbox.queues}

    # -- reload (SIGHUP, `collector reload`, POST /api/reload)

    RESTART_ONLY = ("site", "mqtt", "http", "state_dir", "indicators", "outbox", "evidence", "influx")

    async def reload_file(self, path: str | Path) -> dict[str, Any]:
        """Re-read and validate a config file, then `reload()`; an invalid file changes nothing."""
        from collector.config import ConfigError, load_config

        try:
            new_cfg = load_config(path)
        except ConfigError as exc:
            self.reload_counts["rejected"] += 1
            for line in exc.lines:
                log.error("event=reload_rejected source=%s error=%r", exc.source, line)
            log.error("event=reload_rejected source=%s errors=%d keeping=running_config", exc.source,
                      len(exc.lines))
            return {"ok": False, "errors": exc.lines}
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
                self.pipeline.latest.pop(dev_id, None)
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
