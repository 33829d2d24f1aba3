"""What `collector run` needs from this machine at start: folders it can write, secret files it can read, TLS
files that load. `collector check` runs the same `startup_check`, so a config it accepts does not die at start
with a traceback, and `run` refuses (exit 2) with the same messages before it touches anything. A reload runs
it too (`checked_config`) and refuses with the same messages, keeping the running config.

The answer depends on where it runs (files, permissions, COLLECTOR_* env): run `check` as the service user
with the service's environment to see what `run` will see.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from pathlib import Path

from collector.config import (
    CollectorConfig,
    Settings,
    effective_state_dir,
    folder_errors,
    loose_mode,
    secret_file_problems,
    settings_errors,
    url_with_scheme,
)


def _no_password() -> bytes:
    raise ValueError("the key is encrypted")


def tls_problems(ca_file: Path | None, cert_file: Path | None, key_file: Path | None,
                 section: str = "mqtt") -> tuple[list[str], list[str]]:
    """(errors, warnings) of the MQTT TLS files (of `section`): each loads the way paho's tls_set will load it."""
    errors: list[str] = []
    warnings: list[str] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for field, path in ((f"{section}.ca_file", ca_file), (f"{section}.cert_file", cert_file),
                        (f"{section}.key_file", key_file)):
        if path is not None and not path.is_file():
            errors.append(f"{field}: {path} does not exist (or is not a file); copy the file there or fix the path")
    if errors:
        return errors, warnings
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (ssl.SSLError, OSError, ValueError) as exc:
            errors.append(f"{section}.ca_file: {ca_file} is not a PEM CA certificate the TLS library can load ({exc})")
    if key_file is not None and cert_file is None:
        errors.append(f"{section}.key_file: a client key goes with {section}.cert_file (the client certificate); "
                      "set both")
    elif cert_file is not None:
        try:
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None, password=_no_password)
        except (ssl.SSLError, OSError, ValueError) as exc:
            errors.append(f"{section}.cert_file: {cert_file} with key {key_file or '(in the same file)'} does not load "
                          f"as a PEM certificate and unencrypted key ({exc})")
    if key_file is not None and loose_mode(key_file):
        warnings.append(f"{section}.key_file: {key_file} can be read by other users; chmod 600 {key_file}")
    return errors, warnings


def _http_listen_warning(cfg: CollectorConfig) -> list[str]:
    """The status page is not vital (run goes on without it), but an address not on this host is worth a word."""
    h = cfg.http
    if not h.enabled:
        return []
    family = socket.AF_INET6 if ":" in h.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((h.host, h.port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return []  # most often the running collector itself: nothing to say before a reload
        return [f"http.listen: cannot listen on {h.listen} here ({exc.strerror or exc}); the collector runs without "
                "its status page: use an address of this host, 127.0.0.1 or 0.0.0.0"]
    return []


def _hub_problems(cfg: CollectorConfig) -> tuple[list[str], list[str]]:
    """`evidence.hub`: a password to give the hub's broker (env or a 0600 file) and its TLS files."""
    hub = cfg.evidence.hub
    if hub is None:
        return [], []
    errors: list[str] = []
    warnings: list[str] = []
    if not os.environ.get("COLLECTOR_HUB_PASSWORD"):
        if hub.password_file is None:
            errors.append("evidence.hub.password_file: the hub's broker needs the enterprise's password: put it "
                          "in a file (chmod 600) named here, or in the environment as COLLECTOR_HUB_PASSWORD")
        else:
            e, w = secret_file_problems(hub.password_file, "evidence.hub.password_file")
            errors += e
            warnings += w
    if hub.scheme == "mqtts":
        e, w = tls_problems(hub.ca_file, hub.cert_file, hub.key_file, "evidence.hub")
        errors += e
        warnings += w
    return errors, warnings


def startup_check(cfg: CollectorConfig, settings: Settings | None = None) -> tuple[list[str], list[str]]:
    """(errors, warnings) about what `run` opens at start, each naming its field and the fix."""
    if settings is None:
        bad_env = settings_errors()
        if bad_env:
            return bad_env, []
        settings = Settings()
    errors: list[str] = []
    warnings: list[str] = []

    def add(found: tuple[list[str], list[str]]) -> None:
        errors.extend(found[0])
        warnings.extend(found[1])

    state_field = "COLLECTOR_STATE_DIR" if settings.state_dir else "state_dir"
    errors += folder_errors(effective_state_dir(cfg, settings), state_field, "it holds status.db and outbox.db")
    m = cfg.mqtt
    url = m.url
    if settings.mqtt_url:
        try:
            url = url_with_scheme(settings.mqtt_url, ("mqtt", "mqtts"), "a broker URL; use mqtt://host:1883 or "
                                  "mqtts://host:8883")
        except ValueError as exc:
            errors.append(f"COLLECTOR_MQTT_URL (env, overrides mqtt.url): {exc}")
    if m.password_file is not None and settings.mqtt_password is None:
        add(secret_file_problems(m.password_file, "mqtt.password_file"))
    if url.startswith("mqtts://"):
        add(tls_problems(m.ca_file, m.cert_file, m.key_file))
    else:
        for field in ("ca_file", "cert_file", "key_file"):
            if getattr(m, field) is not None:
                warnings.append(f"mqtt.{field}: ignored, the broker URL {url} is plain MQTT; use mqtts:// for TLS")
    if cfg.influx is not None and cfg.influx.token_file is not None and not os.environ.get(cfg.influx.token_env):
        add(secret_file_problems(cfg.influx.token_file, "influx.token_file"))
    if cfg.http.token_file is not None and loose_mode(cfg.http.token_file):
        warnings.append(f"http.token_file: {cfg.http.token_file} can be read by other users; chmod 600 "
                        f"{cfg.http.token_file}")
    add(_hub_problems(cfg))
    seen: set[object] = set()
    for i, dev in enumerate(cfg.devices):
        add(dev.start_problems(f"devices[{i}]", seen))
    errors += adapter_problems(cfg)
    warnings += _http_listen_warning(cfg)
    return errors, warnings


def adapter_problems(cfg: CollectorConfig) -> list[str]:
    """A protocol's adapter module is imported only for a config that uses it (adapters/base.py): import it
    here for each protocol of an enabled device, and what each device's adapter imports on connect
    (`Adapter.import_libraries`: pymodbus for a Modbus RTU line), so a missing protocol library is named by
    `check` and stops `run` before it starts, instead of failing a device task later."""
    from adapters.base import registry

    errors: list[str] = []
    failed: set[str] = set()
    for i, dev in enumerate(cfg.devices):
        if not dev.enabled or dev.protocol in failed:
            continue
        try:
            registry.get(dev.protocol).adapter_class().import_libraries(dev)
        except Exception as exc:
            failed.add(dev.protocol)
            errors.append(f"devices[{i}]: protocol {dev.protocol}: its adapter does not load ({type(exc).__name__}: "
                          f"{exc}); reinstall the package that provides it (pip install -e . for the built-in ones)")
    return errors


def checked_config(path: str | Path, settings: Settings) -> tuple[CollectorConfig, list[str]]:
    """A config file as `run` takes it at start, for a reload: read and validated (`load_config`), then
    `startup_check`, so a reload refuses what `check` refuses, with the same lines. Returns the config and its
    warnings (`config_warnings` first, as `check` prints them); raises ConfigError.

    Blocking all through (the file, libyaml, pydantic, a protocol's first adapter import): a flat config of
    20,000 tags takes seconds, so the running collector calls this in a worker thread (`Collector.reload_file`)."""
    from collector.config import ConfigError, load_config
    from collector.lint import config_warnings

    cfg = load_config(path)
    errors, warnings = startup_check(cfg, settings)
    if errors:
        raise ConfigError(str(path), errors)
    return cfg, config_warnings(cfg) + warnings
