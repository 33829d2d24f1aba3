"""The OPC UA subcommands of `collector`: `certs` and `discover`.

Registered by `collector/cli.py`; everything heavy (asyncua, cryptography) is imported when a command runs, so
`collector --help` and `collector check` stay fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parsers(sub: Any) -> None:
    """Add `certs` and `discover` to the `collector` subparsers."""
    s = sub.add_parser("certs", help="create the OPC UA client certificate and PKI folder (own/, trusted/, rejected/)")
    s.add_argument("-c", "--config", help="take the PKI folder and ApplicationUri from this config's OPC UA devices")
    s.add_argument("--pki", help="PKI folder (default <state_dir>/pki, i.e. state/pki)")
    s.add_argument("--application-uri", help="ApplicationUri for the certificate's SAN "
                   "(default urn:shopfloor-collector:client)")
    s.add_argument("--force", action="store_true", help="replace an existing certificate and key")
    s.set_defaults(fn=cmd_certs)

    s = sub.add_parser("discover", help="browse an OPC UA server and print a ready-to-paste device config")
    s.add_argument("url", help="opc.tcp://host:port[/path]")
    s.add_argument("--filter", help="only variables whose browse path or node id contains this text")
    s.add_argument("--device-id", default="machine1", help="id of the printed device (default machine1)")
    s.add_argument("--username", help="user name (anonymous without)")
    s.add_argument("--password-env", help="env variable holding the password")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    s.set_defaults(fn=cmd_discover)


def _certs_targets(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """(pki dir, application uri) pairs to create: from the flags, or from every OPC UA device of a config."""
    from adapters.opcua.security import DEFAULT_APPLICATION_URI

    if args.config:
        from adapters.opcua.config import OpcUaDevice
        from collector.config.loader import load_config_or_exit

        cfg = load_config_or_exit(args.config)
        targets: dict[tuple[Path, str], None] = {}
        for dev in cfg.devices:
            if isinstance(dev, OpcUaDevice):
                pki = Path(args.pki) if args.pki else (dev.security.pki_dir or cfg.state_dir / "pki")
                targets[(pki, args.application_uri or dev.security.application_uri)] = None
        if targets:
            return list(targets)
        return [(Path(args.pki) if args.pki else cfg.state_dir / "pki",
                 args.application_uri or DEFAULT_APPLICATION_URI)]
    from collector.config.secrets import Settings

    pki = Path(args.pki) if args.pki else (Settings().state_dir or Path("state")) / "pki"
    return [(pki, args.application_uri or DEFAULT_APPLICATION_URI)]


def cmd_certs(args: argparse.Namespace) -> int:
    from adapters.opcua.security import Pki, SecurityError, create_certificate, describe

    status = 0
    for pki_dir, uri in _certs_targets(args):
        pki = Pki(pki_dir)
        try:
            cert, created = create_certificate(pki, uri, force=args.force)
        except SecurityError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        print(("created " if created else "kept existing ") + describe(cert, pki.cert))
        print(f"  key           {pki.key}\n  trusted       {pki.trusted}/  (put server certificates here)\n"
              f"  rejected      {pki.rejected}/  (refused server certificates land here)")
        print("next: give the server our certificate (it must trust it), and trust the server's certificate:\n"
              f"  a refused one is saved to {pki.rejected}/; `mv` it to {pki.trusted}/ to trust it.")
    return status


def cmd_discover(args: argparse.Namespace) -> int:
    import logging
    import os

    from adapters.opcua.config import ENDPOINT_RULE
    from adapters.opcua.discovery import discover
    from collector.config.base import parse_endpoint

    try:
        parse_endpoint(args.url, ENDPOINT_RULE)
    except ValueError as exc:  # `discover 10.0.3.17:4840`: say what to write, not what the library missed
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import asyncio

    logging.basicConfig(level=logging.ERROR)
    password = os.environ.get(args.password_env) if args.password_env else None
    try:
        text = asyncio.run(discover(args.url, device_id=args.device_id, text_filter=args.filter,
                                    username=args.username, password=password, timeout=args.timeout))
    except Exception as exc:  # connection refused, timeouts, refused user: one line, not a traceback
        from adapters.opcua.adapter import _describe

        print(f"error: cannot browse {args.url}: {_describe(exc, args.timeout)}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
