"""The hub's HTTP page: the bulletin, as `collector hub bulletin` renders it, for a browser on the hub's network.

`GET /` (this month's bulletin when it has closed, else the last one), `GET /bulletin?period=2026-11&county=…
&format=html|csv|json&lang=en`, `GET /healthz`. Loopback by default; the Host header is checked against the
listen address and localhost, so a DNS name pointed at the hub cannot read it from another site's page."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from psycopg_pool import ConnectionPool

from collector.hub.bulletin import build, parse_period, shift
from collector.hub.config import HubConfig
from collector.hub.render import render

log = logging.getLogger("collector.hub.page")
TYPES = {"html": "text/html; charset=utf-8", "csv": "text/csv; charset=utf-8",
         "json": "application/json; charset=utf-8"}


def default_period(today: dt.date | None = None) -> str:
    """The last month whose bulletin is due (closed on the 4th of the next month)."""
    d = today or dt.date.today()
    this = f"{d.year:04d}-{d.month:02d}"
    return shift(this, -1 if d.day >= 4 else -2)


def serve(cfg: HubConfig, pool: ConnectionPool[Any]) -> ThreadingHTTPServer:
    """Start the page in a thread; returns the server (`shutdown()` stops it)."""
    assert cfg.http.listen is not None
    host, _, port = cfg.http.listen.rpartition(":")
    allowed = {host, "127.0.0.1", "localhost", "[::1]"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

        def _send(self, code: int, body: str, ctype: str = "text/plain; charset=utf-8") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            hostname = (self.headers.get("Host") or "").rsplit(":", 1)[0]
            if hostname not in allowed:
                self._send(421, f"host {hostname!r} is not this hub's address\n")
                return
            url = urlsplit(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path == "/healthz":
                self._send(200, "ok\n")
                return
            if url.path not in ("/", "/bulletin"):
                self._send(404, "not found: try /bulletin?period=YYYY-MM\n")
                return
            fmt, lang = q.get("format", "html"), q.get("lang", "zh")
            county = q.get("county") or None
            try:
                period = parse_period(q["period"]) if "period" in q else default_period()
            except ValueError as exc:
                self._send(400, f"{exc}\n")
                return
            if fmt not in TYPES:
                self._send(400, "format must be html, csv or json\n")
                return
            if county is not None and county not in cfg.counties:
                self._send(400, f"county {county!r} is not one of {'、'.join(cfg.counties)}\n")
                return
            with pool.connection() as conn:
                bulletin = build(conn, period, cfg.counties, county, cfg.name,
                                 count_simulated=cfg.count_simulated)
            self._send(200, render(bulletin, fmt, lang), TYPES[fmt])

    server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="hub-page", daemon=True).start()
    return server
