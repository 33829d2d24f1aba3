"""`collector demo`: the bundled simulators, a broker when none answers, the collector and a live view."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time

from rich.console import Console
from rich.live import Live

from collector.app import Collector
from collector.config import CollectorConfig, Settings
from collector.demo_broker import DemoBroker, clear_retained
from collector.runtime import tune_gc
from collector.snapshot import devices_snapshot
from collector.view import render, render_plain


async def run_demo(cfg: CollectorConfig, duration: float | None, plain: bool = False,
                   keep_retained: bool = False) -> int:
    """On a broker it did not start (`external`), the demo clears its retained topics (`{root}/#`) on exit,
    unless `keep_retained`: a plant's or a developer's broker must not keep showing a demo workshop."""
    from simulators.workshop import Workshop

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    console = Console()
    broker = DemoBroker(cfg.mqtt.host, cfg.mqtt.port)
    kind = await broker.start()
    console.print(f"broker: {kind} on {cfg.mqtt.host}:{cfg.mqtt.port}")
    workshop = Workshop(cfg)
    t0 = time.monotonic()
    await workshop.start()
    console.print(f"simulators: {len(workshop.by_device)} devices up in {time.monotonic() - t0:.1f} s")
    collector = Collector(cfg, Settings())
    await collector.start()
    tune_gc()
    from collector.http import HttpUnavailable, start_http

    try:
        http = await start_http(collector)
    except HttpUnavailable as exc:  # the demo shows the terminal view all the same
        http = None
        console.print(f"status page: not available: {exc}")
    if http is not None:
        console.print(f"status page: {http.url}  (also /metrics, /healthz, /api/status)")
    header = (f"{cfg.site.enterprise_name or cfg.site.enterprise_id} · {cfg.site.workshop} · "
              f"MQTT {cfg.topic_root}/#")
    deadline = None if duration is None else loop.time() + duration
    plain = plain or not sys.stdout.isatty()
    try:
        if plain:
            while not stop.is_set() and (deadline is None or loop.time() < deadline):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)
                print(render_plain(devices_snapshot(collector), collector.indicators()), flush=True)
        else:
            with Live(render(devices_snapshot(collector), collector.indicators(), header), console=console,
                      refresh_per_second=2, screen=False) as live:
                while not stop.is_set() and (deadline is None or loop.time() < deadline):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                    live.update(render(devices_snapshot(collector), collector.indicators(), header))
    finally:
        if http is not None:
            await http.stop()
        await collector.stop()
        await workshop.stop()
        if broker.kind == "external" and not keep_retained:
            await _clear_demo_topics(collector, console)
        await broker.stop()
    return 0


async def _clear_demo_topics(collector: Collector, console: Console) -> None:
    s = collector.mqtt.s  # the broker settings the collector used (host, port, user, password)
    root = collector.cfg.topic_root
    try:
        if s.tls:
            raise OSError("TLS brokers are not cleared by the demo")
        cleared = await asyncio.to_thread(clear_retained, s.host, s.port, f"{root}/#", username=s.username,
                                          password=s.password)
    except (OSError, TimeoutError) as exc:
        console.print(f"broker: could not clear the demo's retained topics under {root}/#: {exc}")
        return
    console.print(f"broker: cleared {len(cleared)} retained topics under {root}/# (--keep-retained keeps them)")
