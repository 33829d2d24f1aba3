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

Host names: every request (`/healthz` too) must name this collector in its `Host` (and `Origin`, when sent): the
listen host, `localhost`, `127.0.0.1`, `[::1]` or one of `http.allowed_hosts`; anything else is 421 (403 for a
foreign Origin). Without it, a web page the operator opens could read the API through DNS rebinding.

Connections: a new connection must send its request head within `http.header_timeout`, a kept-alive one its next
request within `http.idle_timeout`; at most `http.max_connections` are open (fewer when the file-descriptor
limit is low), the oldest idle one closed to make room, so idle sockets cannot starve `/healthz` or the process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import importlib.resources
import ipaddress
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from collector.config import HttpConfig, http_token
from collector.metrics import Metrics
from collector.snapshot import device_snapshot, devices_snapshot

if TYPE_CHECKING:
    from collector.app import Collector

log = logging.getLogger(__name__)

HEARTBEAT = 0.5  # s between loop heartbeats
LOOP_STALE = 5.0  # s: a loop that missed its heartbeat by this much is not alive
PUBLIC_PATHS = ("/healthz",)
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("", "0.0.0.0", "::")
BACKLOG = 64  # pending connections the kernel holds for us; accepted ones can overshoot the cap by this much
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


def host_name(value: str) -> str:
    """The host of a `Host` header (`name`, `name:port`, `[v6]:port`), lower case, without a trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def connection_cap(configured: int, backlog: int = BACKLOG) -> int:
    """`http.max_connections`, lowered so that open connections plus an accept burst stay within half of the
    soft RLIMIT_NOFILE (the other half is the collector's: devices, databases, the broker)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(4, min(configured, soft // 2 - backlog))


@dataclass
class _Conn:
    """What the guard knows of one open connection: since when it waits, and whether a handler runs for it."""

    since: float
    served: int = 0
    busy: bool = False
    seen: bool = False  # aiohttp has counted it as connected


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
        self.allowed_hosts = self._allowed_hosts()
        self.max_connections = connection_cap(self.cfg.max_connections)
        self.conns: dict[web.RequestHandler, _Conn] = {}
        self.closed_idle = 0  # connections the guard closed (timeouts and evictions), for tests and the log
        self._server: asyncio.Server | None = None
        self._guard_task: asyncio.Task[None] | None = None
        self.app = self._make_app()

    # -- life cycle

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._track, self._hosts, self._auth])
        app.router.add_get("/", self.page)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_handler)
        app.router.add_get("/api/status", self.api_status)
        app.router.add_get("/api/devices", self.api_devices)
        app.router.add_get("/api/devices/{device}", self.api_device)
        app.router.add_get("/api/indicators", self.api_indicators)
        app.router.add_post("/api/reload", self.api_reload)
        app.router.add_post("/api/devices/{device}/write", self.api_write)
        return app

    @property
    def url(self) -> str:
        host = self.cfg.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
        return f"http://{shown}:{self.port}/"

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address is taken, RuntimeError on a tokenless public bind.

        The listening socket is ours (not an aiohttp site) so that every new connection passes `_protocol`,
        which counts it and makes room when the cap is reached."""
        if not self.cfg.loopback and not self.token:
            raise RuntimeError(f"http.listen {self.cfg.listen} is not loopback: a token is required")
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                    keepalive_timeout=self.cfg.idle_timeout)
        await self.runner.setup()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._protocol, self.cfg.host or None, self.cfg.port,
                                                    reuse_address=True, backlog=BACKLOG)
        except BaseException:
            await self.runner.cleanup()
            self.runner = None
            raise
        if self._server.sockets:
            self.port = self._server.sockets[0].getsockname()[1]
        self._beat_at = time.monotonic()
        self._beat_task = asyncio.create_task(self._heartbeat(), name="http-heartbeat")
        self._guard_task = asyncio.create_task(self._guard(), name="http-guard")
        log.info("event=http_listening url=%s auth=%s max_connections=%d", self.url,
                 "token" if self.token else "none", self.max_connections)

    async def stop(self) -> None:
        for task in (self._beat_task, self._guard_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            self._server.close()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- connections

    def _protocol(self) -> web.RequestHandler:
        """A handler for a new connection; at the cap the oldest idle connection is closed to make room (or,
        when every one is busy, this new one)."""
        assert self.runner is not None and self.runner.server is not None
        handler = self.runner.server()
        self._forget_closed()
        if len(self.conns) >= self.max_connections:
            idle = [(c.since, id(h), h) for h, c in self.conns.items() if not c.busy]
            if idle:
                self._close(min(idle)[2])
            else:
                handler.force_close()  # it closes itself once connected
        self.conns[handler] = _Conn(since=time.monotonic())
        return handler

    def _forget_closed(self) -> None:
        """Drop connections that have ended (a handler not yet connected is kept, for a while)."""
        assert self.runner is not None and self.runner.server is not None
        open_now = set(self.runner.server.connections)
        now = time.monotonic()
        for handler, conn in list(self.conns.items()):
            if handler in open_now:
                conn.seen = True
            elif conn.seen or now - conn.since > 5.0:
                del self.conns[handler]

    def _close(self, handler: web.RequestHandler) -> None:
        self.conns.pop(handler, None)
        self.closed_idle += 1
        if handler.transport is not None:
            handler.transport.close()
        handler.force_close()

    async def _guard(self) -> None:
        """Closes connections that sent no complete request within `header_timeout` (a new one) or
        `idle_timeout` (after a response): aiohttp's own keep-alive timer is not armed for a connection that
        never sends a byte in every version we support."""
        tick = min(self.cfg.header_timeout, self.cfg.idle_timeout, 1.0) / 4
        while True:
            await asyncio.sleep(tick)
            if self.runner is None or self.runner.server is None:
                continue
            self._forget_closed()
            now = time.monotonic()
            for handler, conn in list(self.conns.items()):
                limit = self.cfg.idle_timeout if conn.served else self.cfg.header_timeout
                if not conn.busy and now - conn.since > limit:
                    self._close(handler)

    @web.middleware
    async def _track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = self.conns.get(request.protocol)
        if conn is None:
            return await handler(request)
        conn.busy = True
        try:
            return await handler(request)
        finally:
            conn.busy, conn.served, conn.since = False, conn.served + 1, time.monotonic()

    # -- host names

    def _allowed_hosts(self) -> frozenset[str]:
        names = {*LOCAL_NAMES, self.cfg.host.lower(), *self.cfg.allowed_hosts}
        if self.cfg.host in WILDCARDS:
            names.add(socket.gethostname().lower())
        return frozenset(names - set(WILDCARDS))

    def host_allowed(self, name: str) -> bool:
        """A configured name; on a wildcard listen address also any IP literal (DNS rebinding needs a name)."""
        return name in self.allowed_hosts or (self.cfg.host in WILDCARDS and is_ip_literal(name))

    @web.middleware
    async def _hosts(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is not None and not self.host_allowed(host_name(host)):
            return web.Response(status=421, text=f"this collector does not answer to the host name {host!r}: add it "
                                "to http.allowed_hosts\n")
        origin = request.headers.get("Origin")
        if origin is not None and not self.host_allowed((urlsplit(origin).hostname or "").rstrip(".")):
            return web.Response(status=403, text="cross-origin request refused\n")
        return await handler(request)

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
        outbox = self.collector.outbox.health()
        write_error = outbox.write_error
        ok = loop_ok and draining and write_error is None
        reasons = []
        if write_error is not None:
            reasons.append(f"the outbox cannot write {outbox.path} for {outbox.failing_for:.0f} s ({write_error}); "
                           f"new data is delivered from memory; while the sink cannot take it, the oldest beyond "
                           f"{outbox.memory_cap // 2**20} MB is dropped")
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
        return device_snapshot(self.collector, dev_id)

    def devices_json(self) -> list[dict[str, Any]]:
        return devices_snapshot(self.collector)

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
            "hub": c.hub_status(),  # null without evidence.hub (docs/hub.md, "The enterprise side")
            "health": self.health(),
            "machine_states": c.states.page(),  # today's strips and the shift's figures (docs/states.md)
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


    async def api_write(self, request: web.Request) -> web.Response:
        """A write request (docs/writes.md): a token is required even on loopback, and no cross-origin page may
        send one; the result's status maps to 200 ok, 409 refused, 502 failed."""
        from collector.writes.service import parse_request, token_id

        if not self.token:
            return json_response({"status": "refused", "code": "token_required", "reason": "写入需要令牌 (writes "
                                  "need a token: set COLLECTOR_HTTP_TOKEN or http.token_file)"}, 403)
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            return json_response({"status": "refused", "code": "cross_origin", "reason": "跨源请求被拒绝 "
                                  "(cross-origin write refused)"}, 403)
        body = await request.read()
        via = "cli" if request.headers.get("X-Collector-Client") == "cli" else "http"
        req = parse_request(request.match_info["device"], body, token_id(self.token), via)
        result = await self.collector.writes.handle(req)
        code = {"ok": 200, "refused": 409}.get(result["status"], 502)
        return json_response(result, 404 if result["code"] == "unknown_device" else code)


class HttpUnavailable(RuntimeError):
    """The configured HTTP endpoint cannot listen; the message names the address and what to do."""


async def start_http(collector: Collector, config_path: str | Path | None = None) -> HttpServer | None:
    """Start the HTTP server when `http.enabled` (else None). An address already taken raises HttpUnavailable:
    `collector run` refuses to start then, because a collector nobody can see is a collector whose port
    answers for another one (`collector status` would show the other's devices)."""
    if not collector.cfg.http.enabled:
        return None
    server = HttpServer(collector, config_path=config_path)
    try:
        await server.start()
    except (OSError, RuntimeError) as exc:
        await server.stop()
        listen = collector.cfg.http.listen
        log.error("event=http_failed listen=%s error=%r", listen, str(exc))
        detail = getattr(exc, "strerror", None) or str(exc)
        raise HttpUnavailable(f"http.listen {listen}: cannot listen ({detail}); another collector or program "
                              "holds the port: give this collector its own http.listen port, or set "
                              "http.enabled: false") from exc
    return server
