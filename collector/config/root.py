"""The whole config (`CollectorConfig`): site, HTTP, templates and the devices, whose union is built from the
installed protocol plugins (adapters/base.py `registry`), plus template expansion and the state folder."""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator, model_validator

from adapters.base import registry
from collector.config.assets import AssetEntry
from collector.config.base import DeviceBase, Strict, TagBase, _not_a_bool
from collector.config.indicators import EvidenceConfig, IndicatorConfig
from collector.config.secrets import Settings
from collector.config.sinks import InfluxConfig, MqttConfig, OutboxConfig
from collector.config.site import HttpConfig, SiteConfig
from collector.states.config import StatesConfig
from collector.writes.config import WritesConfig


def _protocol_models() -> dict[str, type[DeviceBase]]:
    """Each loadable protocol's device model by name, in registry order (each imported now, if named lazily; a
    plugin whose model does not import is left out, `registry.broken` says why)."""
    loaded: dict[str, type[DeviceBase]] = {}
    for name, model in registry.load_models().items():
        if not issubclass(model, DeviceBase):
            raise TypeError(f"protocol '{name}': its device_model must build on collector.config.base.DeviceBase")
        loaded[name] = model
    return loaded


def device_models() -> tuple[type[DeviceBase], ...]:
    """The device model of every installed protocol, in registry order."""
    return tuple(_protocol_models().values())


def tag_model(device_model: type[BaseModel]) -> type[TagBase] | None:
    """The tag model of a protocol's devices (the item type of its `tags:` list)."""
    args = typing.get_args(device_model.model_fields["tags"].annotation)
    return args[0] if args and isinstance(args[0], type) and issubclass(args[0], TagBase) else None


_LOADED = _protocol_models()
_MODELS = tuple(_LOADED.values())
PROTOCOLS: tuple[str, ...] = tuple(_LOADED)
_TAG_MODELS: dict[str, type[TagBase] | None] = {p: tag_model(m) for p, m in _LOADED.items()}

if TYPE_CHECKING:
    Device = Any
    ProtocolName = str
else:
    Device = (Annotated[typing.Union[_MODELS], Field(discriminator="protocol")] if len(_MODELS) > 1  # noqa: UP007
              else _MODELS[0])
    ProtocolName = Literal[PROTOCOLS]


class TemplateConfig(Strict):
    """A reusable tag list (and defaults) that devices name with `template:`."""

    protocol: ProtocolName
    description: str | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)
    tags: list[dict[str, Any]] = Field(min_length=1)



def _validate_repeated_tags(devices: list[Any]) -> list[Any]:
    """Many configs list the same tags on many devices (one machine type, a template, an exported tag list).
    Validate each distinct tag once and give every device listing it that one instance (pydantic keeps model
    instances as they are): a hundred copies then cost the time and memory of one. A tag that does not
    validate stays a plain dict, so pydantic reports it with its full path (`devices[3].tags[2].type`). Tags
    given by a classic `register` are left to each device: its `address_base` resolves them."""
    models = _TAG_MODELS
    seen: dict[tuple[Any, ...], Any] = {}
    out: list[Any] = []
    for dev in devices:
        model = models.get(str(dev.get("protocol"))) if isinstance(dev, dict) else None
        if model is None or not isinstance(dev.get("tags"), list):
            out.append(dev)
            continue
        tags: list[Any] = []
        for raw in dev["tags"]:
            if not isinstance(raw, dict) or "register" in raw:
                tags.append(raw)  # a classic register is resolved per device (`_resolve_registers` sets it)
                continue
            try:
                key = (model, json.dumps(raw, sort_keys=True))
            except (TypeError, ValueError, RecursionError):
                tags.append(raw)
                continue
            if key not in seen:
                try:
                    seen[key] = model.model_validate(raw)
                except ValidationError:
                    seen[key] = raw
            tags.append(seen[key])
        out.append({**dev, "tags": tags})
    return out


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def expand_templates(data: Any) -> Any:
    """Expand `template:` on devices: the template's defaults and tags, then the device's own on top.
    Then validate each distinct tag once (`_validate_repeated_tags`)."""
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        return data
    if not isinstance(data.get("templates"), dict):
        return {**data, "devices": _validate_repeated_tags(data["devices"])}
    templates = data["templates"]
    devices = data["devices"]
    expanded = []
    for dev in devices:
        name = dev.get("template") if isinstance(dev, dict) else None
        tpl = templates.get(name) if isinstance(name, str) else None
        if not isinstance(dev, dict) or not isinstance(tpl, dict):
            expanded.append(dev)  # an unknown template name is reported by reference_errors
            continue
        # Parts of the wrong type are left out here: the validation of templates: and devices: names them.
        defaults: dict[str, Any] = tpl["defaults"] if isinstance(tpl.get("defaults"), dict) else {}
        merged = {**defaults, **{k: v for k, v in dev.items() if k != "tags"}}
        merged.setdefault("protocol", tpl.get("protocol"))
        tags: dict[object, Any] = {}
        own = dev.get("tags")
        for t in [*_listed(tpl.get("tags")), *_listed(own)]:
            key = t.get("name") if isinstance(t, dict) and isinstance(t.get("name"), str) else object()
            tags[key] = {**tags.get(key, {}), **t} if isinstance(t, dict) else t
        merged["tags"] = list(tags.values()) if own is None or isinstance(own, list) else own
        expanded.append(merged)
    return {**data, "devices": _validate_repeated_tags(expanded)}



class CollectorConfig(Strict):
    version: Annotated[Literal[1], BeforeValidator(_not_a_bool)] = 1
    site: SiteConfig
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    state_dir: Path = Path("state")

    @field_validator("state_dir", mode="before")
    @classmethod
    def _state_dir_named(cls, v: Any) -> Any:
        """An empty `state_dir` would mean the current folder: keys, the outbox and the evidence would land
        wherever the command happens to run."""
        if isinstance(v, str) and not v.strip():
            raise ValueError("state_dir is empty: name the folder for the collector's state, e.g. "
                             "/var/lib/shopfloor-collector (the default is ./state)")
        return v

    indicators: IndicatorConfig = Field(default_factory=IndicatorConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    writes: WritesConfig = Field(default_factory=WritesConfig)
    influx: InfluxConfig | None = None
    templates: dict[str, TemplateConfig] = Field(default_factory=dict)
    devices: list[Device] = Field(default_factory=list)
    assets: list[AssetEntry] = Field(default_factory=list)
    assets_csv: Path | None = Field(default=None, description="a 设备台账 CSV read at start (docs/indicators.md)")
    states: StatesConfig = Field(default_factory=StatesConfig)  # machine states, 稼动率, OEE (docs/states.md)

    @model_validator(mode="before")
    @classmethod
    def _apply_templates(cls, data: Any) -> Any:
        return expand_templates(data)

    @model_validator(mode="after")
    def _share_equal_tags(self) -> CollectorConfig:
        """Keep one instance of equal tags, also of those `_validate_repeated_tags` left to each device
        (classic registers, resolved by the device's `address_base`): copies of one machine's list then cost
        the memory of one (docs/BENCHMARKS.md, memory). Tags are never changed after validation."""
        seen: dict[tuple[Any, ...], Any] = {}
        for dev in self.devices:
            tags: list[Any] = dev.tags
            for i, tag in enumerate(tags):
                key = (type(tag), *(v if getattr(v, "__hash__", None) is not None else repr(v)
                                    for v in tag.__dict__.values()))
                tags[i] = seen.setdefault(key, tag)
        return self

    @model_validator(mode="after")
    def _default_pki_dirs(self) -> CollectorConfig:
        """OPC UA devices without `security.pki_dir` use `<state dir>/pki` (docs/opcua.md), where the state dir
        is the one the collector really uses: COLLECTOR_STATE_DIR (the systemd unit sets it) over `state_dir`."""
        set_default_pki_dirs(self)
        return self

    @property
    def topic_root(self) -> str:
        return self.mqtt.topic_root.format(enterprise=self.site.enterprise_id, workshop=self.site.workshop)

    @model_validator(mode="after")
    def _hub_identity(self) -> CollectorConfig:
        """At the hub the enterprise is its 统一社会信用代码: the topic level and, by default, the user name."""
        hub = self.evidence.hub
        if hub is not None and hub.enterprise is None and self.site.credit_code is None:
            raise ValueError("evidence.hub: the hub knows the enterprise by its 统一社会信用代码: set "
                             "site.credit_code (copy it from the business licence, 营业执照)")
        return self

    @property
    def hub_enterprise(self) -> str | None:
        """The enterprise's topic level at the hub: `evidence.hub.enterprise`, else `site.credit_code`."""
        hub = self.evidence.hub
        return None if hub is None else hub.enterprise or self.site.credit_code

    @property
    def evidence_topic(self) -> str:
        return self.evidence.topic.format(root=self.topic_root, enterprise=self.site.enterprise_id,
                                          workshop=self.site.workshop)



def set_default_pki_dirs(cfg: CollectorConfig) -> None:
    """Defaults under the state folder for every device (`DeviceBase.use_state_dir`; OPC UA: `<state>/pki`)."""
    state = effective_state_dir(cfg)
    for dev in cfg.devices:
        dev.use_state_dir(state)


def effective_state_dir(cfg: CollectorConfig, settings: Settings | None = None) -> Path:
    """Where the collector keeps its state: env COLLECTOR_STATE_DIR, else the config's `state_dir`."""
    if settings is None:
        try:
            settings = Settings()
        except ValidationError:  # another COLLECTOR_* variable is bad: collector.preflight names it
            return Path(os.environ["COLLECTOR_STATE_DIR"]) if os.environ.get("COLLECTOR_STATE_DIR") else cfg.state_dir
    return settings.state_dir or cfg.state_dir


