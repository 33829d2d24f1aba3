"""The `collector` command. Each subcommand has `--help`; exit codes: 0 ok, 1 failure, 2 bad config/usage."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from collector.config import CollectorConfig, ConfigError, ModbusDevice, Settings, load_config

EXIT_BAD_CONFIG = 2


def _load(path: str) -> CollectorConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.lines)} error(s)", file=sys.stderr)
        for line in exc.lines:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG) from None


def _stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, event.set)
    return event


# ----------------------------------------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    tags = sum(len(d.tags) for d in cfg.devices)
    print(f"{args.config}: OK: {len(cfg.devices)} devices, {tags} tags, {len(cfg.assets)} unconnected assets; "
          f"topic root {cfg.topic_root}")
    if args.tags:
        for dev in cfg.devices:
            print(f"{dev.id} ({dev.protocol} {dev.endpoint})")
            for tag in dev.tags:
                if isinstance(dev, ModbusDevice):
                    assert tag.table is not None and tag.address is not None  # type: ignore[union-attr]
                    where = f"{tag.table} {tag.address} (0-based wire address)"  # type: ignore[union-attr]
                    if tag.register_count() > 1:  # type: ignore[union-attr]
                        where += f" .. {tag.address + tag.register_count() - 1}"  # type: ignore[union-attr]
                else:
                    where = tag.node  # type: ignore[union-attr]
                print(f"  {tag.name:<24} {tag.type or '-':<8} {where}")
    return 0


# ----------------------------------------------------------------------------------------------- run


async def _run(cfg: CollectorConfig) -> int:
    from collector.app import Collector

    stop = _stop_event()
    collector = Collector(cfg, Settings())
    await collector.start()
    await stop.wait()
    await collector.stop()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from collector.logs import setup_logging

    cfg = _load(args.config)
    settings = Settings()
    setup_logging(args.log_level or settings.log_level, settings.log_format)
    return asyncio.run(_run(cfg))


# ----------------------------------------------------------------------------------------------- simulate


async def _simulate(cfg: CollectorConfig, devices: list[str] | None) -> int:
    from simulators.workshop import Workshop

    stop = _stop_event()
    workshop = Workshop(cfg, devices)
    await workshop.start()
    for dev in cfg.devices:
        if dev.id in workshop.by_device:
            print(f"serving {dev.id:<12} {dev.protocol:<7} {dev.endpoint}", flush=True)
    print("simulators ready (Ctrl-C to stop)", flush=True)
    await stop.wait()
    await workshop.stop()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from collector.logs import setup_logging

    cfg = _load(args.config)
    setup_logging(args.log_level or "WARNING")
    return asyncio.run(_simulate(cfg, args.device or None))


# ----------------------------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from collector.demo import run_demo
    from collector.logs import setup_logging

    cfg = _load(args.config)
    setup_logging(args.log_level or "WARNING")
    return asyncio.run(run_demo(cfg, args.duration, plain=args.plain))


# ----------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="collector", description="Shop-floor data collector (OPC UA, Modbus → MQTT) "
                                "with the 数字化设备联网率 and 装备数控化率 indicators.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("run", help="run a config until SIGINT/SIGTERM")
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("check", help="validate a config (exit 2 naming every bad field)")
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument("--tags", action="store_true", help="list every tag and where it is read (Modbus register)")
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
    s.add_argument("--log-level", help="log level (default WARNING)")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
