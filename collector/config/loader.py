"""Reading a config: YAML to `CollectorConfig`, with every problem at once, each as one line that names the
path the user wrote (`devices[3].tags[2].type: ...`) and, where it can, the fix or the near miss."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ValidationError

from collector.config.base import SUBPATH, show
from collector.config.errors import EXIT_BAD_CONFIG, ConfigError
from collector.config.root import (
    PROTOCOLS,
    CollectorConfig,
    Device,
    device_models,
    expand_templates,
    set_default_pki_dirs,
)
from collector.config.secrets import http_errors

_UNION_TAGS = set(PROTOCOLS)
_UNION_BRANCHES = {"int", "str", "float", "bool", "none", "list", "dict", "tuple", "date", "path"}


def format_loc(loc: Iterable[int | str]) -> str:
    """('devices', 3, 'modbus', 'tags', 2, 'type') -> 'devices[3].tags[2].type'."""
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(prev, int) and part in _UNION_TAGS:
            pass  # the discriminated union's branch name is not something the user wrote
        elif isinstance(prev, str) and (str(part) in _UNION_BRANCHES or str(part).startswith(("function-", "lax-"))):
            pass  # nor is the branch of a union like `int | str` (register: 40001 or "40001")
        else:
            out += ("." if out else "") + str(part)
        prev = part
    return out or "(top level)"


TYPE_SYNONYMS = {"float": "float32", "real": "float32", "double": "float64", "lreal": "float64", "float32": "float",
                 "float64": "double", "int": "int16", "short": "int16", "word": "uint16", "ushort": "uint16",
                 "dint": "int32", "long": "int32", "dword": "uint32", "udint": "uint32", "boolean": "bool",
                 "str": "string", "text": "string"}
"""What PLC and programming-language names mean among our types (Modbus float32 is OPC UA float)."""


def near_miss(given: object, options: Iterable[str]) -> str | None:
    """The option the user most likely meant: a known synonym first, then the closest spelling."""
    return _near_miss(str(given).strip(), tuple(options))


@functools.lru_cache(maxsize=1024)
def _near_miss(text: str, opts: tuple[str, ...]) -> str | None:
    """Cached: a file with 200,000 times the same slip would otherwise spend most of `check` in difflib."""
    import difflib

    synonym = TYPE_SYNONYMS.get(text.lower())
    if synonym in opts:
        return synonym
    if text.lower() in opts:
        return text.lower()
    close = difflib.get_close_matches(text, opts, n=1, cutoff=0.6)
    return close[0] if close else None


def _inner(annotation: Any, part: int | str) -> Any:
    """The type one step down `part` (a key or an index) from `annotation`, or None."""
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _inner(args[0], part)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field_info = annotation.model_fields.get(str(part))
        return field_info.annotation if field_info is not None else None
    if origin in (list, tuple) and isinstance(part, int):
        return args[0] if args else None
    if origin is dict and isinstance(part, str):
        return args[1] if len(args) == 2 else None
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    if isinstance(part, str) and len(models) > 1:  # a discriminated union: `part` names the branch
        return next((m for m in models if "protocol" in m.model_fields
                     and m.model_fields["protocol"].default == part), None)
    return _inner(models[0], part) if len(models) == 1 else None


def allowed_keys(loc: Sequence[int | str]) -> list[str]:
    """The keys the model at `loc` (a pydantic error location, minus the bad key) accepts."""
    annotation: Any = CollectorConfig
    for part in loc:
        annotation = _inner(annotation, part)
        if annotation is None:
            return []
    while not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        import typing

        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1 and typing.get_origin(annotation) is not Annotated:
            return []
        annotation = args[0]
    return [f.alias or name for name, f in annotation.model_fields.items()]


def _installed(sep: str, quote: str = "'") -> str:
    names = [f"{quote}{n}{quote}" for n in PROTOCOLS]
    return ", ".join(names[:-1]) + sep + names[-1] if len(names) > 1 else "".join(names)


def _broken(protocol: object) -> str:
    """`; <name> is installed but did not load: <why>` for a plugin whose entry point failed."""
    from adapters.base import registry

    if isinstance(protocol, dict):
        protocol = protocol.get("protocol")
    why = registry.broken.get(str(protocol))
    return f"; {protocol} is installed but did not load: {why}" if why else ""


def format_errors(exc: ValidationError) -> list[str]:
    lines: list[str] = []
    for err in exc.errors():
        path = format_loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if msg.startswith(SUBPATH):
            for line in msg.split("\n"):
                sub, _, text = line.removeprefix(SUBPATH).partition(": ")
                lines.append(f"{path}{'' if sub.startswith('[') else '.'}{sub}: {text}")
            continue
        if err["type"] == "extra_forbidden":
            guess = near_miss(err["loc"][-1], allowed_keys(err["loc"][:-1]))
            msg = (f"unknown key; did you mean '{guess}'?" if guess else "unknown key (check the spelling)") \
                + " See docs/config.md for the allowed keys"
        elif err["type"] == "union_tag_invalid":
            msg = f"protocol must be {_installed(' or ')} (the installed protocols){_broken(err.get('input'))}"
        elif err["type"] == "union_tag_not_found":
            msg = f"protocol is missing: give protocol: {_installed(' or ', quote='')} (or a template: that has one)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("value_error", "assertion_error") \
                and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {show(err['input'])})"
            if err["type"] == "literal_error":
                guess = near_miss(err["input"], re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected"))))
                if guess is not None:
                    msg += f"; did you mean '{guess}'?"
        if lines and lines[-1].startswith(f"{path}: "):  # the branches of a union (`int | str`): one line
            lines[-1] += f"; or: {msg}"
            continue
        lines.append(f"{path}: {msg}")
    return lines


def _entries(value: Any) -> list[tuple[int, dict[str, Any]]]:
    """(index, entry) of the mappings in a list as written; anything else is left to the field validation."""
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] if isinstance(value, list) else []


def _duplicate_tag_names(tags: Any, where: str, owner: str) -> list[str]:
    lines: list[str] = []
    first: dict[str, int] = {}
    for j, tag in _entries(tags):
        name = tag.get("name")
        if not isinstance(name, str):
            continue
        if name in first:
            lines.append(f"{where}.tags[{j}].name: tag name '{name}' is already used by {where}.tags[{first[name]}] "
                         f"of {owner}; tag names must be unique in a device")
        first.setdefault(name, j)
    return lines


def reference_errors(data: Any) -> list[str]:
    """Checks across entries (unique ids and tag names, bindings, template names), each naming the path of the
    culprit. They read the data as written, so they are reported together with the field errors, not after."""
    if not isinstance(data, dict):
        return []
    lines: list[str] = []
    templates: dict[Any, Any] = data["templates"] if isinstance(data.get("templates"), dict) else {}
    ids: dict[str, int] = {}
    for i, dev in _entries(data.get("devices")):
        dev_id = dev.get("id")
        if isinstance(dev_id, str):
            if dev_id in ids:
                lines.append(f"devices[{i}].id: device id '{dev_id}' is already used by devices[{ids[dev_id]}]; "
                             "device ids must be unique")
            ids.setdefault(dev_id, i)
        template = dev.get("template")
        if isinstance(template, str) and template not in templates:
            lines.append(f"devices[{i}].template: '{template}' is not defined under templates:")
        lines += _duplicate_tag_names(dev.get("tags"), f"devices[{i}]", f"device '{dev_id}'")
    for name, tpl in templates.items():
        if isinstance(tpl, dict):
            lines += _duplicate_tag_names(tpl.get("tags"), f"templates.{name}", f"template '{name}'")
    asset_ids: dict[str, int] = {}
    bound: dict[str, int] = {}
    for i, asset in _entries(data.get("assets")):
        asset_id, device = asset.get("id"), asset.get("device")
        if isinstance(asset_id, str):
            if asset_id in asset_ids:
                lines.append(f"assets[{i}].id: asset id '{asset_id}' is already used by assets[{asset_ids[asset_id]}]")
            asset_ids.setdefault(asset_id, i)
        if isinstance(device, str):
            if device not in ids:
                lines.append(f"assets[{i}].device: '{device}' is not a configured device id")
            elif device in bound:
                lines.append(f"assets[{i}].device: device '{device}' is already bound by assets[{bound[device]}]")
            bound.setdefault(device, i)
        elif device is None and isinstance(asset_id, str) and asset_id in ids:
            lines.append(f"assets[{i}].id: '{asset_id}' is also a device id; bind it with device: {asset_id} "
                         "or rename it")
    return lines



def across_device_errors(cfg: CollectorConfig) -> list[str]:
    """Errors between devices of one protocol (`DeviceBase.across_devices`; OPC UA: one PKI folder, one
    ApplicationUri), each naming its path."""
    lines: list[str] = []
    for model in device_models():
        lines += model.across_devices([(i, d) for i, d in enumerate(cfg.devices) if isinstance(d, model)])
    return lines






def load_config_or_exit(path: str) -> CollectorConfig:
    """For commands: the config, or every error on stderr (each names its field and the fix) and exit 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print_problems(exc.source, exc.lines, "error")
        raise SystemExit(EXIT_BAD_CONFIG) from None


MAX_PRINTED = 50
"""Problems printed per kind: past that it is the wrong file or one systematic slip, and the rest would hide it."""


def print_problems(source: str, lines: list[str], kind: Literal["error", "warning"]) -> None:
    """`source: N error(s)` and one indented line per problem (the first MAX_PRINTED) on stderr."""
    print(f"{source}: {len(lines)} {kind}(s)", file=sys.stderr)
    for line in lines[:MAX_PRINTED]:
        print(f"  {line}", file=sys.stderr)
    if len(lines) > MAX_PRINTED:
        print(f"  ... and {len(lines) - MAX_PRINTED} more {kind}s not shown (fix these first)", file=sys.stderr)


def parse_config(data: Any, source: str = "<config>") -> CollectorConfig:
    """Validate config data: every error at once (field errors, then the checks across entries)."""
    references = reference_errors(data)
    try:
        cfg = CollectorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_errors(exc) + references, data) from None
    lines = references + http_errors(cfg) + across_device_errors(cfg)
    if lines:
        raise ConfigError(source, lines, data)
    return cfg


def partial_config(data: Any) -> CollectorConfig | None:
    """The parts of `data` that validate on their own (other sections at their defaults, devices that do not
    validate left out), so `check` can run the start checks (collector/preflight.py) on them while other parts
    still have errors, and report everything in one run. None when `data` is no mapping."""
    from pydantic import TypeAdapter

    if not isinstance(data, dict):
        return None
    values: dict[str, Any] = {}
    for name in ("mqtt", "http", "state_dir", "influx"):
        if name in data:
            try:
                annotation: Any = CollectorConfig.model_fields[name].annotation
                values[name] = TypeAdapter(annotation).validate_python(data[name])
            except ValidationError:
                pass
    devices = []
    expanded = expand_templates(data)
    for dev in expanded.get("devices") if isinstance(expanded.get("devices"), list) else []:
        try:
            devices.append(TypeAdapter(Device).validate_python(dev))
        except ValidationError:
            pass
    cfg = CollectorConfig.model_construct(**values, devices=devices)
    set_default_pki_dirs(cfg)
    return cfg


def load_config(path: str | Path) -> CollectorConfig:
    """Read and validate a YAML config; raises ConfigError naming every bad field."""
    from collector.yamlfile import MAX_CONFIG_BYTES, YamlProblems, decode_config, parse_yaml

    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read config: {exc.strerror}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(p), [f"(top level): the file is larger than {MAX_CONFIG_BYTES // 2**20} MB; a config "
                                   "that big is not one you wrote: check it is the right file"])
    try:
        data, problems = parse_yaml(decode_config(raw))
    except YamlProblems as exc:
        raise ConfigError(str(p), exc.lines) from None
    if not isinstance(data, dict):
        raise ConfigError(str(p), [*problems, "(top level): the config must be a mapping with site:, mqtt:, "
                                   "devices: ..."])
    try:
        cfg = parse_config(data, str(p))
    except ConfigError as exc:
        raise ConfigError(str(p), problems + exc.lines, data) from None
    if problems:
        raise ConfigError(str(p), problems, data)
    return cfg
