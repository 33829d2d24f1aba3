"""Secrets and per-host settings: the COLLECTOR_* environment, secret files (never the YAML itself), the HTTP
token policy, and the checks of the files and folders `run` needs."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from collector.config.base import show

if TYPE_CHECKING:
    from collector.config.root import CollectorConfig



class Settings(BaseSettings):
    """Process settings from the environment (`COLLECTOR_*`): secrets and per-host overrides."""

    model_config = SettingsConfigDict(env_prefix="COLLECTOR_", extra="ignore")

    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_url: str | None = None
    state_dir: Path | None = None
    log_level: str = "INFO"
    log_format: Literal["kv", "json"] = "kv"
    http_token: SecretStr | None = None
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"  # auto: uvloop when installed (collector/runtime.py)



def settings_errors() -> list[str]:
    """The COLLECTOR_* variables that do not validate, each named as the variable (they are not in the YAML)."""
    try:
        Settings()
    except ValidationError as exc:
        return [f"COLLECTOR_{str(err['loc'][0]).upper()} (env): {err['msg']} (got {show(err.get('input'))})"
                for err in exc.errors()]
    return []


def read_secret(env_name: str | None, file: Path | None) -> str | None:
    """A secret from an env variable or a file (first line, stripped; None when empty); never from the YAML
    itself. `collector.preflight` checks the files before `run` starts."""
    if env_name and os.environ.get(env_name):
        return os.environ[env_name]
    if file is not None:
        return next(iter(file.read_text(encoding="utf-8").splitlines()), "").strip() or None
    return None



def http_token(cfg: CollectorConfig, env: dict[str, str] | None = None) -> str | None:
    """The HTTP API token: env `COLLECTOR_HTTP_TOKEN`, else the first line of `http.token_file`; never YAML."""
    env_value = (os.environ if env is None else env).get("COLLECTOR_HTTP_TOKEN")
    if env_value:
        return env_value.strip()
    if cfg.http.token_file is not None:
        try:
            return read_secret(None, cfg.http.token_file) or None
        except (OSError, IndexError):
            return None
    return None


def http_errors(cfg: CollectorConfig) -> list[str]:
    """An HTTP endpoint reachable from the network must have a token (the status page shows the plant)."""
    h = cfg.http
    if not h.enabled or h.loopback:
        return []
    if h.token_file is not None and http_token(cfg, {}) is None and not os.environ.get("COLLECTOR_HTTP_TOKEN"):
        return [f"http.token_file: cannot read a token from '{h.token_file}'"]
    if http_token(cfg) is None:
        return [f"http.listen: '{h.listen}' is not a loopback address, so a token is required: set "
                "COLLECTOR_HTTP_TOKEN or http.token_file"]
    return []


def folder_errors(path: Path, field: str, what: str) -> list[str]:
    """`path` is a folder the service can write in, or can be created: else one line naming `field` and the fix.
    Writability is tried (an unnamed temporary file), not guessed from mode bits, so root and ACLs count."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is" if probe == path else f"cannot be created: {probe} is"
        return [f"{field}: {path} {where} a file, not a folder; point {field} to a folder ({what})"]
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        verb = "write in" if probe == path else f"create {path} in"
        return [f"{field}: cannot {verb} {probe}: {exc.strerror or exc}; give the service user write access "
                f"(chown) or choose another folder ({what})"]
    return []


def loose_mode(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


def secret_file_problems(path: Path, field: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) of a secret file: it must exist and hold the secret on its first line; readable by
    others is legal but a warning (secrets are mode 0600)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [f"{field}: {path} does not exist; create it with the secret on its first line (chmod 600)"], []
    except IsADirectoryError:
        return [f"{field}: {path} is a folder; name the file that holds the secret"], []
    except OSError as exc:
        return [f"{field}: cannot read {path}: {exc.strerror or exc}; give the service user read access"], []
    except UnicodeDecodeError:
        return [f"{field}: {path} is not UTF-8 text; put the secret on its first line as plain text"], []
    if not next(iter(text.splitlines()), "").strip():
        return [f"{field}: {path} has no secret on its first line; put it there (the rest is ignored)"], []
    if loose_mode(path):
        return [], [f"{field}: {path} can be read by other users; chmod 600 {path}"]
    return [], []
