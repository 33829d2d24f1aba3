"""`collector write` (one request through the running collector's HTTP API, with its token) and
`collector writes` (the audit log, read from the state directory)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def parse_value(text: str) -> Any:
    """A command-line VALUE as JSON (`42`, `12.5`, `true`, `"text"`); anything else is a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_write(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.parse

    from collector.cli import _api, _call, _not_this_collector

    base, token, cfg = _api(args)
    if not token:
        print("collector write: no token: writes need the HTTP token (COLLECTOR_HTTP_TOKEN or the config's "
              "http.token_file)", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"tag": args.tag, "value": parse_value(args.value)}
    if args.id:
        body["id"] = args.id
    try:
        if cfg is not None:  # never write through another collector that holds this one's port
            code, status = _call(f"{base}/api/status", token)
            refusal = _not_this_collector(cfg, status.get("gateway") if isinstance(status, dict) else None, base)
            if code == 200 and refusal is not None:
                print(f"collector write: {refusal}", file=sys.stderr)
                return 1
        device = urllib.parse.quote(args.device, safe="")
        code, result = _call(f"{base}/api/devices/{device}/write", token, method="POST", timeout=60.0,
                             body=json.dumps(body).encode(), headers={"Content-Type": "application/json",
                                                                       "X-Collector-Client": "cli"})
    except (urllib.error.URLError, OSError) as exc:
        print(f"collector not reachable at {base}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    if not isinstance(result, dict):
        print(f"{base}: HTTP {code}: {result}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    elif result.get("status") == "ok":
        print(f"写入成功 (ok): {args.device}.{args.tag} = {result.get('readback')!r} "
              f"(原值 was {result.get('old')!r})")
    else:
        print(f"{result.get('status')}: {result.get('code')}: {result.get('reason')}", file=sys.stderr)
    return 0 if result.get("status") == "ok" else 1


def cmd_writes(args: argparse.Namespace) -> int:
    from collector.config import Settings, effective_state_dir, load_config_or_exit
    from collector.writes.audit import AUDIT_FILE, read_audit

    cfg = load_config_or_exit(args.config)
    path = effective_state_dir(cfg, Settings()) / AUDIT_FILE
    try:
        records = [r for r in read_audit(path) if args.device is None or r.get("device") == args.device]
    except OSError as exc:
        print(f"collector writes: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.last:
        records = records[-args.last:]
    if args.json:
        print(json.dumps(records, ensure_ascii=False, indent=2))
        return 0
    if not records:
        print(f"no write requests recorded in {path}")
        return 0
    for r in records:
        outcome = r.get("code") or f"readback {r.get('readback')!r}"
        print(f"{r.get('ts')}  {r.get('by')} ({r.get('via')})  {r.get('device')}.{r.get('tag')}  "
              f"{r.get('old')!r} -> {r.get('value')!r}  {r.get('status')}  {outcome}")
    return 0


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("write", help="write one tag through the running collector (guard rails, audit log)")
    s.add_argument("-c", "--config", help="config of the running collector (for http.listen and the token)")
    s.add_argument("--url", help="base URL instead (default http://127.0.0.1:8321)")
    s.add_argument("--id", help="request id for the audit log (default: a new UUID)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("device", help="device id")
    s.add_argument("tag", help="tag name")
    s.add_argument("value", help="value as JSON: 42, 12.5, true, \"text\" (else taken as a string)")
    s.set_defaults(fn=cmd_write)

    s = sub.add_parser("writes", help="list the write audit log (who, when, device, tag, old and new value)")
    s.add_argument("-c", "--config", required=True, help="YAML config file (for the state directory)")
    s.add_argument("--device", help="only this device")
    s.add_argument("--last", type=int, default=0, help="only the last N records")
    s.add_argument("--json", action="store_true", help="print the records as JSON")
    s.set_defaults(fn=cmd_writes)
