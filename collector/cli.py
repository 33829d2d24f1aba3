"""The `collector` command. Each subcommand has `--help`; exit codes: 0 ok, 1 failure, 2 bad config/usage.

Importing this module costs little: the config models (pydantic), asyncio and each command's own modules are
imported by the command that uses them. `build_parser` loads the protocol plugins for their commands, but not
their device models (named lazily, adapters/base.py `ProtocolPlugin`): `verify`, `hub ...` and `--version`
never build the config union.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from collector.config import CollectorConfig


def version_line() -> str:
    """What `collector --version` prints, with or without the parser built."""
    return f"collector {package_version()}"


def package_version() -> str:
    """The installed distribution's version (what a wheel install or `pip show shopfloor-collector` says)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shopfloor-collector")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM."""
    import asyncio
    import contextlib
    import signal

    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, event.set)
    return event


# ----------------------------------------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    from collector.config import EXIT_BAD_CONFIG, ConfigError, load_config, partial_config, print_problems
    from collector.lint import config_warnings
    from collector.preflight import startup_check

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:  # with the start checks of the parts that are valid: every problem in one run
        partial = partial_config(exc.data)
        print_problems(exc.source, exc.lines + (startup_check(partial)[0] if partial is not None else []), "error")
        return EXIT_BAD_CONFIG
    errors, warnings = startup_check(cfg)
    warnings = config_warnings(cfg) + warnings
    if warnings:
        print_problems(args.config, warnings, "warning")
    if errors:
        print_problems(args.config, errors, "error")
        return EXIT_BAD_CONFIG
    tags = sum(len(d.tags) for d in cfg.devices)
    print(f"{args.config}: OK: {len(cfg.devices)} devices, {tags} tags, {len(cfg.assets)} unconnected assets; "
          f"topic root {cfg.topic_root}")
    if args.tags:
        from adapters.base import registry

        for dev in cfg.devices:
            print(f"{dev.id} ({dev.protocol} {dev.endpoint})")
            describe = registry.get(dev.protocol).describe_tag
            for tag in dev.tags:
                print(f"  {tag.name:<24} {getattr(tag, 'type', None) or '-':<8} {describe(dev, tag)}")
    return 0


# ----------------------------------------------------------------------------------------------- run


async def _run(cfg: CollectorConfig, path: str | None = None) -> int:
    """The service: collector, HTTP endpoint, sd_notify READY/WATCHDOG/STOPPING, SIGHUP = reload `path`."""
    import asyncio
    import contextlib
    import signal

    from collector.app import Collector
    from collector.config import Settings
    from collector.http import HttpUnavailable, start_http
    from collector.notify import Notifier, start_watchdog
    from collector.runtime import tune_gc

    stop = _stop_event()
    from collector.evidence.keys import KeyFileError

    notifier = Notifier.from_env()
    try:
        collector = Collector(cfg, Settings())
    except KeyFileError as exc:  # the evidence signing key is unusable: say which file and the fix
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:  # before the devices start: a collector whose port answers for another one must not run
        http = await start_http(collector, path)
    except HttpUnavailable as exc:
        print(f"collector run: {exc}", file=sys.stderr)
        return 1
    await collector.start()
    tune_gc()
    watchdog = start_watchdog(notifier)
    notifier.ready(f"collecting from {len(cfg.devices)} devices" + (f"; status page {http.url}" if http else ""))
    reloads: set[asyncio.Task[object]] = set()

    async def reload() -> None:
        assert path is not None
        notifier.reloading()
        result = await collector.reload_file(path)
        if not stop.is_set():  # a reload read while the service stops is not applied, and says nothing more
            notifier.ready("reloaded" if result.get("ok") else "reload rejected: running the previous config")

    def on_hup() -> None:
        task: asyncio.Task[object] = asyncio.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    if path is not None:
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    notifier.stopping()
    if watchdog is not None:
        watchdog.cancel()
    if http is not None:
        await http.stop()
    await collector.stop()
    notifier.close()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from collector.config import EXIT_BAD_CONFIG, Settings, load_config_or_exit, print_problems
    from collector.lint import config_warnings
    from collector.logs import setup_logging
    from collector.preflight import startup_check

    cfg = load_config_or_exit(args.config)
    errors, warnings = startup_check(cfg)  # what `check` reports, so what it accepts starts
    if errors:
        print_problems(args.config, errors, "error")
        return EXIT_BAD_CONFIG
    settings = Settings()
    setup_logging(args.log_level or settings.log_level, settings.log_format)
    for line in config_warnings(cfg) + warnings:
        logging.getLogger("collector.config").warning("event=config_warning %s", line)
    from collector.runtime import run

    return run(_run(cfg, args.config), settings.event_loop)


# ----------------------------------------------------------------------------------------------- status, reload


def _api(args: argparse.Namespace) -> tuple[str, str | None, CollectorConfig | None]:
    """Base URL and token of the running collector: `--url`, else the config's http.listen; the token from
    env COLLECTOR_HTTP_TOKEN or the config's http.token_file; and the config, when one was given."""
    from collector.config import http_token, load_config_or_exit

    token = os.environ.get("COLLECTOR_HTTP_TOKEN") or None
    cfg = None
    if args.config:
        cfg = load_config_or_exit(args.config)
        token = http_token(cfg)
        host = cfg.http.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
        base = f"http://{host}:{cfg.http.port}"
    else:
        base = "http://127.0.0.1:8321"
    return (args.url or base).rstrip("/"), token, cfg


def _not_this_collector(cfg: CollectorConfig | None, gateway: object, base: str) -> str | None:
    """The refusal when the collector answering at `base` is not the one of the config (another collector
    holds its port), naming both identities; None when it is, or when no config was given."""
    if cfg is None or not isinstance(gateway, dict):
        return None
    want = (cfg.site.enterprise_id, cfg.site.workshop)
    got = (gateway.get("enterprise"), gateway.get("workshop"))
    if got == want:
        return None
    return (f"{base} answers as enterprise {got[0]!r} workshop {got[1]!r}, but the config is enterprise "
            f"{want[0]!r} workshop {want[1]!r}: another collector holds http.listen {cfg.http.listen} "
            "(is this one running? see its log for event=http_failed)")


def _call(url: str, token: str | None, method: str = "GET", timeout: float = 10.0, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, object]:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, method=method, data=(body or b"") if method == "POST" else None,
                                 headers=headers or {})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode("utf-8", "replace").strip()


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import urllib.error

    base, token, cfg = _api(args)
    try:
        code, body = _call(f"{base}/api/status", token)
    except (urllib.error.URLError, OSError) as exc:
        print(f"collector not reachable at {base}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    if code != 200 or not isinstance(body, dict):
        print(f"{base}/api/status: HTTP {code}: {body}", file=sys.stderr)
        return 1
    refusal = _not_this_collector(cfg, body.get("gateway"), base)
    if refusal is not None:
        print(f"collector status: {refusal}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, ensure_ascii=False, indent=2))
    else:
        _print_status(body)
    return 0 if body["health"]["status"] == "ok" else 1


def _print_status(body: dict[str, Any]) -> None:
    """The tables with rich (the `demo` extra), else the same figures as plain text (a gateway install)."""
    from collector.view import fmt_duration, render_outbox_plain, render_plain

    g = body["gateway"]
    header = (f"{g.get('enterprise_name') or g['enterprise']} · {g['workshop']} · MQTT {g['topic_root']}/# · "
              f"up {fmt_duration(g['uptime_s'])}")
    try:
        from rich.console import Console
    except ImportError:
        print(header)
        print(render_plain(body["devices"], body["indicators"]))
        print(render_outbox_plain(body["outbox"], body["sink"], body["health"]))
        return
    from collector.view import render, render_outbox

    console = Console()
    console.print(render(body["devices"], body["indicators"], header))
    console.print(render_outbox(body["outbox"], body["sink"], body["health"]))


def cmd_reload(args: argparse.Namespace) -> int:
    import urllib.error

    from collector.config import EXIT_BAD_CONFIG

    base, token, cfg = _api(args)
    try:
        if cfg is not None:  # never make another collector (one holding this one's port) reload
            code, status = _call(f"{base}/api/status", token)
            refusal = _not_this_collector(cfg, status.get("gateway") if isinstance(status, dict) else None, base)
            if code == 200 and refusal is not None:
                print(f"collector reload: {refusal}", file=sys.stderr)
                return 1
        code, body = _call(f"{base}/api/reload", token, method="POST", timeout=60.0)
    except (urllib.error.URLError, OSError) as exc:
        print(f"collector not reachable at {base}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    if code == 200 and isinstance(body, dict):
        print(f"reloaded: added {', '.join(body['added']) or '-'}; removed {', '.join(body['removed']) or '-'}; "
              f"changed {', '.join(body['changed']) or '-'}; {len(body['unchanged'])} unchanged")
        if body.get("restart_needed"):
            print(f"not applied until a restart: {', '.join(body['restart_needed'])}")
        return 0
    if code == 422 and isinstance(body, dict):
        print("reload rejected; the collector keeps running the previous config:", file=sys.stderr)
        for line in body.get("errors", []):
            print(f"  {line}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"{base}/api/reload: HTTP {code}: {body}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------------------------- simulate


async def _simulate(cfg: CollectorConfig, devices: list[str] | None) -> int:
    from collector.config import EXIT_BAD_CONFIG
    from simulators.workshop import NoSimulator, Workshop

    stop = _stop_event()
    try:
        workshop = Workshop(cfg, devices)
    except NoSimulator as exc:
        print(f"collector simulate: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    await workshop.start()
    for dev in cfg.devices:
        if dev.id in workshop.by_device:
            print(f"serving {dev.id:<12} {dev.protocol:<7} {dev.endpoint}", flush=True)
    print("simulators ready (Ctrl-C to stop)", flush=True)
    await stop.wait()
    await workshop.stop()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from collector.config import Settings, load_config_or_exit
    from collector.logs import setup_logging

    cfg = load_config_or_exit(args.config)
    setup_logging(args.log_level or "WARNING")
    from collector.runtime import run

    return run(_simulate(cfg, args.device or None), Settings().event_loop)


# ----------------------------------------------------------------------------------------------- demo


DEMO_MODULES = ("rich", "amqtt")  # the `demo` extra of pyproject.toml


def missing_demo_modules() -> list[str]:
    """The `demo` extra's modules that cannot be imported: a gateway install has none of them."""
    import importlib

    missing = []
    for name in DEMO_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def cmd_demo(args: argparse.Namespace) -> int:
    missing = missing_demo_modules()
    if missing:
        print(f"collector demo needs the `demo` extra, which is not installed (missing: {', '.join(missing)}).\n"
              "  install it: pip install 'shopfloor-collector[demo]'  (in a checkout: make demo, or "
              "pip install -e '.[demo]')", file=sys.stderr)
        return 1
    import asyncio

    from collector.config import load_config_or_exit
    from collector.demo import run_demo
    from collector.logs import setup_logging

    cfg = load_config_or_exit(args.config)
    setup_logging(args.log_level or "WARNING")
    return asyncio.run(run_demo(cfg, args.duration, plain=args.plain, keep_retained=args.keep_retained))


# ----------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="collector", description="Shop-floor data collector (OPC UA, Modbus → MQTT) "
                                "with the 数字化设备联网率 and 装备数控化率 indicators.")
    p.add_argument("--version", action="version", version=version_line())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("run", help="run a config until SIGINT/SIGTERM")
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("check", help="validate a config (exit 2 naming every bad field)")
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument("--tags", action="store_true", help="list every tag and where it is read (Modbus register, OPC UA node, ...: the protocol says)")
    s.set_defaults(fn=cmd_check)

    s = sub.add_parser("simulate", help="serve every device of a config from the bundled simulators")
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument("--device", action="append", help="serve only this device id (repeatable)")
    s.add_argument("--log-level", help="log level (default WARNING)")
    s.set_defaults(fn=cmd_simulate)

    s = sub.add_parser("demo", help="simulators + broker + collector with a live terminal view")
    s.add_argument("-c", "--config", default=str(Path("config") / "demo.yaml"), help="default config/demo.yaml")
    s.add_argument("--duration", type=float, default=None, help="exit with code 0 after this many seconds")
    s.add_argument("--plain", action="store_true", help="plain text instead of the live view")
    s.add_argument("--keep-retained", action="store_true", help="on a broker the demo did not start, keep its "
                   "retained topics at exit (default: cleared)")
    s.add_argument("--log-level", help="log level (default WARNING)")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("status", help="show the running collector's devices, indicators and outbox (HTTP API)")
    s.add_argument("-c", "--config", help="config of the running collector (for http.listen and the token)")
    s.add_argument("--url", help="base URL instead (default http://127.0.0.1:8321)")
    s.add_argument("--json", action="store_true", help="print the JSON of /api/status")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("reload", help="make the running collector re-read its config (like SIGHUP)")
    s.add_argument("-c", "--config", help="config of the running collector (for http.listen and the token)")
    s.add_argument("--url", help="base URL instead (default http://127.0.0.1:8321)")
    s.set_defaults(fn=cmd_reload)

    from collector.indicators.commands import add_parsers  # indicators, report, verify, assets import

    add_parsers(sub)

    from collector.states.commands import add_parsers as add_states_parsers  # oee

    add_states_parsers(sub)
    from collector.writes.commands import add_parsers as add_write_parsers  # write, writes

    add_write_parsers(sub)

    from adapters.base import registry  # each protocol's own commands (OPC UA: certs, discover)

    for plugin in registry:
        if plugin.commands is not None:
            plugin.commands(sub)

    from collector.hub.commands import add_parsers as add_hub_parsers  # hub migrate|enroll|key|run|bulletin

    add_hub_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:  # what argparse prints, without first importing every command to build it
        print(version_line())
        return 0
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
