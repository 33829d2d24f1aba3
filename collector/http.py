"""The collector's HTTP face (aiohttp): status page, /healthz, /metrics, the JSON API and reload.

| path | what |
| --- | --- |
| `GET /` | the status page: one self-contained HTML file (no CDN), refreshing itself from `/api/status` |
| `GET /healthz` | 200 when the event loop is alive and the outbox is empty or draining, else 503; JSON body |
| `GET /metrics` | Prometheus text format (collector/metrics.py) |
| `GET /api/status` | everything the page shows: gateway, devices with tags, indicators, outbox, sink, health |
| `GET /api/devices`, `GET /api/devices/{id}` | devices, each with its state and tags (value, unit, quality, ts) |
| `GET /api/indicators` | the live indicator snapshot (same payload as the retained MQTT topic) |
| `POST /api/reload` | re-read the config file (as SIGHUP does); 200 applied, 422 rejected with the errors |

Auth: when a token is set (env `COLLECTOR_HTTP_TOKEN` or `http.token_file`), every path except `/healthz` needs
`Authorization: Bearer <token>` or HTTP Basic with the token as password (so a browser can open the page).
A listen address other than loopback without a token is refused. The token is never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import importlib.resources
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from collector.config import HttpConfig, http_token
from collector.metrics import Metrics, last_seq

if TYPE_CHECKING:
    from collector.app import Collector

log = logging.getLogger(__name__)

HEARTBEAT = 0.5  # s between loop heartbeats
LOOP_STALE = 5.0  # s: a loop that missed its heartbeat by this much is not alive
PUBLIC_PATHS = ("/healthz",)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    body = orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    return web.Response(body=body, status=status, content_type="application/json")


def status_page() -> bytes:
    """The page is a package resource (collector/web/status.html), read once."""
    return importlib.resources.files("collector.web").joinpath("status.html").read_bytes()


def token_matches(header: str | None, token: str) -> bool:
    """`Bearer <token>` or `Basic base64(any:<token>)`, compared in constant time."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.encode(), token.encode())


class HttpServer:
    """Serves one collector. `config_path` is what `/api/reload` re-reads (None: reload is not offered)."""

    def __init__(self, collector: Collector, cfg: HttpConfig | None = None, token: str | None = None,
                 config_path: str | Path | None = None) -> None:
        self.collector = collector
        self.cfg = cfg or collector.cfg.http
        self.token = token if token is not None else http_token(collector.cfg)
        self.config_path = config_path
        self.metrics = Metrics(collector)
        self.runner: web.AppRunner | None = None
        self.port = self.cfg.port
        self._beat_task: asyncio.Task[None] | None = None
        self._beat_at = time.monotonic()
        self.loop_lag = 0.0
        # outbox progress, for "draining": last delivered count seen and when it changed
        self._delivered: float | None = None
        self._progress_at = time.monotonic()
        self.app = self._make_app()

    # -- life cycle

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self.page)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_handler)
        app.router.add_get("/api/status", self.api_status)
        app.router.add_get("/api/devices", self.api_devices)
        app.router.add_get("/api/devices/{device}", self.api_device)
        app.router.add_get("/api/indicators", self.api_indicators)
        app.router.add_post("/api/reload", self.api_reload)
        return app

    @property
    def url(self) -> str:
        host = self.cfg.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
        return f"http://{shown}:{self.port}/"

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address is taken, RuntimeError on a tokenless public bind."""
        if not self.cfg.loopback and not self.token:
            raise RuntimeError(f"http.listen {self.cfg.listen} is not loopback: a token is required")
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.host, self.cfg.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self.runner.cleanup()
            self.runner = None
            raise
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self._beat_at = time.monotonic()
        self._beat_task = asyncio.create_task(self._heartbeat(), name="http-heartbeat")
        log.info("event=http_listening url=%s auth=%s", self.url, "token" if self.token else "none")

    async def stop(self) -> None:
        if self._beat_task is not None:
            self._beat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat_task
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _heartbeat(self) -> None:
        """Measures how late the loop wakes us: a blocked loop shows as lag, and /healthz turns 503."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + HEARTBEAT
            await asyncio.sleep(HEARTBEAT)
            self.loop_lag = max(0.0, loop.time() - due)
            self._beat_at = time.monotonic()

    # -- auth

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token and request.path not in PUBLIC_PATHS \
                and not token_matches(request.headers.get("Authorization"), self.token):
            return web.Response(status=401, text="token required\n",
                                headers={"WWW-Authenticate": 'Basic realm="shopfloor-collector"'})
        return await handler(request)

    # -- health

    def health(self) -> dict[str, Any]:
        """The /healthz verdict. The outbox is *draining* when it is empty, or has delivered something (or held
        its oldest message) within `http.stall_after` seconds; without an outbox the sink's unacknowledged
        messages stand in for it."""
        now = time.monotonic()
        since_beat = now - self._beat_at
        loop_ok = since_beat < LOOP_STALE and self.loop_lag < LOOP_STALE
        sections = self.collector.outbox_stats()
        sink = self.collector.sink.stats()
        if sections:
            depth = float(sum(st["depth_batches"] for st in sections.values()))
            delivered = float(sum(st["delivered_readings"] for st in sections.values()))
            rate = float(sum(st["delivery_rate"] for st in sections.values()))
            ages = [float(s["oldest_age_s"]) for s in sections.values() if s.get("oldest_age_s") is not None]
            source = "outbox"
        else:
            depth, delivered, rate, ages, source = float(sink["in_flight"]), float(sink.get("acked", 0)), 0.0, [], "sink"
        if self._delivered is None or delivered != self._delivered or rate > 0:
            self._delivered = delivered
            self._progress_at = now
        stalled_for = now - self._progress_at
        young = bool(ages) and max(ages) <= self.cfg.stall_after
        draining = depth == 0 or stalled_for <= self.cfg.stall_after or young
        outbox = self.collector.outbox
        write_error = outbox.write_error
        ok = loop_ok and draining and write_error is None
        reasons = []
        if write_error is not None:
            since = outbox.clock() - (outbox.write_error_since or outbox.clock())
            reasons.append(f"the outbox cannot write {outbox.path} for {since:.0f} s ({write_error}); new data "
                           f"is delivered from memory; while the sink cannot take it, the oldest beyond "
                           f"{outbox.pending_max_bytes // 2**20} MB is dropped")
        if not loop_ok:
            reasons.append(f"event loop lagging {max(since_beat, self.loop_lag):.1f} s")
        if not draining:
            reasons.append(f"{source} holds {depth:g} messages and delivered none for {stalled_for:.0f} s")
        return {"status": "ok" if ok else "failing", "loop": {"ok": loop_ok, "lag_s": round(self.loop_lag, 3)},
                "outbox": {"ok": draining and write_error is None, "source": source, "depth": depth,
                           "stalled_s": round(stalled_for, 1), "write_error": write_error},
                "sink_connected": bool(sink.get("connected")), "reasons": reasons}

    async def healthz(self, request: web.Request) -> web.Response:
        h = self.health()
        return json_response(h, 200 if h["status"] == "ok" else 503)

    # -- metrics, page

    async def metrics_handler(self, request: web.Request) -> web.Response:
        body = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=status_page(), content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    # -- JSON API

    def device_json(self, dev_id: str) -> dict[str, Any] | None:
        c = self.collector
        dev = next((d for d in c.cfg.devices if d.id == dev_id), None)
        st = c.status.devices.get(dev_id)
        if dev is None or st is None:
            return None
        latest = c.pipeline.latest.get(dev_id, {})
        task = c.engine.tasks.get(dev_id)
        tags = []
        for tag in dev.tags:
            r = latest.get(tag.name)
            tags.append({"name": tag.name, "value": None if r is None else r.value,
                         "unit": tag.unit if r is None else r.unit, "quality": None if r is None else r.quality,
                         "ts": None if r is None else r.source_ts})
        return {
            "id": dev.id, "name": dev.name or dev.id, "protocol": dev.protocol, "endpoint": dev.endpoint,
            "enabled": dev.enabled, "interval": dev.interval, "state": str(st.state), "since": st.since,
            "reason": st.reason, "last_good": st.last_good, "last_delivered": st.last_delivered,
            "online": str(st.state) in ("online", "degraded"), "seq": last_seq(c, dev_id),
            "polls": task.polls if task else 0, "errors": task.errors if task else 0,
            "last_poll_duration": task.last_poll_duration if task else None,
            # `values` in the shape collector/view.py renders: tag -> [value, unit, quality]
            "values": {t["name"]: [t["value"], t["unit"], t["quality"]] for t in tags if t["quality"] is not None},
            "tags": tags,
        }

    def devices_json(self) -> list[dict[str, Any]]:
        return [d for d in (self.device_json(dev.id) for dev in self.collector.cfg.devices) if d is not None]

    def status_json(self) -> dict[str, Any]:
        c = self.collector
        site = c.cfg.site
        return {
            "gateway": {"enterprise": site.enterprise_id, "enterprise_name": site.enterprise_name,
                        "workshop": site.workshop, "topic_root": c.cfg.topic_root, "started": c.started,
                        "uptime_s": round(time.time() - c.started, 1) if c.started else 0.0, "now": time.time(),
                        "reloads": dict(c.reload_counts)},
            "devices": self.devices_json(),
            "indicators": c.indicators(),
            "outbox": c.outbox_stats(),
            "sink": c.sink.stats(),
            "health": self.health(),
        }

    async def api_status(self, request: web.Request) -> web.Response:
        return json_response(self.status_json())

    async def api_devices(self, request: web.Request) -> web.Response:
        return json_response({"devices": self.devices_json()})

    async def api_device(self, request: web.Request) -> web.Response:
        found = self.device_json(request.match_info["device"])
        if found is None:
            return json_response({"error": "no such device"}, 404)
        return json_response(found)

    async def api_indicators(self, request: web.Request) -> web.Response:
        return json_response(self.collector.indicators())

    async def api_reload(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            return json_response({"ok": False, "errors": ["cross-origin reload refused"]}, 403)
        if self.config_path is None:
            return json_response({"ok": False, "errors": ["this collector was not started from a file"]}, 409)
        result = await self.collector.reload_file(self.config_path)
        return json_response(result, 200 if result.get("ok") else 422)


async def start_http(collector: Collector, config_path: str | Path | None = None) -> HttpServer | None:
    """Start the HTTP server when `http.enabled`; a port already taken is logged, not fatal (collecting data
    matters more than showing it)."""
    if not collector.cfg.http.enabled:
        return None
    server = HttpServer(collector, config_path=config_path)
    try:
        await server.start()
    except (OSError, RuntimeError) as exc:
        log.error("event=http_failed listen=%s error=%r", collector.cfg.http.listen, str(exc))
        await server.stop()
        return None
    return server
