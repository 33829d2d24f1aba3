"""The running collector: wires engine → pipeline → sinks, the status tracker and the indicator publisher.

`collector run`, `collector demo` and the integration tests all use this one class, so what the tests see is
what a gateway runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from collector.config import CollectorConfig, MqttConfig, Settings, read_secret
from collector.indicators.live import live_snapshot
from collector.indicators.register import Asset, build_register
from collector.model import DeviceState
from collector.pipeline import Pipeline
from collector.sinks.mqtt import MqttSettings, MqttSink
from collector.status import StatusStore, StatusTracker

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
    )


class Collector:
    def __init__(self, cfg: CollectorConfig, settings: Settings | None = None) -> None:
        from collector.engine import Engine  # imports adapters.base: keep `collector check` light

        self.cfg = cfg
        self.settings = settings or Settings()
        self.state_dir: Path = self.settings.state_dir or cfg.state_dir
        self.store = StatusStore(self.state_dir / "status.db", cfg.indicators.bucket)
        self.status = StatusTracker(self.store, [d.id for d in cfg.devices])
        self.register: list[Asset] = build_register(cfg)
        self.pipeline = Pipeline(self.status, cfg.indicators.stale_after)
        self.sink = MqttSink(mqtt_settings(cfg, self.settings), on_delivered=self.status.delivered)
        self.pipeline.add_sink(self.sink.publish_batch)
        self.status.listeners.append(self._status_changed)
        self.sink.on_connect_hooks.append(self._republish)
        self.engine = Engine(self._on_readings, self.status.set_state)
        self._tasks: list[asyncio.Task[None]] = []
        self.started = 0.0

    # -- wiring

    def _on_readings(self, device: str, readings: list[Any]) -> None:
        self.pipeline.submit(device, readings)

    def _status_changed(self, st: Any) -> None:
        log.info("device=%s event=state state=%s reason=%s", st.device, st.state,
                 (st.reason or "").replace(" ", "_") or "-")
        self.sink.publish_status(st.to_dict())

    def _republish(self) -> None:
        """On every (re)connect: every device's retained status and the indicator snapshot."""
        for st in self.status.devices.values():
            self.sink.publish_status(st.to_dict())
        self.sink.publish_indicators(self.indicators())

    def indicators(self, now: float | None = None) -> dict[str, Any]:
        return live_snapshot(self.register, self.status.devices, self.cfg.indicators, self.cfg.site, now)

    # -- life cycle

    async def start(self) -> None:
        self.started = time.time()
        self.status.flush()
        await self.sink.start()
        for dev in self.cfg.devices:
            self.engine.start_device(dev)
        self._tasks = [
            asyncio.create_task(self._every(1.0, self.status.flush), name="status-flush"),
            asyncio.create_task(self._every(self.cfg.indicators.publish_interval, self._publish_indicators),
                                name="indicators"),
        ]
        log.info("event=started devices=%d assets=%d broker=%s:%d", len(self.cfg.devices), len(self.register),
                 self.sink.s.host, self.sink.s.port)

    def _publish_indicators(self) -> None:
        self.sink.publish_indicators(self.indicators())

    async def _every(self, seconds: float, fn: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                fn()
            except Exception:
                log.exception("event=periodic_failed fn=%s", getattr(fn, "__name__", fn))

    async def stop(self) -> None:
        """Close device sessions, publish the gateway's offline status, write the state store."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.engine.stop()
        self.status.flush()
        await self.sink.stop()
        self.status.flush()
        self.store.close()
        log.info("event=stopped")

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
