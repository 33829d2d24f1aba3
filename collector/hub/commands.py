"""`collector hub …`: the operators' commands (migrate, enroll, key, run, bulletin, incidents).

Exit codes as everywhere: 0 ok, 1 failure (no database, a bad record), 2 bad config or input (names the field).
Each command imports what it uses (collector.config.errors too: importing collector.config loads pydantic), so
building the `collector` parser costs nothing here."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def _config(args: argparse.Namespace) -> Any:
    from collector.config.errors import EXIT_BAD_CONFIG, ConfigError
    from collector.hub.config import load_hub_config

    try:
        return load_hub_config(args.config)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.lines)} error(s)", file=sys.stderr)
        for line in exc.lines:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG) from None


def _db(cfg: Any) -> Any:
    from collector.hub import db

    try:
        conn = db.connect(cfg.database_url())
        db.migrate(conn)
        return conn
    except db.DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_check(args: argparse.Namespace) -> int:
    from collector.hub.db import redact

    cfg = _config(args)
    cfg.mqtt_password()  # a password file that cannot be read, or is readable by others, is an error here too
    print(f"{args.config}: OK: hub {cfg.hub_id} for {cfg.name}, {len(cfg.counties)} counties; database "
          f"{redact(cfg.database_url())}; broker {cfg.mqtt.host}:{cfg.mqtt.port} as {cfg.mqtt.username} "
          f"({cfg.mqtt.client_id}, $share/{cfg.mqtt.group}/{cfg.mqtt.topic_prefix}/+/evidence/#); page "
          f"{cfg.http.listen or 'off'}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from collector.hub import db

    cfg = _config(args)
    try:
        conn = db.connect(cfg.database_url())
    except db.DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with conn:
        applied = db.migrate(conn)
        print(f"{db.redact(cfg.database_url())}: schema version {db.schema_version(conn)}"
              + (f" (applied {', '.join(map(str, applied))})" if applied else " (up to date)"))
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from collector.config.errors import EXIT_BAD_CONFIG
    from collector.hub.enroll import EnrolError, enrol, read_csv

    cfg = _config(args)
    try:
        rows = read_csv(Path(args.file), cfg.counties)
    except EnrolError as exc:
        print(f"{exc.source}: {len(exc.lines)} error(s); nothing enrolled", file=sys.stderr)
        for line in exc.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    conn = _db(cfg)
    with conn:
        try:
            res = enrol(conn, rows)
        except EnrolError as exc:
            print(f"{args.file}: {exc}; nothing enrolled", file=sys.stderr)
            return EXIT_BAD_CONFIG
    print(f"{args.file}: {len(rows)} enterprise(s): {res.enterprises_new} new, {res.enterprises_updated} updated; "
          f"{res.keys_new} new key(s)")
    return 0


def _signer(cfg: Any) -> Any:
    from collector.evidence import keys

    try:
        signer, created = keys.init(cfg.state_dir)
    except (keys.KeyFileError, OSError) as exc:
        print(f"error: the hub's key in state_dir {cfg.state_dir}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    return signer, created


def cmd_key(args: argparse.Namespace) -> int:
    from collector.evidence.keys import public_b64, show_fingerprint

    cfg = _config(args)
    signer, created = _signer(cfg)
    print(f"{'created' if created else 'hub key'} {cfg.state_dir}/evidence-key.pem")
    print(f"fingerprint {show_fingerprint(signer.fingerprint)}")
    print(f"public key  {public_b64(signer.public)}")
    print("give the public key to the enterprises: their collectors check the hub's receipts with it")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from collector.config.errors import EXIT_BAD_CONFIG, ConfigError
    from collector.hub import db
    from collector.hub.page import serve
    from collector.hub.service import HubService
    from collector.logs import setup_logging

    setup_logging(args.log_level or "INFO")
    cfg = _config(args)
    cfg.mqtt_password()  # before anything starts: an unusable password file is a config error (exit 2)
    try:
        with db.migrated(cfg.database_url()):
            pass
        pool = db.open_pool(cfg.database_url())
    except db.DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    signer, _ = _signer(cfg)
    try:
        service = HubService(cfg, pool, signer)
    except ConfigError as exc:
        print(f"{exc.source}: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    page = None
    if cfg.http.listen is not None:
        try:
            page = serve(cfg, pool)
        except OSError as exc:
            print(f"error: http.listen {cfg.http.listen}: {exc.strerror} (another process holds the port? set "
                  "http.listen to a free one, or null)", file=sys.stderr)
            return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    logging.getLogger("collector.hub").info("hub %s running: broker %s:%s, page %s", cfg.hub_id, cfg.mqtt.host,
                                            cfg.mqtt.port, cfg.http.listen)
    service.wait(stop)
    service.stop()
    if page is not None:
        page.shutdown()
    pool.close()
    return 0


def cmd_bulletin(args: argparse.Namespace) -> int:
    from collector.config.errors import EXIT_BAD_CONFIG
    from collector.hub.bulletin import build, parse_period
    from collector.hub.render import banner_text, render

    cfg = _config(args)
    try:
        period = parse_period(args.period)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.county is not None and args.county not in cfg.counties:
        print(f"--county '{args.county}' is not one of {'、'.join(cfg.counties)}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    conn = _db(cfg)
    with conn:
        bulletin = build(conn, period, cfg.counties, args.county, cfg.name, count_simulated=cfg.count_simulated)
    text = render(bulletin, args.format, args.lang)
    if bulletin.get("banner") and args.format == "csv":  # in the CSV's last column too; said where one looks
        print(banner_text(bulletin, args.lang), file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_incidents(args: argparse.Namespace) -> int:
    cfg = _config(args)
    conn = _db(cfg)
    with conn:
        rows = conn.execute("SELECT i.received_at, i.enterprise_id, e.name, i.workshop, i.seq, i.reason "
                            "FROM incidents i JOIN enterprises e ON e.id = i.enterprise_id "
                            "ORDER BY i.received_at, i.id").fetchall()
    for r in rows:
        print(f"{r['received_at'].isoformat(timespec='seconds')}  {r['enterprise_id']} {r['name']}  "
              f"{r['workshop']} seq {r['seq']}: 数据异常 {r['reason']}")
    if not rows:
        print("no incidents (无数据异常)")
    return 0


def _checked(fn: Any) -> Any:
    """A ConfigError raised after loading (the password file) exits 2 like one found while loading."""
    def run(args: argparse.Namespace) -> int:
        from collector.config.errors import EXIT_BAD_CONFIG, ConfigError

        try:
            return int(fn(args))
        except ConfigError as exc:
            print(f"{args.config}: {exc}", file=sys.stderr)
            return EXIT_BAD_CONFIG
    return run


def add_parsers(sub: Any) -> None:
    hub = sub.add_parser("hub", help="the county/city hub: enrol enterprises, receive and verify their evidence, "
                                     "bulletin (docs/hub.md)")
    hs = hub.add_subparsers(dest="hub_command", required=True, metavar="HUB_COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", required=True, help="hub.yaml (docs/hub.md)")

    s = hs.add_parser("check", help="validate hub.yaml (exit 2 naming every bad field)")
    common(s)
    s.set_defaults(fn=_checked(cmd_check))
    s = hs.add_parser("migrate", help="create or upgrade the hub's PostgreSQL schema")
    common(s)
    s.set_defaults(fn=cmd_migrate)
    s = hs.add_parser("enroll", help="enrol enterprises and their keys from a CSV (统一社会信用代码, 企业名称, …)")
    common(s)
    s.add_argument("file", help="CSV, UTF-8 (docs/hub.md lists the columns)")
    s.set_defaults(fn=cmd_enroll)
    s = hs.add_parser("key", help="create (first time) and show the hub's receipt-signing key")
    common(s)
    s.set_defaults(fn=cmd_key)
    s = hs.add_parser("run", help="receive evidence from the broker (shared subscription) until SIGTERM")
    common(s)
    s.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    s.set_defaults(fn=_checked(cmd_run))
    s = hs.add_parser("bulletin", help="the monthly bulletin per county and for the city (月度通报)")
    common(s)
    s.add_argument("--period", required=True, help="the month, YYYY-MM")
    s.add_argument("--county", help="one county only")
    s.add_argument("--format", choices=("html", "csv", "json"), default="html")
    s.add_argument("--lang", choices=("zh", "en"), default="zh")
    s.add_argument("-o", "--output", help="write to this file instead of stdout")
    s.set_defaults(fn=cmd_bulletin)
    s = hs.add_parser("incidents", help="list refused contradicting records (数据异常)")
    common(s)
    s.set_defaults(fn=cmd_incidents)
